"""Converting LoRAs between ComfyUI's format and DiffSynth-Studio 1.x's, keeping the effective update.

What "the same LoRA" means here: the weight change ``(alpha / rank) * up @ down`` that peft applies while
training and ComfyUI applies when loading a file with ``.alpha`` keys. DiffSynth 1.x files store no alpha,
so their alpha is the one they were trained with (``alpha``, default 4, the recipe's); other alpha-less files
default to alpha = rank (scale 1.0, as their own loaders apply them). ComfyUI's loader scales by
alpha/rank only when a ``.alpha`` key exists, so a ComfyUI file written here always carries ``.alpha``.
A DiffSynth file written here stores ``up`` rescaled so that training alpha ``alpha`` gives the same update.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from . import layout
from .formats import DEFAULT_TRAINING_ALPHA, LoraLayer, ParsedLora, parse_lora

log = logging.getLogger("aesthete.lora")

TARGETS = ("comfyui", "diffsynth")


class LoraConversionError(ValueError):
    """Nothing of the LoRA could be placed, or the target format cannot hold it."""


@dataclass
class Conversion:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    parsed: ParsedLora
    dropped: dict[str, str]  # key in the file -> why it is not in the output (unplaced, or not expressible)


def resolve_alpha(layer: LoraLayer, alpha: float | None, fmt: str) -> tuple[float, str]:
    """(alpha to use, where it came from) for a layer of a file in format ``fmt``.

    A stored alpha wins; else ``alpha`` when > 0; else the format's own convention ("automatic"): DiffSynth 1.x
    files were trained by peft at lora_alpha 4 (the recipe's), every other alpha-less file is applied at scale 1.0
    (alpha = rank) as ComfyUI, diffusers and DiffSynth 2.x (which trains with lora_alpha = rank) apply them."""
    if layer.alpha is not None:
        return layer.alpha, "file"
    if alpha is not None and alpha > 0:
        return float(alpha), "given"
    if fmt == "diffsynth":
        return DEFAULT_TRAINING_ALPHA, "diffsynth-recipe"
    return float(layer.rank), "rank"


def _ranks(layers: list[LoraLayer]) -> str:
    ranks = sorted({layer.rank for layer in layers})
    return str(ranks[0]) if len(ranks) == 1 else ",".join(map(str, ranks))


def to_comfyui(parsed: ParsedLora, alpha: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ComfyUI/kohya-style tensors: ``<target>.lora_up.weight``, ``.lora_down.weight``, ``.alpha`` for every
    layer (UNet targets are ``diffusion_model.<ldm module>``; text-encoder targets keep their file names)."""
    tensors: dict[str, torch.Tensor] = {}
    alphas: set[float] = set()
    sources: set[str] = set()
    for layer in parsed.layers:
        a, source = resolve_alpha(layer, alpha, parsed.format)
        alphas.add(a)
        sources.add(source)
        tensors[f"{layer.target}.lora_up.weight"] = layer.up
        tensors[f"{layer.target}.lora_down.weight"] = layer.down
        tensors[f"{layer.target}.alpha"] = torch.tensor(a, dtype=torch.float32)
    return tensors, _metadata(parsed, "comfyui", alphas, sources)


def to_diffsynth(parsed: ParsedLora, alpha: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str],
                                                                         dict[str, str]]:
    """DiffSynth 1.x tensors (``blocks.N.<module>.lora_A.default.weight`` / ``lora_B``), for training alpha
    ``alpha`` (default 4): each ``up`` is multiplied by (its alpha / ``alpha``). Returns tensors, metadata and
    the layers that DiffSynth's UNet cannot hold (text encoders)."""
    if parsed.base is None:
        raise LoraConversionError("cannot tell whether this LoRA is for SD1.5 or SDXL: pass base='sd15' or 'sdxl'")
    train_alpha = DEFAULT_TRAINING_ALPHA if alpha is None or alpha <= 0 else float(alpha)
    to_diffsynth_name = layout.name_tables(parsed.base)["ldm_to_diffsynth"]
    tensors: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    sources: set[str] = set()
    for layer in parsed.layers:
        if not layer.is_unet:
            dropped[layer.source] = "text-encoder layer: a DiffSynth UNet LoRA cannot hold it"
            continue
        a, source = resolve_alpha(layer, alpha, parsed.format)
        sources.add(source)
        name = to_diffsynth_name[layer.target[len("diffusion_model."):]]
        up = layer.up
        if a != train_alpha:  # peft will scale by train_alpha/rank; fold the difference into up
            up = (up.float() * (a / train_alpha)).to(layer.up.dtype)
        tensors[f"{name}.lora_B.default.weight"] = up
        tensors[f"{name}.lora_A.default.weight"] = layer.down
    metadata = _metadata(parsed, "diffsynth", {train_alpha}, sources)
    metadata["aesthete.note"] = (f"DiffSynth 1.x layout; load with peft lora_alpha={train_alpha:g} "
                                 f"(rank {metadata['aesthete.rank']}) for the converted strength")
    return tensors, metadata, dropped


