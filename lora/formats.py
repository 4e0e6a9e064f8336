"""Recognising a LoRA's format and placing each of its layers on a UNet module (ldm naming) or a text encoder.

A LoRA file is a flat dict of tensors whose names are ``<prefix><module><suffix>``. The suffix says which
matrix it is (up/B, down/A, alpha) and the module name says where it goes, in one of the namings listed in
``layout``. ``parse_lora`` turns any of the supported formats into one list of ``LoraLayer`` (up, down,
alpha) keyed by the ldm module name, and says which keys it could not place and why: nothing is dropped
silently.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

from . import layout

log = logging.getLogger("aesthete.lora")

# DiffSynth 1.x trains with peft at lora_alpha 4 and stores no alpha; the recipe behind this pack does too
DEFAULT_TRAINING_ALPHA = 4.0

# (regex, role): the first match wins; group 1 is the module name
_SUFFIXES = [
    (re.compile(r"^(.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_B(?:\.[A-Za-z0-9_-]+)?\.weight$"), "up"),  # peft, with or without the adapter name
    (re.compile(r"^(.+)\.lora_A(?:\.[A-Za-z0-9_-]+)?\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora\.up\.weight$"), "up"),  # diffusers LoRACompatibleLinear
    (re.compile(r"^(.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"^(.+)_lora\.up\.weight$"), "up"),  # diffusers attention processors (to_q_lora)
    (re.compile(r"^(.+)_lora\.down\.weight$"), "down"),
    (re.compile(r"^(.+)\.lora_linear_layer\.up\.weight$"), "up"),
    (re.compile(r"^(.+)\.lora_linear_layer\.down\.weight$"), "down"),
    (re.compile(r"^(.+)\.alpha$"), "alpha"),
]
_PEFT_SUFFIX = re.compile(r"\.lora_[AB](?:\.[A-Za-z0-9_-]+)?\.weight$")

# wrappers put in front of the UNet's own names by trainers and pipelines, stripped in this order
_UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.base_model.model.", "base_model.model.",
                  "pipe.denoising_model.", "pipe.unet.", "denoising_model.", "unet.", "model.", "module.")
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder.", "text_encoder_2.", "text_encoders.",
                          "te1.", "te2.")

FORMAT_DESCRIPTIONS = {
    "comfyui": "ComfyUI (diffusion_model.<module>.lora_up/lora_down/alpha, as SaveLoRA and this pack write)",
    "comfyui-peft": "ComfyUI module names with peft lora_A/lora_B",
    "kohya": "kohya-ss (lora_unet_..., lora_te_...)",
    "diffusers": "diffusers (down_blocks..., lora.up/lora.down or processor names)",
    "diffusers-peft": "diffusers names with peft lora_A/lora_B (DiffSynth 2.x SDXL, diffusers/peft trainers)",
    "diffsynth": "DiffSynth-Studio 1.x (blocks.N..., peft lora_A/lora_B, no alpha; Kolors and SDXL UNets)",
    "unknown": "unrecognised names",
}


@dataclass
class LoraLayer:
    """One low-rank update: weight += (alpha / rank) * up @ down.

    ``target`` is ``diffusion_model.<ldm module>`` for the UNet, or the source module name for a text encoder
    (left for ComfyUI's CLIP key map to place)."""

    target: str
    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None
    source: str  # the module name as written in the file
    keys: tuple[str, ...] = ()  # the file's tensor names of this layer (up, down, alpha)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def is_unet(self) -> bool:
        return self.target.startswith("diffusion_model.")


@dataclass
class ParsedLora:
    format: str
    base: str | None
    layers: list[LoraLayer]
    total_keys: int
    unplaced: dict[str, str] = field(default_factory=dict)  # key in the file -> why it was not placed

    @property
    def placed_keys(self) -> int:
        return self.total_keys - len(self.unplaced)

    def describe(self) -> str:
        return FORMAT_DESCRIPTIONS.get(self.format, self.format)


def _split_key(key: str) -> tuple[str, str] | None:
    for pattern, role in _SUFFIXES:
        m = pattern.match(key)
        if m:
            return m.group(1), role
    return None


def _strip_unet_prefix(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _UNET_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
                break
    return name


def _diffusers_module(name: str) -> str:
    """Attention-processor spellings to plain diffusers names: ``attn1.processor.to_out`` -> ``attn1.to_out.0``."""
    name = name.replace(".processor.", ".")
    if name.endswith(".to_out"):
        name += ".0"
    return name


def _naming_of(module: str) -> str:
    if module.startswith("lora_unet_"):
        return "kohya"
    if re.match(r"^blocks\.\d+\.", module) or module in ("text_intermediate_proj", "add_time_embedding.0",
                                                          "add_time_embedding.2"):
        return "diffsynth"
    if re.match(r"^(down_blocks|up_blocks|mid_block)\.", module) or module.split(".")[0] in (
            "conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding"):
        return "diffusers"
    if re.match(r"^(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)\.", module):
        return "ldm"
    return "unknown"


def _place(module: str, naming: str, base: str) -> str | None:
    tables = layout.name_tables(base)
    if naming == "kohya":
        return tables["kohya"].get(module[len("lora_unet_"):])
    if naming == "diffusers":
        return tables["diffusers"].get(_diffusers_module(module))
    if naming in ("diffsynth", "ldm"):
        return tables[naming].get(module)
    return None


def _context_dim_base(groups: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """SD1.5 cross-attention reads 768-wide text features, SDXL (and Kolors) 2048-wide."""
    for module, parts in groups.items():
        if re.search(r"attn2[._](to_k|to_v)$", module.replace(".processor.", ".")) and "down" in parts:
            width = parts["down"].shape[1]
            return {768: "sd15", 1024: "sd15", 2048: "sdxl"}.get(width)
    return None


def infer_base(modules: list[tuple[str, str]], groups: dict[str, dict[str, torch.Tensor]]) -> str:
    """The base ("sd15"/"sdxl") whose UNet places the most of ``modules`` ((name, naming) pairs); ties go to the
    cross-attention width, then to SDXL (Kolors, this pack's main model, is SDXL-shaped)."""
    counts = {base: sum(_place(m, naming, base) is not None for m, naming in modules) for base in layout.BASES}
    best = max(counts.values())
    leaders = [b for b, c in counts.items() if c == best]
    if len(leaders) == 1:
        return leaders[0]
    return _context_dim_base(groups) or "sdxl"


def parse_lora(state_dict: dict[str, torch.Tensor], base: str | None = None,
               metadata: dict[str, str] | None = None) -> ParsedLora:
    """Place every layer of a LoRA state dict. ``base`` ("sd15", "sdxl"; Kolors is "sdxl") is inferred when None.

    Alpha: taken from ``<module>.alpha`` keys when present, else left None (the caller decides, see
    ``convert.resolve_alpha``)."""
    if base is not None and base not in layout.BASES:
        raise ValueError(f"unknown base {base!r}: use one of {', '.join(layout.BASES)}")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    key_of: dict[tuple[str, str], str] = {}
    unplaced: dict[str, str] = {}
    peft = False
    for key, tensor in state_dict.items():
        split = _split_key(key)
        if split is None:
            reason = ("DoRA/LoCon extras are not supported" if key.endswith((".dora_scale", ".lora_mid.weight"))
                      else "not a LoRA up/down/alpha tensor")
            unplaced[key] = reason
            continue
        module, role = split
        peft = peft or bool(_PEFT_SUFFIX.search(key))
        if role in groups.setdefault(module, {}):
            unplaced[key] = f"second {role} tensor for {module} (another peft adapter?)"
            continue
        groups[module][role] = tensor
        key_of[(module, role)] = key

    unet_modules: list[tuple[str, str, str]] = []  # (module in file, stripped name, naming)
    te_modules: list[str] = []
    for module in groups:
        if module.startswith(_TEXT_ENCODER_PREFIXES):
            te_modules.append(module)
            continue
        stripped = _strip_unet_prefix(module)
        unet_modules.append((module, stripped, _naming_of(stripped)))

    namings = [n for _, _, n in unet_modules if n != "unknown"]
    main_naming = max(set(namings), key=namings.count) if namings else "unknown"
    if base is None:
        base = infer_base([(s, n) for _, s, n in unet_modules], groups) if namings else None

    layers: list[LoraLayer] = []

    def add(module: str, target: str) -> None:
        parts = groups[module]
        if "up" not in parts or "down" not in parts:
            missing = "up/B" if "up" not in parts else "down/A"
            for role in parts:
                unplaced[key_of[(module, role)]] = f"{module} has no {missing} matrix"
            return
        alpha = parts.get("alpha")
        layers.append(LoraLayer(target, parts["up"], parts["down"],
                                None if alpha is None else float(alpha.float().item()), module,
                                tuple(key_of[(module, role)] for role in parts)))

    for module, stripped, naming in unet_modules:
        ldm = _place(stripped, naming, base) if base else None
        if ldm is None:
            reason = (f"no {base} UNet module named {stripped!r}" if naming != "unknown"
                      else f"unrecognised module name {module!r}")
            if stripped == "text_intermediate_proj":
                reason = "Kolors text projection: ComfyUI's SDXL UNet has no such layer"
            for role in groups[module]:
                unplaced[key_of[(module, role)]] = reason
            continue
        add(module, "diffusion_model." + ldm)
    for module in te_modules:
        add(module, module)

    fmt = {"ldm": "comfyui", "kohya": "kohya", "diffusers": "diffusers", "diffsynth": "diffsynth"}.get(main_naming,
                                                                                                     "unknown")
    if peft and fmt in ("comfyui", "diffusers"):
        fmt += "-peft"
    if fmt == "unknown" and te_modules:
        fmt = "kohya" if any(m.startswith("lora_te") for m in te_modules) else "diffusers"
    return ParsedLora(fmt, base, layers, len(state_dict), unplaced)


def restrict_to_model(parsed: ParsedLora, weight_shapes: dict[str, tuple[int, ...]],
                      clip_connected: bool = True) -> ParsedLora:
    """Keep the layers whose target is a weight of the loaded model (``weight_shapes``: target -> weight shape,
    UNet targets as ``diffusion_model.<module>``, text-encoder targets by their LoRA name) and whose update has
    that weight's size; the others move to ``unplaced`` with the reason."""
    kept: list[LoraLayer] = []
    unplaced = dict(parsed.unplaced)
    for layer in parsed.layers:
        shape = weight_shapes.get(layer.target)
        reason = None
        if shape is None:
            if not layer.is_unet and not clip_connected:
                reason = "text-encoder layer, and no CLIP is connected"
            elif not layer.is_unet:
                reason = "the connected CLIP has no such layer"
            else:
                reason = f"the loaded model has no {layer.target[len('diffusion_model.'):]}"
        else:
            numel = 1
            for d in shape:
                numel *= d
            update = layer.up.shape[0] * layer.down[0].numel()
            if update != numel or layer.up.shape[1] != layer.down.shape[0]:
                reason = (f"shape mismatch: up {tuple(layer.up.shape)} @ down {tuple(layer.down.shape)} does not "
                          f"fit weight {tuple(shape)} (a LoRA for another base model?)")
        if reason is None:
            kept.append(layer)
        else:
            for key in layer.keys:
                unplaced[key] = reason
    return ParsedLora(parsed.format, parsed.base, kept, parsed.total_keys, unplaced)
