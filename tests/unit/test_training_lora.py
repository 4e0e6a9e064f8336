"""LoRA injection (forward hooks on attention Linear layers), ComfyUI key format, resume, gradient checkpointing.
Domain code on a small torch model, no ComfyUI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aesthete.training.lora_network import (TARGET_PRESETS, LoraError, LoraNetwork, checkpoint_blocks,
                                            release_inference_tensors)


class Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x):
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        return self.to_out(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1) @ v)


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attn1 = Attention(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x):
        x = x + self.attn1(x)
        return x + self.ff(x)


class TinyUNet(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_targets_are_attention_qkv_out_and_keys_are_comfy_format():
    torch.manual_seed(0)
    unet = TinyUNet()
    net = LoraNetwork.create(unet, rank=4, alpha=4.0)
    assert sorted(net.paths) == sorted(f"blocks.{i}.attn1.{n}" for i in range(2)
                                       for n in ("to_q", "to_k", "to_v", "to_out.0"))
    sd = net.comfy_state_dict()
    assert "diffusion_model.blocks.0.attn1.to_q.lora_up.weight" in sd
    assert sd["diffusion_model.blocks.0.attn1.to_out.0.lora_down.weight"].shape == (4, 16)
    assert float(sd["diffusion_model.blocks.1.attn1.to_v.alpha"]) == 4.0
    assert len(sd) == 8 * 3
    ff = LoraNetwork.create(unet, 4, 4.0, TARGET_PRESETS["attention + feed-forward"])
    assert "blocks.0.ff.0" not in ff.paths  # ff.net.* names do not exist here: only attention matched
    with pytest.raises(LoraError, match="no Linear layer"):
        LoraNetwork.create(unet, 4, 4.0, ("nothing_like_this",))


def test_new_lora_changes_nothing_and_hooks_add_the_low_rank_update():
    torch.manual_seed(0)
    unet = TinyUNet()
    x = torch.randn(2, 5, 16)
    before = unet(x)
    net = LoraNetwork.create(unet, rank=2, alpha=1.0)
    net.attach(unet)
    assert torch.equal(unet(x), before)  # up starts at zero
    with torch.no_grad():
        for layer in net.layers:
            layer.up.weight.normal_()
    lora_out = unet(x)
    # the same update merged into the weights: W + alpha/rank * up @ down
    merged = TinyUNet()
    merged.load_state_dict(unet.state_dict())
    with torch.no_grad():
        modules = dict(merged.named_modules())
        for path, layer in zip(net.paths, net.layers):
            modules[path].weight += layer.scale * layer.up.weight @ layer.down.weight
    torch.testing.assert_close(lora_out, merged(x), atol=1e-5, rtol=1e-5)
    net.detach()
    torch.testing.assert_close(unet(x), before)


def test_resume_round_trip_and_mismatch_errors():
    torch.manual_seed(0)
    unet = TinyUNet()
    net = LoraNetwork.create(unet, rank=3, alpha=6.0)
    with torch.no_grad():
        for layer in net.layers:
            layer.up.weight.normal_()
    sd = net.comfy_state_dict()
    again = LoraNetwork.from_state_dict(unet, sd)
    assert (again.rank, again.alpha) == (3, 6.0)
    for k, v in again.comfy_state_dict().items():
        torch.testing.assert_close(v, sd[k])
    with pytest.raises(LoraError, match="not a diffusion_model"):
        LoraNetwork.from_state_dict(unet, {"lora_unet_x.lora_up.weight": torch.zeros(1)})
    with pytest.raises(LoraError, match="do not fit"):
        LoraNetwork.from_state_dict(TinyUNet(dim=8), sd)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    unet = TinyUNet()
    x = torch.randn(2, 5, 16)
    grads = []
    for use_checkpointing in (False, True):
        torch.manual_seed(1)
        net = LoraNetwork.create(unet, rank=2, alpha=2.0)
        with torch.no_grad():
            for layer in net.layers:
                layer.up.weight.fill_(0.1)
        net.attach(unet)
        undo = checkpoint_blocks(unet) if use_checkpointing else None
        unet(x).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
        net.detach()
        if undo:
            undo()
            assert all("forward" not in b.__dict__ for b in unet.modules())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_inference_mode_weights_are_released_for_autograd():
    with torch.inference_mode():
        unet = TinyUNet()
    net = LoraNetwork.create(unet, rank=2, alpha=2.0)
    net.attach(unet)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):
        unet(torch.randn(1, 3, 16)).sum().backward()
    assert release_inference_tensors(unet) > 0
    unet(torch.randn(1, 3, 16)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_inference_weights_moved_outside_inference_mode_are_released_too():
    """A weight made under inference mode and then moved by ``Module.to()`` outside it (what ComfyUI's model
    management does when it loads a model onto the GPU inside the trainer) says ``is_inference() == False`` but has
    no version counter; backward fails on it unless it is copied."""
    with torch.inference_mode():
        unet = TinyUNet()
    unet.to(torch.float64).to(torch.float32)  # the move, outside inference mode
    assert not any(p.is_inference() for p in unet.parameters())
    net = LoraNetwork.create(unet, rank=2, alpha=2.0)
    net.attach(unet)
    with pytest.raises(RuntimeError, match="version counter"):
        unet(torch.randn(1, 3, 16)).sum().backward()
    assert release_inference_tensors(unet) == len(list(unet.parameters()))
    unet(torch.randn(1, 3, 16)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())

