"""Same numbers as the reference code at the real size: a full-size ViT-L/14 predictor (random weights, about 1.7 GB
in fp32) built and scored on the CPU, tens of seconds; the tiny predictors' comparisons are in
tests/unit/test_scoring_numbers.py."""

from __future__ import annotations

import numpy as np
from devkit.factories import aesthetic_predictor
from harness.predictor_reference import random_images, reference_scores

from aesthete.scoring.predictor import AestheticPredictor


def test_full_size_vit_l14_matches_reference():
    """The real cost and width (ViT-L/14, 224 px, 768-d projection), random weights."""
    folder = aesthetic_predictor("full")
    images = random_images(1)[:2]  # 300x200 and 97x131: neither 224 nor square
    expected = reference_scores(folder, images)
    ours = AestheticPredictor.from_folder(folder, "cpu", "fp32").score_images(images, batch_size=3)
    assert np.abs(np.array(ours) - np.array(expected)).max() < 1e-3, (ours, expected)
