"""Converting LoRAs between ComfyUI's format, DiffSynth-Studio 1.x's and diffusers/peft's, keeping the effective
update.

What "the same LoRA" means here: the weight change ``(alpha / rank) * up @ down`` that peft applies while
training and ComfyUI applies when loading a file with ``.alpha`` keys. DiffSynth 1.x files store no alpha,
so their alpha is the one they were trained with (``alpha``, default 4, the recipe's); other alpha-less files
default to alpha = rank (scale 1.0, as their own loaders apply them). ComfyUI's loader scales by
alpha/rank only when a ``.alpha`` key exists, so a ComfyUI file written here always carries ``.alpha``.
A DiffSynth file written here stores ``up`` rescaled so that training alpha ``alpha`` gives the same update.
A diffusers file (``unet.<diffusers module>.lora_A/lora_B.weight``, what ``load_lora_weights`` of diffusers'
SDXL and Kolors pipelines reads) keeps the tensors as they are and states rank and alpha in peft's
``lora_adapter_metadata``; a file with several ranks or alphas gets each layer's scale folded into ``lora_B``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from . import layout
from .alpha import DEFAULT_TRAINING_ALPHA, resolve_alpha
from .formats import ParsedLayer, ParsedLora, parse_lora

log = logging.getLogger("aesthete.lora")

TARGETS = ("comfyui", "diffsynth", "diffusers")
# the safetensors metadata key diffusers reads peft's LoraConfig from (prefixed per model: "unet.r", ...)
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
# the kinds a plain low-rank file (ComfyUI's lora_up/lora_down/alpha, DiffSynth's lora_A/lora_B) holds
PLAIN_KINDS = ("LoRA", "LoCon")

__all__ = ["TARGETS", "Conversion", "LoraAlreadyLoadable", "LoraConversionError", "convert_lora",
           "convert_lora_with_report", "resolve_alpha", "to_comfyui", "to_diffsynth", "to_diffusers"]


class LoraConversionError(ValueError):
    """Nothing of the LoRA could be placed, or the target format cannot hold it."""


class LoraAlreadyLoadable(LoraConversionError):
    """The file is in a format ComfyUI's own LoraLoader applies as it is; a converted copy would be no better."""


@dataclass
class Conversion:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    parsed: ParsedLora
    dropped: dict[str, str]  # key in the file -> why it is not in the output (unplaced, or not expressible)


def _ranks(layers: list[ParsedLayer]) -> str:
    ranks = sorted({layer.rank for layer in layers if layer.rank})
    return ",".join(map(str, ranks))


def to_comfyui(parsed: ParsedLora, alpha: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """ComfyUI-style tensors named ``<target><suffix>`` (UNet targets are ``diffusion_model.<ldm module>``,
    text-encoder targets keep their file names), every tensor of every layer with the suffix ComfyUI's loader
    reads; low-rank layers always carry ``.alpha`` (``resolve_alpha`` where the file stores none)."""
    tensors: dict[str, torch.Tensor] = {}
    alphas: set[float] = set()
    sources: set[str] = set()
    for layer in parsed.layers:
        for suffix, tensor in layer.tensors.items():
            tensors[layer.target + suffix] = tensor
        if layer.rank:
            a, source = resolve_alpha(layer, alpha, parsed.format)
            alphas.add(a)
            sources.add(source)
            tensors[f"{layer.target}.alpha"] = torch.tensor(a, dtype=torch.float32)
    return tensors, _metadata(parsed, "comfyui", alphas, sources)


def to_diffsynth(parsed: ParsedLora, alpha: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str],
                                                                         dict[str, str]]:
    """DiffSynth 1.x tensors (``blocks.N.<module>.lora_A.default.weight`` / ``lora_B``), for training alpha
    ``alpha`` (default 4): each ``up`` is multiplied by (its alpha / ``alpha``). Returns tensors, metadata and
    the layers that DiffSynth's UNet cannot hold (text encoders). Raises LoraConversionError for layers that are
    not plain low-rank (LoHa, LoKr, DoRA, Tucker LoCon, full differences): DiffSynth cannot express them."""
    if parsed.base is None:
        raise LoraConversionError("cannot tell whether this LoRA is for SD1.5 or SDXL: pass base='sd15' or 'sdxl'")
    _refuse_non_plain(parsed, "a DiffSynth 1.x LoRA")
    train_alpha = DEFAULT_TRAINING_ALPHA if alpha is None or alpha <= 0 else float(alpha)
    placed, dropped, sources = _place_unet_layers(
        parsed, layout.name_tables(parsed.base)["ldm_to_diffsynth"], alpha,
        "text-encoder layer: a DiffSynth UNet LoRA cannot hold it", f"DiffSynth's {parsed.base} UNet has no {{}}")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer, a in placed:
        up = layer.up
        if a != train_alpha:  # peft will scale by train_alpha/rank; fold the difference into up
            up = (up.float() * (a / train_alpha)).to(layer.up.dtype)
        tensors[f"{name}.lora_B.default.weight"] = up
        tensors[f"{name}.lora_A.default.weight"] = layer.down
    metadata = _metadata(parsed, "diffsynth", {train_alpha}, sources)
    metadata["aesthete.note"] = (f"DiffSynth 1.x layout; load with peft lora_alpha={train_alpha:g} "
                                 f"(rank {metadata['aesthete.rank']}) for the converted strength")
    ranks = {layer.rank for layer in parsed.layers if layer.rank}
    if len(ranks) == 1:  # DiffSynth's own load_lora scales by lora_alpha alone, without peft's / rank
        metadata["aesthete.note"] += (f"; with DiffSynth 1.x's ModelManager.load_lora use "
                                      f"lora_alpha={train_alpha / next(iter(ranks)):g}")
    return tensors, metadata, dropped


