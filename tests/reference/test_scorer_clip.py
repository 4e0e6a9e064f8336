"""PickScore v1 and CLIPScore ViT-L/14 (transformers CLIPModel files) equal DiffSynth 1.1.9's scorers on the same
weights and images: tiny random-weight models in DiffSynth's layout, the real CLIP tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from devkit.reference import run_reference
from devkit.scorer_models import reference_bar, image_files, tiny_clip_scorers_root
from PIL import Image

from aesthete.scoring.scorers import load_scorer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "reference" / "diffsynth_scorers.py"
PROMPTS = ["a red fox in the snow", "a bowl of ramen, studio light", "a red fox in the snow", "an old castle"]


def diffsynth(tmp_path: Path, model_folder: Path, processor_folder: Path, images: list[Path]) -> dict:
    """DiffSynth's PickScore class on the folders: a transformers-CLIP cosine of one image and its prompt."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"scorer": "PickScore", "path": {"pickscore": str(model_folder),
                                                                 "clip": str(processor_folder)},
                               "images": [str(p) for p in images], "prompts": PROMPTS[:len(images)]}))
    return run_reference("diffsynth", SCRIPT, str(job))


@pytest.fixture(scope="module")
def root():
    return tiny_clip_scorers_root()


def test_pickscore_is_diffsynths_cosine_times_the_model_cards_logit_scale(root, tmp_path):
    qm = root / "QualityMetric"
    images = image_files(tmp_path)
    ref = diffsynth(tmp_path, qm / "PickScore_v1", qm / "CLIP-ViT-H-14-laion2B-s32B-b79K", images)
    scorer = load_scorer("pickscore-v1", root)
    ours = scorer.score_images([Image.open(p).convert("RGB") for p in images], PROMPTS, batch_size=3)
    scale = ref["logit_scale_exp"]
    assert scale == pytest.approx(scorer.model.logit_scale.exp().item(), rel=1e-6) and scale > 2
    # the model card's number: 100-ish x cosine; DiffSynth's: the cosine itself
    assert reference_bar(ours, [s * scale for s in ref["scores"]]) <= 1e-3
    assert reference_bar([s / scale for s in ours], ref["scores"]) <= 1e-3


def test_clipscore_l_is_the_cosine_of_diffsynths_clip_path(root, tmp_path):
    """DiffSynth's CLIPScore class hard-codes open_clip ViT-H; for ViT-L/14 (the transformers files its Aesthetic
    scorer reads from clip-vit-large-patch14/) the same cosine is DiffSynth's PickScore class on that folder."""
    folder = root / "QualityMetric" / "clip-vit-large-patch14"
    images = image_files(tmp_path)
    ref = diffsynth(tmp_path, folder, folder, images)
    ours = load_scorer("clipscore-vit-l-14", root).score_images([Image.open(p).convert("RGB") for p in images],
                                                                PROMPTS)
    assert reference_bar(ours, ref["scores"]) <= 1e-3
    assert all(-1 <= s <= 1 for s in ours)
