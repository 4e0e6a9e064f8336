"""HPSv2, HPSv2.1 and CLIPScore ViT-H/14 (open_clip ViT-H-14 files read as a transformers CLIPModel) equal their
references on the same weights and images: DiffSynth 1.1.9's HPScore_v2 (all three: its CLIPScore runs the same code
on LAION's file) and the publisher's own hpsv2 package (HPSv2.1). Both hard-code the full ViT-H-14, so the weights
are full-size random ones: ONE fp16 file (about 2 GB) under the three names, three images each scored against two
prompts; each model is freed before the next loads (about 4 GB each in fp32), and ours are loaded once per scorer."""

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
# the second prompt exercises the tokenizers' cleaning: an HTML entity and runs of spaces
PROMPTS = ["a red fox in the snow", "A bowl of ramen &amp; tea,   studio light"]
SIZES = ((300, 200), (180, 260), (224, 224))  # wider, taller (both padded), already 224 (neither resized nor padded)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = full_vit_h_root()
    images = image_files(tmp_path_factory.mktemp("hps"), 3, SIZES)
    return root, images


def pairs(images: list[Path]) -> tuple[list[Path], list[str]]:
    """Every image with every prompt, prompt after prompt: the order of the publisher's one-prompt calls."""
    return [p for _ in PROMPTS for p in images], [prompt for prompt in PROMPTS for _ in images]


@pytest.fixture(scope="module")
def ours(case):
    root, images = case
    files, prompts = pairs(images)
    scores = {}

    def score(scorer_id: str) -> list[float]:
        if scorer_id not in scores:
            scorer = load_scorer(scorer_id, root)
            scores[scorer_id] = scorer.score_images([Image.open(p).convert("RGB") for p in files], prompts,
                                                    batch_size=3)
            del scorer
            gc.collect()
        return scores[scorer_id]
    return score


@pytest.fixture(scope="module")
def diffsynth(case, tmp_path_factory):
    root, images = case
    files, prompts = pairs(images)
    qm = root / "QualityMetric"
    job = tmp_path_factory.mktemp("hps-diffsynth") / "job.json"
    job.write_text(json.dumps({"scorer": "HPScore_v2", "kwargs": {"model_version": "v21"},
                               "path": {"hpsv2.1": str(qm / "HPS_v2" / "HPS_v2.1_compressed.safetensors"),
                                        "open_clip_bpe": str(qm / "bpe_simple_vocab_16e6.txt.gz")},
                               "images": [str(p) for p in files], "prompts": prompts}))
    return run_reference("diffsynth", ROOT / "tests" / "reference" / "diffsynth_scorers.py", str(job))["scores"]


@pytest.fixture(scope="module")
def publisher(case, tmp_path_factory):
    root, images = case
    qm = root / "QualityMetric"
    job = tmp_path_factory.mktemp("hps-publisher") / "job.json"
    job.write_text(json.dumps({"weights": str(qm / "HPS_v2" / "HPS_v2.1_compressed.safetensors"),
                               "hps_version": "v2.1", "bpe": str(qm / "bpe_simple_vocab_16e6.txt.gz"),
                               "groups": [{"prompt": prompt, "images": [str(p) for p in images]}
                                          for prompt in PROMPTS]}))
    return run_reference("hpsv2", ROOT / "tests" / "reference" / "hpsv2_scores.py", str(job))["scores"]


@pytest.mark.parametrize("scorer_id", ["hpsv2.1", "hpsv2", "clipscore-vit-h-14"])
def test_open_clip_vit_h_scorers_equal_diffsynths_hps(diffsynth, ours, scorer_id):
    """The same tensors under each scorer's own file name, read by each scorer's own loader."""
    assert reference_bar(ours(scorer_id), diffsynth) <= 1e-3


def test_hpsv2_1_equals_the_publishers_hpsv2_package(publisher, ours):
    """hpsv2.score(images, prompt, hps_version="v2.1"): open_clip's ViT-H-14 and the HPS checkpoint loaded by the
    package from where it fetches them. HPSv2 (v2.0) differs only by its file's name, read by the same loader."""
    assert reference_bar(ours("hpsv2.1"), publisher) <= 1e-3