def to_diffusers(parsed: ParsedLora, unet: str | layout.UNetArchitecture, alpha: float | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """diffusers/peft tensors (``unet.<diffusers module>.lora_A.weight`` / ``lora_B.weight``) for a UNet of
    architecture ``unet``, and peft's LoraConfig (r, lora_alpha, target_modules) in the metadata diffusers reads.
    Returns tensors, metadata and the layers left out (text encoders, modules the UNet has no diffusers name for).
    Only plain low-rank layers can be written (LoraConversionError otherwise)."""
    _refuse_non_plain(parsed, "a diffusers/peft LoRA")
    placed, dropped, sources = _place_unet_layers(parsed, layout.diffusers_names(unet), alpha,
                                                  "text-encoder layer: only the UNet is written",
                                                  "the UNet has no diffusers name for {}")
    ranks = {layer.rank for _, layer, _ in placed}
    alphas = {a for _, _, a in placed}
    one_scale = len(ranks) == 1 and len(alphas) == 1
    tensors: dict[str, torch.Tensor] = {}
    for name, layer, a in placed:
        up = layer.up if one_scale else (layer.up.float() * (a / layer.rank)).to(layer.up.dtype)
        tensors[f"unet.{name}.lora_A.weight"] = layer.down
        tensors[f"unet.{name}.lora_B.weight"] = up
    metadata = _metadata(parsed, "diffusers", alphas if one_scale else set(ranks), sources)
    metadata["format"] = "pt"
    if one_scale and placed:
        config = {"r": next(iter(ranks)), "lora_alpha": next(iter(alphas)),
                  "target_modules": sorted({name for name, _, _ in placed}), "init_lora_weights": True,
                  "use_dora": False, "lora_bias": False}
        metadata[DIFFUSERS_METADATA_KEY] = json.dumps({f"unet.{k}": v for k, v in config.items()}, sort_keys=True)
    return tensors, metadata, dropped


def _place_unet_layers(parsed: ParsedLora, names: dict[str, str], alpha: float | None, text_encoder_reason: str,
                       missing_reason: str) -> tuple[list[tuple[str, ParsedLayer, float]], dict[str, str], set[str]]:
    """The UNet layers a target format names (``names``: ldm module -> its name there), each with its alpha:
    ([(name, layer, alpha)], {left-out layer's source: why}, the alphas' sources). ``missing_reason`` takes the
    layer's target through ``{}``."""
    placed: list[tuple[str, ParsedLayer, float]] = []
    dropped: dict[str, str] = {}
    sources: set[str] = set()
    for layer in parsed.layers:
        name = names.get(layer.target.removeprefix("diffusion_model.")) if layer.is_unet else None
        if name is None:
            dropped[layer.source] = text_encoder_reason if not layer.is_unet else missing_reason.format(layer.target)
            continue
        a, source = resolve_alpha(layer, alpha, parsed.format)
        sources.add(source)
        placed.append((name, layer, a))
    return placed, dropped, sources


def _refuse_non_plain(parsed: ParsedLora, what_target: str) -> None:
    plain = {".lora_up.weight", ".lora_down.weight", ".alpha"}
    other = [layer for layer in parsed.layers if layer.kind not in PLAIN_KINDS or set(layer.tensors) - plain]
    if other:
        extras = sorted(s.strip(".") for s in set(other[0].tensors) - plain)
        what = f"a {other[0].label} layer" + (f" with {', '.join(extras)}" if extras else "")
        raise LoraConversionError(
            f"{other[0].source} is {what} ({len(other)} such layers): {what_target} holds only plain "
            f"low-rank layers, so it cannot carry this file without changing it; use the file in ComfyUI as it is "
            f"(Load LoRA (any format) or core LoraLoader)")


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
                             base: str | None = None, unet: layout.UNetArchitecture | None = None) -> Conversion:
    """``convert_lora`` plus what was parsed and what could not be carried over (key -> reason). ``unet``: the
    architecture of a UNet that is not the standard SD1.5/SDXL one (its modules are placed by its own names)."""
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}: use one of {', '.join(TARGETS)}")
    if unet is not None and base is None:
        base = "sdxl" if unet.size_embedding else "sd15"
    key_map = layout.standard_key_map(unet, kolors=unet.size_embedding) if unet is not None else None
    parsed = parse_lora(state_dict, key_map=key_map, base=base)
    if to == "comfyui":
        _refuse_if_already_loadable(parsed)
    if not parsed.layers:
        examples = ", ".join(list(parsed.unplaced)[:3])
        raise LoraConversionError(
            f"none of the {parsed.total_keys} tensors could be placed (format looks like: {parsed.describe()}; "
            f"base {parsed.base or 'unknown'}); for example {examples}")
    dropped = dict(parsed.unplaced)
    if to == "comfyui":
        tensors, metadata = to_comfyui(parsed, alpha)
    else:
        if to == "diffsynth":
            tensors, metadata, not_expressible = to_diffsynth(parsed, alpha)
        else:
            tensors, metadata, not_expressible = to_diffusers(parsed, unet or parsed.base or "sdxl", alpha)
        for layer in parsed.layers:
            if layer.source in not_expressible:
                dropped.update({k: not_expressible[layer.source] for k in layer.keys.values()})
    if dropped:
        log.warning("LoRA conversion to %s left out %d of %d tensors, e.g. %s", to, len(dropped),
                    parsed.total_keys, "; ".join(f"{k}: {v}" for k, v in list(dropped.items())[:3]))
    metadata["aesthete.dropped_keys"] = str(len(dropped))
    return Conversion(tensors, metadata, parsed, dropped)


