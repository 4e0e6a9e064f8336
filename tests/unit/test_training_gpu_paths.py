"""What differs on a GPU, simulated on the CPU without ComfyUI: fp16 weights whose unscaled gradients underflow at
1024x1024, gradients that overflow, a layer that cuts the backward pass (an inference-only attention), the process's
random generators, and the device the LoRA computes on."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aesthete.training.captions import CaptionRecipe
from aesthete.training.dataset import load_dataset
from aesthete.training.lora_network import LoraGradientError, LoraNetwork
from aesthete.training.loop import TrainSettings, train
from aesthete.training.trainer import RunSpec, build_cache, run_training
from devkit.training_data import write_pattern_folder

sys.path.insert(0, str(Path(__file__).parent))
from test_training_loop import ToyModel, ToySampling, encode_caption, encode_images  # noqa: E402


class PixelDenoiser(nn.Module):
    """Per-pixel layers (no attention), cheap at a 128x128 latent, in whatever dtype its weights are."""

    def __init__(self, channels: int = 4, dim: int = 32):
        super().__init__()
        self.to_q, self.to_k, self.to_out = nn.Linear(channels + 1, dim), nn.Linear(dim, dim), nn.Linear(dim, channels)

    def forward(self, x, sigma, context):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        t = sigma.log().view(b, 1, 1).expand(b, h * w, 1).to(x.dtype)
        z = F.gelu(self.to_k(F.gelu(self.to_q(torch.cat([tokens, t], -1)))))
        return self.to_out(z).transpose(1, 2).reshape(b, c, h, w)


class PixelModel(nn.Module):
    """ComfyUI's model interface; like ComfyUI it runs the diffusion model in its weights' dtype."""

    def __init__(self):
        super().__init__()
        self.model_sampling = ToySampling()
        self.diffusion_model = PixelDenoiser()

    def apply_model(self, x, sigma, c_crossattn=None):
        dtype = next(self.diffusion_model.parameters()).dtype
        s = sigma.view(-1, 1, 1, 1)
        return x - self.diffusion_model((x / (s ** 2 + 1) ** 0.5).to(dtype), sigma, c_crossattn).float() * s


def lora_update(run) -> dict[str, torch.Tensor]:
    """Each LoRA layer's change to its Linear weight (up @ down * scale)."""
    return {p: (layer.up.weight @ layer.down.weight).detach() * layer.scale
            for p, layer in zip(run.network.paths, run.network.layers)}


def test_fp16_weights_at_1024px_train_the_lora_the_fp32_weights_train(tmp_path):
    """A 1024x1024 image is a 128x128 latent: per-element gradients of the mean loss are near fp16's smallest numbers,
    so a backward pass in fp16 without loss scaling loses them (the LoRA's update was 14% off the fp32 run's, measured;
    0.04% with scaling). The default precision ("fp32", nothing chosen) on fp16 weights must scale the loss."""
    write_pattern_folder(tmp_path, count=2, size=(1024, 1024))
    dataset = load_dataset(tmp_path, resolution=1024, crop_mode="center crop", recipe=CaptionRecipe("ptn"))
    settings = TrainSettings(epochs=3, batch_size=2, learning_rate=1e-3, seed=0)
    cache = build_cache(dataset, settings, encode_images, encode_caption)
    assert cache.latents[0].shape[-2:] == (128, 128)
    updates = {}
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        model = PixelModel()
        model.diffusion_model.to(dtype)
        run = run_training(model, dataset, cache, RunSpec(settings, rank=4, alpha=4.0,
                                                          targets=("to_q", "to_k", "to_out")))
        assert run.result.skipped_steps == 0
        updates[dtype] = lora_update(run)
    ref, half = updates[torch.float32], updates[torch.float16]
    off = math.sqrt(sum(float(((half[k] - ref[k]) ** 2).sum()) for k in ref))
    size = math.sqrt(sum(float((ref[k] ** 2).sum()) for k in ref))
    assert off / size < 0.01, f"fp16 weights trained a LoRA {off / size:.1%} away from the fp32 weights' one"


