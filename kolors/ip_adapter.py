"""Kolors-IP-Adapter-Plus (``ip_adapter_plus_general.bin``) without ComfyUI: the file, its image projection (IP-Adapter
Plus's Resampler, in the file's own key names) and its per-attention key/value projections.

The file holds ``{"image_proj": Resampler weights, "ip_adapter": {"<n>.to_k_ip.weight", "<n>.to_v_ip.weight"}}``,
where ``n`` = 1, 3, 5, ... numbers the UNet's cross-attentions in diffusers' module order (down blocks, up blocks,
then the middle block; in each, attentions and transformer blocks in order), as diffusers' ``load_ip_adapter`` reads
it. The image projection turns the image encoder's penultimate hidden states (CLIP ViT-L/14-336: 577 x 1024) into
``num_queries`` tokens of the UNet's cross-attention width; each cross-attention then adds
``weight * attention(q, to_k_ip(tokens), to_v_ip(tokens))`` to its text attention.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..common.tensors import load_pickle, read_safetensors
from .folder import KolorsFolderError

HEAD_WIDTH = 64  # IP-Adapter Plus's Resampler attends with 64-channel heads (diffusers reads the count off to_q)


def read_ip_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` of an IP-Adapter file: the pickled ``.bin`` as published (read
    with weights_only) or a ``.safetensors`` with ``image_proj.`` / ``ip_adapter.`` prefixed keys."""
    path = Path(path)
    advice = "download ip_adapter_plus_general.bin (Kwai-Kolors/Kolors-IP-Adapter-Plus) again"
    if path.suffix in (".safetensors", ".sft"):
        data: dict = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in read_safetensors(path, advice).items():
            part, _, name = key.partition(".")
            if part in data:
                data[part][name] = tensor
    else:
        data = load_pickle(path, "use the IP-Adapter as Kwai-Kolors publishes it", advice)
    if not isinstance(data, dict) or not data.get("image_proj") or not data.get("ip_adapter"):
        raise KolorsFolderError(f"{path}: no 'image_proj' and 'ip_adapter' weights; this is not an IP-Adapter file")
    if "latents" not in data["image_proj"]:
        raise KolorsFolderError(f"{path}: an IP-Adapter without a Resampler (no 'latents'): only IP-Adapter Plus "
                                f"(Kolors-IP-Adapter-Plus) is supported")
    return data


class _PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * HEAD_WIDTH, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * HEAD_WIDTH, bias=False)
        self.to_out = nn.Linear(heads * HEAD_WIDTH, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=-2)).chunk(2, dim=-1)
        b = latents.shape[0]
        q, k, v = (t.reshape(b, -1, self.heads, HEAD_WIDTH).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, self.heads * HEAD_WIDTH))


class Resampler(nn.Module):
    """IP-Adapter Plus's image projection, its sizes read off the weights (the file's key names)."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        _, queries, dim = weights["latents"].shape
        depth = 1 + max(int(m.group(1)) for k in weights if (m := re.match(r"layers\.(\d+)\.", k)))
        heads = weights["layers.0.0.to_q.weight"].shape[0] // HEAD_WIDTH
        ff = weights["layers.0.1.1.weight"].shape[0]
        self.latents = nn.Parameter(torch.empty(1, queries, dim))
        self.proj_in = nn.Linear(weights["proj_in.weight"].shape[1], dim)
        self.proj_out = nn.Linear(dim, weights["proj_out.weight"].shape[0])
        self.norm_out = nn.LayerNorm(weights["proj_out.weight"].shape[0])
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim, heads),
                           nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff, bias=False), nn.GELU(),
                                         nn.Linear(ff, dim, bias=False))])
            for _ in range(depth))
        self.load_state_dict(weights)

    @property
    def image_width(self) -> int:
        return self.proj_in.in_features

    def forward(self, image_states: torch.Tensor) -> torch.Tensor:
        """Penultimate hidden states of the image encoder [B, N, image_width] -> tokens [B, queries, width]."""
        latents = self.latents.repeat(image_states.shape[0], 1, 1)
        x = self.proj_in(image_states)
        for attention, feed_forward in self.layers:
            latents = attention(x, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class IPAdapterPlus(nn.Module):
    """The image projection and, per cross-attention in diffusers' order, ``to_k_ip`` and ``to_v_ip``."""

    def __init__(self, data: dict[str, dict[str, torch.Tensor]], where: str = "IP-Adapter"):
        super().__init__()
        try:
            self.image_proj = Resampler(data["image_proj"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise KolorsFolderError(f"{where}: the image projection's weights are incomplete ({e})") from e
        ids = sorted({int(k.split(".")[0]) for k in data["ip_adapter"]})
        if ids != list(range(1, 2 * len(ids), 2)):
            raise KolorsFolderError(f"{where}: attention weights numbered {ids[:4]}...; expected 1, 3, 5, ...")
        self.to_k_ip = nn.ModuleList()
        self.to_v_ip = nn.ModuleList()
        for n in ids:
            for name, layers in (("to_k_ip", self.to_k_ip), ("to_v_ip", self.to_v_ip)):
                weight = data["ip_adapter"][f"{n}.{name}.weight"]
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                layer.weight.data.copy_(weight)
                layers.append(layer)

    @property
    def attentions(self) -> int:
        return len(self.to_k_ip)

    @torch.no_grad()
    def keys_values(self, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per cross-attention, the image tokens' keys and values ([B, queries, inner] each)."""
        return [(k(tokens), v(tokens)) for k, v in zip(self.to_k_ip, self.to_v_ip)]


_SECTION = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}


def diffusers_attention_order(names: list[str]) -> list[str]:
    """diffusers' order of the UNet's cross-attention modules (``...attn2``), the order of the file's 1, 3, 5, ...:
    module registration order, down blocks, up blocks, then the middle block, every index compared as a number."""
    def key(name: str):
        section = name.split(".")[0]
        return (_SECTION[section], [int(n) for n in re.findall(r"\.(\d+)", name)])

    return sorted(names, key=key)
