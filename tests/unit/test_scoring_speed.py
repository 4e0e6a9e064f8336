"""The opt-in speed path (CLS-only last layer, torch.compile): the eager model's scores within 1e-3, one compiled
view per loaded model, and a logged fallback to eager when compiling fails."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from harness.factories import aesthetic_predictor
from PIL import Image

from aesthete.scoring.predictor import AestheticPredictor, load_predictor
from aesthete.scoring.speed import ClsScorer, CompiledScorer

SIZES = [(300, 200), (97, 131), (224, 224), (20, 50), (64, 64)]


def random_images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.mark.parametrize("head", ["v2-linear", "v2-relu", "v1"])
def test_cls_only_last_layer_equals_the_full_forward(head):
    folder = aesthetic_predictor("tiny", head=head)
    predictor = AestheticPredictor.from_folder(folder, "cpu", "fp32")
    pixels = predictor.preprocess(random_images())
    expected = predictor.forward(pixels)
    with torch.inference_mode():
        ours = ClsScorer(predictor.model)(pixels)
    assert (ours - expected).abs().max().item() < 1e-3, (ours, expected)
    assert expected.std().item() > 1e-3


def test_compiled_scores_equal_eager_scores_for_any_batch_size():
    """Compiles the tiny predictor once (dynamic batch: a short last batch reuses it)."""
    folder = aesthetic_predictor("tiny")
    eager = load_predictor(folder, "cpu", "fp32")
    fast = load_predictor(folder, "cpu", "fp32", compile=True)
    assert fast is load_predictor(folder, "cpu", "fp32", compile=True) and fast is eager.compiled()
    assert fast.model is eager.model and fast.compile and not eager.compile
    images = random_images() + random_images(1)  # 10 images: batches of 4, 4, 2
    expected = eager.score_images(images, batch_size=4)
    ours = fast.score_images(images, batch_size=4)
    assert fast.speed.failed is None, fast.speed.failed
    assert fast.speed.compile_seconds is not None
    assert np.abs(np.array(ours) - np.array(expected)).max() < 1e-3, (ours, expected)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(caplog):
    predictor = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32")
    pixels = predictor.preprocess(random_images()[:3])
    expected = predictor.forward(pixels)

    def broken_at_run(module):
        def run(_):
            raise RuntimeError("inductor: no C++ compiler found")
        return run

    def broken_at_wrap(module):
        raise RuntimeError("dynamo is not supported on this Python")

    for compiler in (broken_at_run, broken_at_wrap):
        scorer = CompiledScorer(predictor.model, compiler)
        with caplog.at_level(logging.WARNING, logger="aesthete.scoring"), torch.inference_mode():
            first, second = scorer(pixels), scorer(pixels)  # the second call goes straight to eager
        assert "torch.compile of the aesthetic predictor failed" in caplog.text and scorer.failed.startswith("RuntimeError")
        assert (first - expected).abs().max().item() < 1e-3 and torch.equal(first, second)
        caplog.clear()
