"""The opt-in speed path of a predictor: the same math with less work, compiled with torch.compile.

``ClsScorer`` computes exactly the scores of ``predictor(pixel_values).logits[:, 0]``, except that the last encoder
layer is computed for the CLS token only: the pooled output is ``post_layernorm(last_hidden_state[:, 0])``, so the
other tokens' outputs of that layer are never used (their keys and values still are). ``compile_scorer`` wraps it in
``torch.compile`` with a dynamic batch size, so a short last batch does not compile again. Scores move by float
rounding only (measured in benchmarks/bench_scoring.py; tests hold them within 1e-3 of the eager model).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

log = logging.getLogger("aesthete.scoring")


def cls_only_layer(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A CLIPEncoderLayer's output [B,1,D] for the CLS token only: its query attends to every token's key/value."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    b = x.shape[0]
    heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).view(b, 1, heads, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, -1, heads, head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, -1, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    cls = hidden[:, :1] + attn.out_proj(out.transpose(1, 2).reshape(b, 1, -1))
    return cls + layer.mlp(layer.layer_norm2(cls))


class ClsScorer(torch.nn.Module):
    """Scores [B] of a simple-aesthetics-predictor model (V1 or V2) for pixel values, with the CLS-only last layer.

    It holds the model without changing it, so the eager path and ComfyUI's memory management see the same weights.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        vision = model.vision_model
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        layers = vision.encoder.layers
        for layer in layers[:-1]:
            hidden = layer(hidden, None)
        pooled = vision.post_layernorm(cls_only_layer(layers[-1], hidden)[:, 0])
        embeds = model.visual_projection(pooled)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        head = model.predictor if hasattr(model, "predictor") else model.layers  # V1 : V2
        return head(embeds)[:, 0]


class CompiledScorer:
    """``ClsScorer`` under torch.compile (compiled on the first call, timed and logged). If compiling or running the
    compiled code fails, it logs why and uses the eager ``ClsScorer`` from then on."""

    def __init__(self, model: torch.nn.Module, compiler: Callable | None = None):
        self.eager = ClsScorer(model)
        self.failed: str | None = None
        self.compile_seconds: float | None = None
        try:
            self.compiled = (compiler or _inductor)(self.eager)
        except Exception as e:  # noqa: BLE001 - e.g. a torch build without a working compiler
            self._fall_back(e)

    def _fall_back(self, error: Exception) -> None:
        self.failed = f"{type(error).__name__}: {error}"
        log.warning("torch.compile of the aesthetic predictor failed, scoring without it: %s",
                    self.failed.splitlines()[0][:500])

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.failed is not None:
            return self.eager(pixel_values)
        first = self.compile_seconds is None
        start = time.perf_counter()
        try:
            scores = self.compiled(pixel_values)
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back to the same math, eagerly
            self._fall_back(e)
            return self.eager(pixel_values)
        if first:
            self.compile_seconds = time.perf_counter() - start
            log.info("compiled the aesthetic predictor in %.1f s (first batch included)", self.compile_seconds)
        return scores


def _inductor(module: torch.nn.Module) -> Callable:
    # dynamic: one graph for every batch size (a short last batch would otherwise compile a second time)
    return torch.compile(module, dynamic=True)
