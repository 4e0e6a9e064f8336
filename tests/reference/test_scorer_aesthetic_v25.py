"""Aesthetic Predictor V2.5 equals its publisher's package (aesthetic-predictor-v2-5 2024.12.18.1 on transformers
4.49, the version its authors ran) on the same tiny SigLIP and head files and images. DiffSynth has no V2.5."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from devkit.reference import run_reference
from devkit.scorer_models import image_files, reference_bar, tiny_aesthetic_v25_root
from PIL import Image

from aesthete.scoring.scorers import CATALOG, Scorer, load_scorer

ROOT = Path(__file__).resolve().parents[2]


def test_aesthetic_v25_equals_the_publishers_package(tmp_path):
    root = tiny_aesthetic_v25_root()
    qm = root / "QualityMetric"
    images = image_files(tmp_path)
    ref = run_reference("aesthetic_v25", ROOT / "tests" / "reference" / "aesthetic_v25_scores.py",
                        str(qm / "aesthetic-predictor-v2-5" / "aesthetic_predictor_v2_5.pth"),
                        str(qm / "siglip-so400m-patch14-384"), "1", *map(str, images))
    scorer = load_scorer("aesthetic-v2.5", root)
    assert isinstance(scorer, Scorer) and not scorer.prompt_aware and not CATALOG["aesthetic-v2.5"].prompt_aware
    ours = scorer.score_images([Image.open(p).convert("RGB") for p in images], batch_size=3)
    assert reference_bar(ours, ref["scores"]) <= 1e-3
    batch = torch.rand(2, 40, 30, 3, generator=torch.Generator().manual_seed(0))
    batch[0, 0, 0, 0] = math.nan
    scores = scorer.score_tensor(batch)
    assert math.isnan(scores[0]) and math.isfinite(scores[1])