def _refuse_if_already_loadable(parsed: ParsedLora) -> None:
    """LyCORIS kinds (LoHa, LoKr, DoRA, Tucker LoCon, full differences) named as ComfyUI's key map names them
    are applied by ComfyUI as they are: say so instead of writing a copy that could only lose something."""
    kinds = parsed.kinds()
    if parsed.layers and all(layer.as_written for layer in parsed.layers) and any(
            layer.kind not in PLAIN_KINDS for layer in parsed.layers):
        found = ", ".join(f"{kind} ({n} layers)" for kind, n in kinds.items())
        raise LoraAlreadyLoadable(
            f"this file is already in a format ComfyUI loads as it is ({found}): use it directly with core "
            f"LoraLoader or Load LoRA (any format); nothing was written")


def convert_lora(state_dict: dict[str, torch.Tensor], to: str, alpha: float | None = None,
                 base: str | None = None, unet: layout.UNetArchitecture | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Convert a LoRA state dict of any supported format to ``to`` ("comfyui", "diffsynth" or "diffusers").

    ``alpha``: the training alpha of layers whose file stores none (None or <= 0: automatic, 4 for DiffSynth 1.x
    files as its recipe trains, the rank for other formats); for ``to="diffsynth"`` also the peft lora_alpha the
    output is meant for (default 4). ``base``: "sd15" or "sdxl" (Kolors is
    "sdxl"); inferred when None. Returns (tensors, safetensors metadata: all values str). Tensors that cannot
    be placed are logged as a warning (``convert_lora_with_report`` returns them); if none can be placed,
    LoraConversionError names the format the file looked like."""
    result = convert_lora_with_report(state_dict, to, alpha=alpha, base=base, unet=unet)
    return result.tensors, result.metadata
