"""The scoring speed paths: ``FastScorer`` (the default: CLS-only last layer, oneDNN matmuls on the CPU, quick_gelu
fused) and the opt-in torch.compile view (compiled for real in tests/processes/test_scoring_compile.py) give the
model's own scores within 1e-3; anything they cannot run falls back, logged, to a slower path with the same numbers."""

from __future__ import annotations

import logging

import pytest
import torch
from devkit.factories import aesthetic_predictor
from harness.predictor_reference import noise_images

from aesthete.scoring import speed
from aesthete.scoring.predictor import AestheticPredictor, ModelForward, head_class
from aesthete.scoring.speed import CompiledScorer, FastScorer


def own_forward(predictor: AestheticPredictor, pixels: torch.Tensor) -> torch.Tensor:
    """The model's own transformers forward: what the reference code calls."""
    with torch.inference_mode():
        return predictor.model(pixel_values=pixels).logits[:, 0]


@pytest.mark.parametrize("onednn", [None, False], ids=["default", "aten"])
@pytest.mark.parametrize("head", ["v2-linear", "v2-relu", "v1"])
def test_fast_scorer_equals_the_models_own_forward(head, onednn):
    folder = aesthetic_predictor("tiny", head=head)
    predictor = AestheticPredictor.from_folder(folder, "cpu", "fp32")
    assert isinstance(predictor.scorer, FastScorer) and predictor.scorer.quick_gelu  # CLIP ViT-L/14's activation
    pixels = predictor.preprocess(noise_images())
    expected = own_forward(predictor, pixels)
    with torch.inference_mode():
        ours = FastScorer(predictor.model, onednn=onednn)(pixels)
        default = predictor.forward(pixels)
    assert (ours - expected).abs().max().item() < 1e-3, (ours, expected)
    assert (default - expected).abs().max().item() < 1e-3
    assert expected.std().item() > 1e-3


def test_other_activations_run_unfused():
    """A CLIP config with ``gelu`` (not quick_gelu) takes the plain MLP: same numbers."""
    model = head_class("v2-linear").from_pretrained(str(aesthetic_predictor("tiny")), hidden_act="gelu").eval()
    predictor = AestheticPredictor(model, AestheticPredictor.from_folder(aesthetic_predictor("tiny")).processor,
                                   "gelu", "v2-linear")
    assert not predictor.scorer.quick_gelu
    pixels = predictor.preprocess(noise_images())
    assert (predictor.forward(pixels) - own_forward(predictor, pixels)).abs().max().item() < 1e-3


def test_the_onednn_check_passes_here_and_a_broken_op_falls_back_to_aten(monkeypatch, caplog):
    if torch.backends.mkldnn.is_available():  # every x86/ARM torch wheel: the fast path is the one CI measures
        assert speed.onednn_linear_works()

    def broken(*args):
        raise RuntimeError("mkldnn::_linear_pointwise: not compiled in")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    with caplog.at_level(logging.INFO, logger="aesthete.scoring"):
        assert speed.onednn_linear_works.__wrapped__() is False
    assert "not usable here" in caplog.text and "not compiled in" in caplog.text
    monkeypatch.setattr(speed, "onednn_linear_works", lambda: False)
    predictor = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32")
    pixels = predictor.preprocess(noise_images())
    assert (predictor.forward(pixels) - own_forward(predictor, pixels)).abs().max().item() < 1e-3


def test_a_model_the_fast_scorer_cannot_run_uses_its_own_forward(monkeypatch, caplog):
    """E.g. a transformers release that renames a module: logged, and the scores are still the model's."""
    monkeypatch.setattr(speed, "LAYER_PARTS", (*speed.LAYER_PARTS, "mlp.fc3"))
    with caplog.at_level(logging.WARNING, logger="aesthete.scoring"):
        predictor = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32")
    assert isinstance(predictor.scorer, ModelForward) and "no mlp.fc3 in encoder layer 0" in caplog.text
    compiled = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32", compile=True)
    assert isinstance(compiled.scorer, ModelForward) and not compiled.compile  # nothing to compile
    pixels = predictor.preprocess(noise_images())
    assert torch.equal(predictor.forward(pixels), own_forward(predictor, pixels))


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(caplog):
    predictor = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32")
    pixels = predictor.preprocess(noise_images()[:3])
    expected = own_forward(predictor, pixels)

    def broken_at_run(module):
        def run(_):
            raise RuntimeError("inductor: no C++ compiler found")
        return run

    def broken_at_wrap(module):
        raise RuntimeError("dynamo is not supported on this Python")

    for compiler in (broken_at_run, broken_at_wrap):
        scorer = CompiledScorer(predictor.scorer, compiler)
        with caplog.at_level(logging.WARNING, logger="aesthete.scoring"), torch.inference_mode():
            first, second = scorer(pixels), scorer(pixels)  # the second call goes straight to eager
        assert "torch.compile of the aesthetic predictor failed" in caplog.text and scorer.failed.startswith("RuntimeError")
        assert (first - expected).abs().max().item() < 1e-3 and torch.equal(first, second)
        caplog.clear()


def test_running_out_of_memory_is_raised_and_the_compiled_scorer_is_kept():
    """A batch too big for the GPU is not a compiler failure: the out-of-memory error reaches the caller (ComfyUI's
    handler) and the next call runs the compiled code again; before, one OOM turned compiling off for good."""
    predictor = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32")
    pixels = predictor.preprocess(noise_images()[:2])
    calls = []

    def compiler(module):
        def run(x):
            calls.append(len(x))
            if len(calls) == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (simulated)")
            return module(x)
        return run

    scorer = CompiledScorer(predictor.scorer, compiler)
    with torch.inference_mode():
        with pytest.raises(torch.OutOfMemoryError):
            scorer(pixels)
        scorer(pixels)
    assert scorer.failed is None and calls == [2, 2]


def test_packed_weights_follow_changes_to_the_model_and_wait_for_enough_ram(monkeypatch, caplog):
    if not (speed.onednn_linear_works() and speed.onednn_packing_works()):
        pytest.skip("no oneDNN weight packing in this torch build")
    predictor = AestheticPredictor.from_folder(aesthetic_predictor("tiny"), "cpu", "fp32")
    pixels = predictor.preprocess(noise_images())
    packed, plain = FastScorer(predictor.model, pack=True), FastScorer(predictor.model, pack=False)
    with torch.inference_mode():
        for scorer in (packed, plain):
            assert (scorer(pixels) - own_forward(predictor, pixels)).abs().max().item() < 1e-3
        fc1 = predictor.model.vision_model.encoder.layers[0].mlp.fc1
        fc1.weight.mul_(3)  # e.g. weights loaded again in place: the packed copy must not go stale
        assert (packed(pixels) - own_forward(predictor, pixels)).abs().max().item() < 1e-3
    assert packed._packs  # it did pack

    monkeypatch.setattr(speed, "available_ram", lambda: 1 << 30)
    low = FastScorer(predictor.model)
    with caplog.at_level(logging.INFO, logger="aesthete.scoring"), torch.inference_mode():
        assert (low(pixels) - own_forward(predictor, pixels)).abs().max().item() < 1e-3
    assert low.pack is False and not low._packs and "not packing its weights" in caplog.text


def test_a_missing_weight_reorder_op_means_plain_weights(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("mkldnn::_reorder_linear_weight: no such op")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", broken)
    with caplog.at_level(logging.INFO, logger="aesthete.scoring"):
        assert speed.onednn_packing_works.__wrapped__() is False
    assert "weight packing not usable here" in caplog.text and "no such op" in caplog.text
