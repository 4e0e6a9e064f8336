"""The opt-in torch.compile view of the scorer (the inductor's compiler workers and a C++ compiler, tens of seconds on
a CPU) gives the eager scores; the eager speed paths and the compiler's fallbacks are tests/unit/test_scoring_speed.py."""

from __future__ import annotations

import numpy as np
from devkit.factories import aesthetic_predictor
from harness.predictor_reference import noise_images

from aesthete.scoring.predictor import load_predictor
from aesthete.scoring.speed import CompiledScorer, FastScorer


def test_compiled_scores_equal_eager_scores_for_any_batch_size():
    """Compiles the tiny predictor once (dynamic batch: a short last batch reuses it)."""
    folder = aesthetic_predictor("tiny")
    eager = load_predictor(folder, "cpu", "fp32")
    fast = load_predictor(folder, "cpu", "fp32", compile=True)
    assert fast.compile and not eager.compile and isinstance(fast.scorer, CompiledScorer)
    # its eager fallback is a FastScorer of the same model: one set of packed weights
    assert isinstance(fast.scorer.eager, FastScorer) and fast.scorer.eager.model is fast.model
    images = noise_images() + noise_images(1)  # 10 images: batches of 4, 4, 2
    expected = eager.score_images(images, batch_size=4)
    ours = fast.score_images(images, batch_size=4)
    assert fast.scorer.failed is None, fast.scorer.failed
    assert fast.scorer.compile_seconds is not None
    assert np.abs(np.array(ours) - np.array(expected)).max() < 1e-3, (ours, expected)
