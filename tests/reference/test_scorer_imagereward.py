"""ImageReward v1.0 equals its references on the same weights and images: DiffSynth 1.1.9's ImageRewardScore and the
publisher's own image-reward package. The checkpoint is written by DiffSynth's class (BLIP's ViT-L at full size,
which both hard-code; a 2-layer text encoder); three images, each with its prompt; ours is loaded once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from devkit.reference import run_reference
from devkit.scorer_models import image_files, imagereward_root, reference_bar
from PIL import Image

from aesthete.scoring.scorers import load_scorer

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red fox in the snow", "a bowl of ramen, studio light, very detailed and sharp", "a castle"]
SIZES = ((300, 200), (180, 260), (224, 224))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = imagereward_root()
    folder = tmp_path_factory.mktemp("imagereward")
    return root, folder, image_files(folder, 3, SIZES)


@pytest.fixture(scope="module")
def ours(case):
    root, _, images = case
    return load_scorer("imagereward-v1", root).score_images([Image.open(p).convert("RGB") for p in images], PROMPTS,
                                                            batch_size=2)


def test_imagereward_equals_diffsynths_imagerewardscore(case, ours):
    root, folder, images = case
    qm = root / "QualityMetric"
    job = folder / "diffsynth.json"
    job.write_text(json.dumps({"scorer": "ImageRewardScore", "images": [str(p) for p in images], "prompts": PROMPTS,
                               "path": {"imagereward": str(qm / "ImageReward" / "ImageReward.safetensors"),
                                        "med_config": str(qm / "ImageReward" / "med_config.json"),
                                        "bert_model_path": str(qm / "bert-base-uncased")}}))
    ref = run_reference("diffsynth", ROOT / "tests" / "reference" / "diffsynth_scorers.py", str(job))
    assert reference_bar(ours, ref["scores"]) <= 1e-3


def test_imagereward_equals_the_publishers_image_reward_package(case, ours):
    """ImageReward.load(checkpoint, med_config=...) and model.score(prompt, image), as the package's README scores."""
    root, folder, images = case
    qm = root / "QualityMetric"
    job = folder / "publisher.json"
    job.write_text(json.dumps({"weights": str(qm / "ImageReward" / "ImageReward.safetensors"),
                               "med_config": str(qm / "ImageReward" / "med_config.json"),
                               "bert": str(qm / "bert-base-uncased"),
                               "images": [str(p) for p in images], "prompts": PROMPTS}))
    ref = run_reference("imagereward", ROOT / "tests" / "reference" / "imagereward_scores.py", str(job))
    assert reference_bar(ours, ref["scores"]) <= 1e-3
