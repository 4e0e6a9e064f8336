"""Kolors-IP-Adapter-Plus on the Kolors MODEL: the image tokens' keys and values are computed once, when the node
runs, and every cross-attention of the UNet gets an ``attn2`` replacement (ComfyUI's own patch mechanism, on a clone
of the MODEL) that adds ``weight * attention(q, k_ip, v_ip)`` to its text attention, as diffusers' IP-Adapter
attention processor does. The sampling keeps only those small keys and values, no IP-Adapter weights."""

from __future__ import annotations

import re

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch

from ..kolors.ip_adapter import IPAdapterPlus, diffusers_attention_order
from . import compat
from .kolors_model import Kolors

COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond marks


def ip_adapter_patcher(adapter: IPAdapterPlus) -> comfy.model_patcher.ModelPatcher:
    """The IP-Adapter's weights owned by a ModelPatcher, so ComfyUI's memory management moves and frees them."""
    device = mm.get_torch_device()
    return comfy.model_patcher.ModelPatcher(adapter, load_device=device, offload_device=mm.unet_offload_device())


def attention_blocks(model) -> list[tuple[str, int, int]]:
    """ComfyUI's (block, number, transformer index) of every cross-attention of the Kolors UNet, in diffusers'
    order (the IP-Adapter file's 1, 3, 5, ...)."""
    names = {}
    for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items():
        if diffusers_key.endswith(".attn2.to_k.weight"):
            names[diffusers_key[: -len(".to_k.weight")]] = comfy_key
    blocks = []
    for name in diffusers_attention_order(list(names)):
        m = re.match(r"(input|output)_blocks\.(\d+)\.\d+\.transformer_blocks\.(\d+)\.", names[name])
        if m:
            blocks.append((m.group(1), int(m.group(2)), int(m.group(3))))
        else:  # the middle block's attention: middle_block.1.transformer_blocks.N
            blocks.append(("middle", 0, int(re.search(r"transformer_blocks\.(\d+)\.", names[name]).group(1))))
    return blocks


class IPAttention:
    """An ``attn2`` replacement: the text attention plus ``weight`` times the attention over the image tokens."""

    def __init__(self, cond: tuple[torch.Tensor, torch.Tensor], uncond: tuple[torch.Tensor, torch.Tensor],
                 weight: float):
        self.cond, self.uncond, self.weight = cond, uncond, weight

    def _batch(self, which: int, q: torch.Tensor, marks: list[int]) -> torch.Tensor:
        chunk = q.shape[0] // max(len(marks), 1)
        parts = [(self.cond if mark == COND else self.uncond)[which] for mark in (marks or [COND])]
        parts = [comfy.utils.repeat_to_batch_size(p, chunk) for p in parts]
        return torch.cat(parts).to(q.device, q.dtype)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        # the MODEL's attention choice (its transformer options) for both, as the unpatched attention uses it
        out = compat.attention(q, k, v, heads, extra_options)
        marks = extra_options.get("cond_or_uncond", [])
        k_ip, v_ip = self._batch(0, q, marks), self._batch(1, q, marks)
        return out + self.weight * compat.attention(q, k_ip, v_ip, heads, extra_options)


def apply_ip_adapter(model, adapter_patcher, clip_vision, image: torch.Tensor, weight: float):
    """A clone of the Kolors ``model`` with the IP-Adapter applied for ``image`` (a batch: its images' tokens are
    concatenated). The unconditional branch (a cfg above 1) attends to the tokens of an all-zero encoder input, as
    diffusers' and Kwai-Kolors's pipelines make the negative image embedding."""
    adapter: IPAdapterPlus = adapter_patcher.model
    if not isinstance(model.model, Kolors):
        raise ValueError(f"the Kolors IP-Adapter works on the Kolors MODEL (Kolors Loader / Kolors UNet Loader); this "
                         f"MODEL is {type(model.model).__name__}")
    blocks = attention_blocks(model)
    if len(blocks) != adapter.attentions:
        raise ValueError(f"this IP-Adapter has weights for {adapter.attentions} cross-attentions, the MODEL has "
                         f"{len(blocks)}: it is made for another UNet")
    context_width = model.model.model_config.unet_config["context_dim"]
    if adapter.to_k_ip[0].in_features != context_width:
        raise ValueError(f"this IP-Adapter's tokens are {adapter.to_k_ip[0].in_features} wide, the Kolors UNet "
                         f"attends to {context_width}: it is made for another UNet")
    states, empty = compat.image_encoder_states(clip_vision, image)
    if states.shape[-1] != adapter.image_proj.image_width:
        raise ValueError(f"the image encoder gives {states.shape[-1]}-wide states, this IP-Adapter reads "
                         f"{adapter.image_proj.image_width}: load the image encoder it was trained with (Kolors's: "
                         f"CLIP ViT-L/14-336, Kolors-IP-Adapter-Plus/image_encoder, in models/clip_vision)")
    mm.load_model_gpu(adapter_patcher)
    device = adapter_patcher.load_device
    dtype = next(adapter.parameters()).dtype
    with torch.no_grad():
        cond_tokens = adapter.image_proj(states.to(device, dtype)).reshape(1, -1, adapter.image_proj.proj_out.out_features)
        uncond_tokens = adapter.image_proj(empty.to(device, dtype)).repeat(1, states.shape[0], 1)
        cond, uncond = adapter.keys_values(cond_tokens), adapter.keys_values(uncond_tokens)
    keep = mm.intermediate_device()
    patched = model.clone()
    for block, c, u in zip(blocks, cond, uncond):
        patch = IPAttention(tuple(t.to(keep) for t in c), tuple(t.to(keep) for t in u), weight)
        compat.replace_cross_attention(patched, patch, block)
    return patched
