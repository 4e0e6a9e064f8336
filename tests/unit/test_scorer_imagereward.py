"""ImageReward v1.0 equals DiffSynth 1.1.9's ImageRewardScore on a checkpoint written by DiffSynth's own class (BLIP's
ViT-L at full size, which it hard-codes; a 2-layer text encoder) and the same images: three of them."""

from __future__ import annotations

import json
from pathlib import Path

from devkit.reference import run_reference
from devkit.scorer_models import image_files, imagereward_root, reference_bar
from PIL import Image

from aesthete.scoring.scorers import load_scorer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red fox in the snow", "a bowl of ramen, studio light, very detailed and sharp", "a castle"]
SIZES = ((300, 200), (180, 260), (224, 224))


def test_imagereward_equals_diffsynths_imagerewardscore(tmp_path):
    root = imagereward_root()
    qm = root / "QualityMetric"
    images = image_files(tmp_path, 3, SIZES)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"scorer": "ImageRewardScore", "images": [str(p) for p in images], "prompts": PROMPTS,
                               "path": {"imagereward": str(qm / "ImageReward" / "ImageReward.safetensors"),
                                        "med_config": str(qm / "ImageReward" / "med_config.json"),
                                        "bert_model_path": str(qm / "bert-base-uncased")}}))
    ref = run_reference("diffsynth", ROOT / "tests" / "reference" / "diffsynth_scorers.py", str(job))
    ours = load_scorer("imagereward-v1", root).score_images([Image.open(p).convert("RGB") for p in images], PROMPTS,
                                                            batch_size=2)
    assert reference_bar(ours, ref["scores"]) <= 1e-3