def _metadata(parsed: ParsedLora, fmt: str, alphas: set[float], sources: set[str]) -> dict[str, str]:
    unet = [layer for layer in parsed.layers if layer.is_unet]
    alpha_text = ",".join(f"{a:g}" for a in sorted(alphas)) if alphas else ""
    return {
        "aesthete.format": fmt,
        "aesthete.source_format": parsed.format,
        "aesthete.base": parsed.base or "",
        "aesthete.rank": _ranks(parsed.layers) if parsed.layers else "",
        "aesthete.alpha": alpha_text,
        "aesthete.alpha_source": ",".join(sorted(sources)),
        "aesthete.layers": json.dumps({"unet": len(unet), "text_encoder": len(parsed.layers) - len(unet)}),
        # the names kohya's tools and the A1111/Forge UIs read
        "ss_network_module": "networks.lora",
        "ss_network_dim": _ranks(parsed.layers) if parsed.layers else "",
        "ss_network_alpha": alpha_text,
        "ss_base_model_version": {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}.get(parsed.base or "", ""),
    }


def convert_lora_with_report(state_dict: dict[str, torch.Tensor], to: str, alpha: float | None = None,
                             base: str | None = None) -> Conversion:
    """``convert_lora`` plus what was parsed and what could not be carried over (key -> reason)."""
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}: use one of {', '.join(TARGETS)}")
    parsed = parse_lora(state_dict, base=base)
    if not parsed.layers:
        examples = ", ".join(list(parsed.unplaced)[:3])
        raise LoraConversionError(
            f"none of the {parsed.total_keys} tensors could be placed (format looks like: {parsed.describe()}; "
            f"base {parsed.base or 'unknown'}); for example {examples}")
    dropped = dict(parsed.unplaced)
    if to == "comfyui":
        tensors, metadata = to_comfyui(parsed, alpha)
    else:
        tensors, metadata, not_expressible = to_diffsynth(parsed, alpha)
        for layer in parsed.layers:
            if layer.source in not_expressible:
                dropped.update({k: not_expressible[layer.source] for k in layer.keys})
    if dropped:
        log.warning("LoRA conversion to %s left out %d of %d tensors, e.g. %s", to, len(dropped),
                    parsed.total_keys, "; ".join(f"{k}: {v}" for k, v in list(dropped.items())[:3]))
    metadata["aesthete.dropped_keys"] = str(len(dropped))
    return Conversion(tensors, metadata, parsed, dropped)


def convert_lora(state_dict: dict[str, torch.Tensor], to: str, alpha: float | None = None,
                 base: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Convert a LoRA state dict of any supported format to ``to`` ("comfyui" or "diffsynth").

    ``alpha``: the training alpha of layers whose file stores none (None or <= 0: automatic, 4 for DiffSynth 1.x
    files as its recipe trains, the rank for other formats); for ``to="diffsynth"`` also the peft lora_alpha the
    output is meant for (default 4). ``base``: "sd15" or "sdxl" (Kolors is
    "sdxl"); inferred when None. Returns (tensors, safetensors metadata: all values str). Tensors that cannot
    be placed are logged as a warning (``convert_lora_with_report`` returns them); if none can be placed,
    LoraConversionError names the format the file looked like."""
    result = convert_lora_with_report(state_dict, to, alpha=alpha, base=base)
    return result.tensors, result.metadata