class _InfiniteGradient(torch.autograd.Function):
    """Its own value forward, an infinite gradient backward: an fp16 overflow in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf)


def test_a_step_with_non_finite_gradients_is_left_out_and_the_weights_stay(caplog):
    """The loss is finite but the gradient overflows: clipping would turn it into NaN and the optimizer would write
    NaN into the LoRA. The step is left out instead, counted and logged; the next finite steps train."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3))
    before = w.detach().clone()
    calls = []

    def loss_of_batch(batch, generator):
        calls.append(1)
        x = _InfiniteGradient.apply(w) if len(calls) == 1 else w
        return (x ** 2).sum()

    result = train([w], loss_of_batch, lambda e: [[(0, "")]], TrainSettings(epochs=1, learning_rate=0.1))
    assert result.skipped_steps == 1 and torch.equal(w.detach(), before)
    assert "gradients were not finite" in caplog.text
    result = train([w], loss_of_batch, lambda e: [[(0, "")]] * 2, TrainSettings(epochs=1, learning_rate=0.1))
    assert result.skipped_steps == 0 and torch.isfinite(w).all() and not torch.equal(w.detach(), before)


def _no_grad(attention):
    """``attention`` without a backward pass (as inference-only kernels such as SageAttention's)."""
    def run(*args, **kwargs):
        with torch.no_grad():
            return attention(*args, **kwargs)
    return run


def test_lora_layers_cut_off_by_an_attention_without_backward_stop_the_run_and_are_named(tmp_path, monkeypatch):
    """q, k and v feed only the attention: with an attention that has no backward pass their LoRA layers get no
    gradient, and training would go on learning only to_out. The first step says which layers and stops."""
    write_pattern_folder(tmp_path, count=2)
    dataset = load_dataset(tmp_path, resolution=64, crop_mode="center crop", recipe=CaptionRecipe("ptn"))
    settings = TrainSettings(epochs=1, batch_size=2)
    torch.manual_seed(0)
    model = ToyModel()
    monkeypatch.setattr(F, "scaled_dot_product_attention", _no_grad(F.scaled_dot_product_attention))
    cache = build_cache(dataset, settings, encode_images, encode_caption)
    with pytest.raises(LoraGradientError, match=r"6 of 8 LoRA layers received no gradient") as error:
        run_training(model, dataset, cache, RunSpec(settings, rank=2, alpha=2.0))
    assert "attn1.to_q" in str(error.value) and "to_out" not in str(error.value)
    assert not model.diffusion_model.attn1.to_q._forward_hooks  # the LoRA is detached again


def test_creating_a_lora_leaves_the_processs_random_generators_alone(monkeypatch):
    """``torch.manual_seed`` would reseed the CPU generator and every CUDA device's; the LoRA draws from its own."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    seeded.clear()
    first = LoraNetwork.create(ToyModel().diffusion_model, rank=2, alpha=2.0, seed=7)
    assert seeded == [] and torch.initial_seed() == 1234
    second = LoraNetwork.create(ToyModel().diffusion_model, rank=2, alpha=2.0, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    torch.random.set_rng_state(state)


def test_the_lora_computes_where_it_is_told_not_where_the_first_weight_is():
    """A model ComfyUI loads in part (--lowvram, --novram) has its first weights on the CPU while it computes on the
    GPU: the LoRA goes to the device it is given (ComfyUI's load device), here the meta device standing in."""
    unet = ToyModel().diffusion_model
    network = LoraNetwork.create(unet, rank=2, alpha=2.0)
    network.attach(unet, torch.device("meta"))
    assert {p.device.type for p in network.parameters()} == {"meta"}
    assert {p.device.type for p in unet.parameters()} == {"cpu"}
    network.detach()
