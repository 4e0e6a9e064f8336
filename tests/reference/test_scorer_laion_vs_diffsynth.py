"""Our default LAION head and DiffSynth 1.1.9's AestheticScore on the same published weights (a tiny CLIP here):
how far apart they score the same images, and why. The math is the same (CLIP's projected image embedding,
L2-normalised, through the same linear MLP); the difference is the preprocessing: our predictor uses the model
folder's image processor of the installed transformers (5.x resizes with torch), DiffSynth runs transformers 4.49
(PIL). Fed transformers 4's pixels (scorers.pixels.Preprocess), our predictor gives DiffSynth's numbers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from devkit.reference import run_reference
from devkit.scorer_models import image_files, laion_pair_root, reference_bar
from PIL import Image

from aesthete.scoring.predictor import load_predictor
from aesthete.scoring.scorers.pixels import Preprocess

ROOT = Path(__file__).resolve().parents[2]
NAME = "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"


def test_our_laion_head_and_diffsynths_aestheticscore_differ_only_by_preprocessing(tmp_path):
    root = laion_pair_root()
    qm = root / "QualityMetric"
    images = image_files(tmp_path)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"scorer": "AestheticScore", "images": [str(p) for p in images],
                               "prompts": [""] * len(images),
                               "path": {"aesthetic_predictor": str(qm / "aesthetic-predictor" /
                                                                   "sac+logos+ava1-l14-linearMSE.safetensors"),
                                        "clip-large": str(qm / "clip-vit-large-patch14")}}))
    theirs = run_reference("diffsynth", ROOT / "tests" / "reference" / "diffsynth_scorers.py", str(job))["scores"]
    predictor = load_predictor(root / "aesthetic" / NAME, "cpu", "fp32")
    pil = [Image.open(p).convert("RGB") for p in images]
    ours = predictor.score_images(pil)
    spread = max(theirs) - min(theirs)
    apart = max(abs(a - b) for a, b in zip(ours, theirs))
    logging.getLogger("aesthete.tests").info("LAION head vs DiffSynth AestheticScore: %.2e apart (%.2e of the "
                                             "spread)", apart, apart / spread)
    # the same pixels give the same numbers: the whole difference is the preprocessing
    pixels = Preprocess.from_folder(root / "aesthetic" / NAME)(pil)
    assert reference_bar(predictor.forward(pixels).tolist(), theirs) <= 1e-3
    ours_pixels = predictor.preprocess(pil)
    assert not torch.equal(ours_pixels, pixels)  # transformers 5's processor resizes differently
