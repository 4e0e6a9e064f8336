"""Fitting a parsed LoRA (``formats.parse_lora``) to the loaded model and handing it to ComfyUI's loader: which
layers match a weight of the model and its size, the alphas a file lacks, the tensors ``comfy.lora.load_lora`` reads,
and what it left unread.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .alpha import resolve_alpha
from .formats import _DOWN, _UP, ParsedLayer, ParsedLora


def update_numel(layer: ParsedLayer) -> int | None:
    """How many weight elements the layer's update has (ComfyUI reshapes it to the weight), or None when that
    is not computed here (OFT, GLoRA, Tucker-decomposed LoHa/LoKr, a bias-only difference)."""
    s = layer.tensors
    kind = layer.kind
    if kind in ("LoRA", "LoCon", "DoRA"):
        return s[_UP].shape[0] * math.prod(s[_DOWN].shape[1:])
    if kind == "LoCon (Tucker)":
        return s[_UP].shape[0] * s[_DOWN].shape[1] * math.prod(s[".lora_mid.weight"].shape[2:])
    if kind == "LoHa" and ".hada_t1" not in s:
        return s[".hada_w1_a"].shape[0] * math.prod(s[".hada_w1_b"].shape[1:])
    if kind == "LoKr" and ".lokr_t2" not in s:
        w1 = _product_shape(s.get(".lokr_w1"), s.get(".lokr_w1_a"), s.get(".lokr_w1_b"))
        w2 = _product_shape(s.get(".lokr_w2"), s.get(".lokr_w2_a"), s.get(".lokr_w2_b"))
        return math.prod(w1) * math.prod(w2)
    if kind == "full diff":
        diff = s.get(".diff", s.get(".set_weight", s.get(".w_norm")))
        return None if diff is None else diff.numel()
    return None


def _product_shape(full, a, b) -> tuple[int, ...]:
    if full is not None:
        return tuple(full.shape)
    return (a.shape[0], *b.shape[1:])


def restrict_to_model(parsed: ParsedLora, weight_shapes: dict[object, tuple[int, ...]],
                      clip_connected: bool = True) -> ParsedLora:
    """Keep the layers whose weight is in the loaded model (``weight_shapes``: weight key -> shape) and whose
    update has that weight's size; the others move to ``unplaced`` with the reason."""
    kept: list[ParsedLayer] = []
    unplaced = dict(parsed.unplaced)
    for layer in parsed.layers:
        reason = None
        if not layer.is_unet and not clip_connected:
            reason = "text-encoder layer, and no CLIP is connected"
        elif layer.weight_key is None:
            reason = "the connected CLIP has no such layer" if not layer.is_unet else "no weight in the model"
        else:
            shape = weight_shapes.get(_weight_name(layer.weight_key))
            numel = update_numel(layer)
            if shape is None:
                reason = f"the loaded model has no {_weight_name(layer.weight_key)}"
            elif numel is not None and numel != math.prod(shape) and not isinstance(layer.weight_key, tuple):
                reason = (f"shape mismatch: the {layer.kind} update has {numel} elements, weight "
                          f"{_weight_name(layer.weight_key)} is {tuple(shape)} (a LoRA for another base model?)")
        if reason is None:
            kept.append(layer)
        else:
            unplaced.update({key: reason for key in layer.keys.values()})
    return replace(parsed, layers=kept, unplaced=unplaced)


def _weight_name(weight_key) -> str:
    """ComfyUI's key maps hold a weight name, or (weight name, slice) for layers that patch part of a weight."""
    return weight_key[0] if isinstance(weight_key, tuple) else weight_key


def with_alphas(parsed: ParsedLora, alpha: float | None) -> dict[str, float]:
    """{layer name: alpha} for the low-rank layers whose file stores none (see ``alpha.resolve_alpha``)."""
    return {layer.name: resolve_alpha(layer, alpha, parsed.format)[0] for layer in parsed.layers
            if layer.rank and layer.alpha is None}


def loader_tensors(parsed: ParsedLora, alpha: float | None) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """What ComfyUI's ``comfy.lora.load_lora`` takes: (tensors named ``<name><suffix>``, {name: weight key}).

    Low-rank layers whose file stores no alpha get one by this pack's rule (``alpha``; see
    ``alpha.resolve_alpha``), because ComfyUI would apply them at scale 1.0."""
    alphas = with_alphas(parsed, alpha)
    alpha_tensors = {a: torch.tensor(a) for a in set(alphas.values())}  # read-only: one per value will do
    tensors: dict[str, torch.Tensor] = {}
    to_load: dict[str, object] = {}
    for layer in parsed.layers:
        for suffix, tensor in layer.tensors.items():
            tensors[layer.name + suffix] = tensor
        if layer.name in alphas:
            tensors[layer.name + ".alpha"] = alpha_tensors[alphas[layer.name]]
        to_load[layer.name] = layer.weight_key
    return tensors, to_load


def unread_tensors(parsed: ParsedLora, read: set[str]) -> dict[str, str]:
    """{file key: layer} for each tensor of an applied layer that ComfyUI's loader did not read (``read``: the
    names it read from ``loader_tensors``). Applying such a layer without it would be wrong."""
    return {layer.keys[suffix]: layer.source for layer in parsed.layers for suffix in layer.tensors
            if layer.name + suffix not in read}
