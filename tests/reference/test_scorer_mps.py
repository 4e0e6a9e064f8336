"""MPS (overall) equals DiffSynth 1.1.9's MPScore on the same checkpoint (written by DiffSynth's own class: a tiny
CLIP, the full-size cross model) and images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from devkit.reference import run_reference
from devkit.scorer_models import image_files, reference_bar, tiny_mps_root
from PIL import Image

from aesthete.scoring.scorers import PromptRequired, load_scorer

ROOT = Path(__file__).resolve().parents[2]
# the second prompt shares words with MPS's condition (color, light), the others do not: different masks
PROMPTS = ["a red fox in the snow", "warm light and soft color, a portrait", "a red fox in the snow",
           "an old castle on a hill"]


def test_mps_equals_diffsynths_mpscore(tmp_path):
    root = tiny_mps_root()
    qm = root / "QualityMetric"
    images = image_files(tmp_path)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"scorer": "MPScore", "images": [str(p) for p in images], "prompts": PROMPTS,
                               "path": {"clip": str(qm / "CLIP-ViT-H-14-laion2B-s32B-b79K"),
                                        "mps": str(qm / "MPS_overall_checkpoint" /
                                                   "MPS_overall_checkpoint_diffsynth.safetensors")}}))
    ref = run_reference("diffsynth", ROOT / "tests" / "reference" / "diffsynth_scorers.py", str(job))
    scorer = load_scorer("mps-overall", root)
    ours = scorer.score_images([Image.open(p).convert("RGB") for p in images], PROMPTS, batch_size=3)
    assert reference_bar(ours, ref["scores"]) <= 1e-3
    with pytest.raises(PromptRequired, match="mps-overall"):
        scorer.score_images([Image.open(images[0])], None)
