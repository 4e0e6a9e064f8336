"""HPSv2, HPSv2.1 and CLIPScore ViT-H/14 (open_clip ViT-H-14 files read as a transformers CLIPModel) equal DiffSynth
1.1.9's HPScore_v2 on the same weights and images. DiffSynth hard-codes the full ViT-H-14, so the weights are
full-size random ones: ONE fp16 file (about 2 GB) under the three names, one reference run, three images; each
model is freed before the next loads (about 4 GB each in fp32)."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
from devkit.reference import run_reference
from devkit.scorer_models import full_vit_h_root, image_files, reference_bar
from PIL import Image

from aesthete.scoring.scorers import load_scorer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red fox in the snow", "A bowl of ramen &amp; tea,   studio light", "an old castle"]
SIZES = ((300, 200), (180, 260), (224, 224))  # wider, taller (both padded), already 224 (neither resized nor padded)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = full_vit_h_root()
    folder = tmp_path_factory.mktemp("hps")
    images = image_files(folder, 3, SIZES)
    qm = root / "QualityMetric"
    job = folder / "job.json"
    job.write_text(json.dumps({"scorer": "HPScore_v2", "kwargs": {"model_version": "v21"},
                               "path": {"hpsv2.1": str(qm / "HPS_v2" / "HPS_v2.1_compressed.safetensors"),
                                        "open_clip_bpe": str(qm / "bpe_simple_vocab_16e6.txt.gz")},
                               "images": [str(p) for p in images], "prompts": PROMPTS}))
    ref = run_reference("diffsynth", ROOT / "tests" / "reference" / "diffsynth_scorers.py", str(job))
    return root, images, ref["scores"]


@pytest.mark.parametrize("scorer_id", ["hpsv2.1", "hpsv2", "clipscore-vit-h-14"])
def test_open_clip_vit_h_scorers_equal_diffsynths_hps(reference, scorer_id):
    """The reference is DiffSynth's HPScore_v2 (its CLIPScore runs the same code on LAION's file): the same tensors
    under each scorer's own file name, read by each scorer's own loader."""
    root, images, ref = reference
    scorer = load_scorer(scorer_id, root)
    ours = scorer.score_images([Image.open(p).convert("RGB") for p in images], PROMPTS, batch_size=2)
    del scorer
    gc.collect()
    assert reference_bar(ours, ref) <= 1e-3
