"""Same numbers as the reference code (processor per image, ``predictor(**inputs).logits``) on the same weights (the
tiny predictors; the full-size ViT-L/14 is in tests/full_size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from devkit.factories import aesthetic_predictor
from harness.predictor_reference import random_images, reference_scores
from PIL import Image

from aesthete.common.images import tensor_to_uint8
from aesthete.scoring.predictor import AestheticPredictor, load_predictor

@pytest.mark.parametrize("head", ["v2-linear", "v2-relu", "v1"])
def test_tiny_predictor_matches_reference(head):
    folder = aesthetic_predictor("tiny", head=head)
    images = random_images()
    expected = reference_scores(folder, images)
    ours = AestheticPredictor.from_folder(folder, "cpu", "fp32").score_images(images, batch_size=3)
    assert len(ours) == len(images)
    assert np.abs(np.array(ours) - np.array(expected)).max() < 1e-3, (ours, expected)
    assert np.std(expected) > 1e-3  # the scores differ between images: the comparison means something


def test_tensor_path_equals_saved_png_path():
    """An IMAGE tensor scores as the PNG ComfyUI would save from it (the same uint8 pixels)."""
    folder = aesthetic_predictor("tiny")
    predictor = AestheticPredictor.from_folder(folder, "cpu", "fp32")
    torch.manual_seed(0)
    batch = torch.rand(3, 72, 104, 3)
    saved = [Image.fromarray(np.clip(255.0 * b.numpy(), 0, 255).astype(np.uint8)) for b in batch]
    expected = reference_scores(folder, saved)
    ours = predictor.score_tensor(batch, batch_size=2)
    assert np.abs(np.array(ours) - np.array(expected)).max() < 1e-3
    assert tensor_to_uint8(batch).shape == (3, 3, 72, 104)


def test_nan_image_is_not_scored_and_others_are():
    predictor = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32")
    batch = torch.rand(3, 40, 40, 3)
    clean = predictor.score_tensor(batch)
    batch[1, 5, 5, 0] = float("nan")
    scores = predictor.score_tensor(batch)
    assert np.isnan(scores[1])
    assert scores[0] == pytest.approx(clean[0], abs=1e-5) and scores[2] == pytest.approx(clean[2], abs=1e-5)


def test_loading_keeps_nothing_behind():
    """No module-level cache: the caller's reference is the only one (the server's is ComfyUI's node output)."""
    import gc
    import weakref

    folder = aesthetic_predictor("tiny")
    a = load_predictor(folder, "cpu", "auto")
    assert a.dtype == torch.float32  # auto is fp32 on the CPU
    assert load_predictor(folder, "cpu", "bf16").dtype == torch.bfloat16
    model = weakref.ref(a.model)
    del a
    gc.collect()
    assert model() is None
