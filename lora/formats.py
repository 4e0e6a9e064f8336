"""Recognising a LoRA file's layers and naming each one the way ComfyUI's LoRA loader names the layer it patches.

A LoRA file is a flat dict of tensors named ``<module><suffix>``. ComfyUI builds, for the loaded model, a key map
from every module name it understands (ComfyUI's own, kohya's ``lora_unet_...`` in the model's ldm and diffusers
layouts, diffusers attention processors, ``text_encoder...``) to a weight of that model, and its weight adapters
read the suffixes (LoRA up/down/mid/alpha, DoRA ``dora_scale``, LoHa ``hada_*``, LoKr ``lokr_*``, full
differences ``diff``/``diff_b``...). ``parse_lora`` starts from that key map (``key_map``: the caller passes
ComfyUI's, or ``layout.standard_key_map`` without ComfyUI): a module the map knows is placed as ComfyUI places it.
Only modules it does not know are renamed by this pack's rules (DiffSynth 1.x block names, diffusers and peft
names without a prefix, ldm names without ``diffusion_model.``), to a name the same map knows. Every suffix is
written as ComfyUI's loader reads it, so one loader applies all of them.

Nothing is dropped silently: each tensor that cannot be placed is in ``ParsedLora.unplaced`` with the reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

from . import layout

log = logging.getLogger("aesthete.lora")

UNET_PREFIX = "diffusion_model."

# spellings of the low-rank matrices -> the suffix ComfyUI's LoRA adapter reads with a lora_mid beside it
_UP = ".lora_up.weight"
_DOWN = ".lora_down.weight"
_RENAMED_SUFFIXES = [
    (re.compile(r"\.lora_B(?:\.[A-Za-z0-9_-]+)?\.weight$"), _UP),  # peft, with or without the adapter name
    (re.compile(r"\.lora_A(?:\.[A-Za-z0-9_-]+)?\.weight$"), _DOWN),
    (re.compile(r"\.lora_B$"), _UP),  # peft parameters saved without .weight (Mochi-style)
    (re.compile(r"\.lora_A$"), _DOWN),
    (re.compile(r"_lora\.up\.weight$"), _UP),  # diffusers attention processors (to_q_lora)
    (re.compile(r"_lora\.down\.weight$"), _DOWN),
    (re.compile(r"\.lora\.up\.weight$"), _UP),  # diffusers LoRACompatibleLinear
    (re.compile(r"\.lora\.down\.weight$"), _DOWN),
    (re.compile(r"\.lora_linear_layer\.up\.weight$"), _UP),
    (re.compile(r"\.lora_linear_layer\.down\.weight$"), _DOWN),
]
# suffixes ComfyUI's loader reads as they are: LoRA/LoCon/DoRA, LoHa, LoKr, GLoRA, OFT/BOFT, full differences
_COMFY_SUFFIXES = (
    _UP, _DOWN, ".lora_mid.weight", ".alpha", ".dora_scale", ".reshape_weight",
    ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
    ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2",
    ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight", ".oft_blocks", ".rescale",
    ".diff", ".diff_b", ".w_norm", ".b_norm", ".set_weight",
)
# peft's DoRA magnitude is not LyCORIS's dora_scale, and no loader here reads it
_PEFT_DORA = re.compile(r"\.lora_magnitude_vector(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?$")
_PEFT_SUFFIX = re.compile(r"\.lora_[AB](?:\.[A-Za-z0-9_-]+)?\.weight$")

# wrappers put in front of the UNet's own names by trainers and pipelines, stripped in this order
_UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.base_model.model.", "base_model.model.",
                  "pipe.denoising_model.", "pipe.unet.", "denoising_model.", "unet.", "model.", "module.")
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
                          "text_encoders.", "te1.", "te2.")

FORMAT_DESCRIPTIONS = {
    "comfyui": "ComfyUI (diffusion_model.<module>.lora_up/lora_down/alpha, as SaveLoRA and this pack write)",
    "comfyui-peft": "ComfyUI module names with peft lora_A/lora_B",
    "kohya": "kohya-ss (lora_unet_..., lora_te_...)",
    "lycoris": "SimpleTuner LyCORIS (lycoris_...)",
    "diffusers": "diffusers (down_blocks..., lora.up/lora.down or processor names)",
    "diffusers-peft": "diffusers names with peft lora_A/lora_B (DiffSynth 2.x SDXL, diffusers/peft trainers)",
    "diffsynth": "DiffSynth-Studio 1.x (blocks.N..., peft lora_A/lora_B, no alpha; Kolors and SDXL UNets)",
    "unknown": "unrecognised names",
}
# the naming of a layer as the report shows it beside its kind ("kohya LoHa")
NAMING_LABELS = {"comfyui": "ComfyUI", "kohya": "kohya", "lycoris": "LyCORIS", "diffusers": "diffusers",
                 "diffsynth": "DiffSynth", "ldm": "ComfyUI", "text-encoder": "text-encoder"}


@dataclass
class ParsedLayer:
    """One layer of a LoRA file, named for ComfyUI's loader.

    ``name`` is the key of the key map (ComfyUI's loader reads ``name + suffix``), ``weight_key`` the weight it
    patches (None for a text-encoder layer when no text-encoder key map was given: its name is kept as it is),
    ``tensors`` maps ComfyUI's suffixes (``.lora_up.weight``, ``.hada_w1_a``, ``.alpha``...) to the file's
    tensors and ``keys`` the same suffixes to the file's tensor names."""

    name: str
    weight_key: str | tuple | None
    part: str  # "unet" or "clip"
    naming: str  # comfyui, kohya, lycoris, diffusers, diffsynth, ldm, text-encoder
    source: str  # the module name as written in the file
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """LoRA, LoCon, LoCon (Tucker), DoRA, LoHa, LoKr, GLoRA, OFT, full diff, or "unknown"."""
        s = self.tensors
        if ".hada_w1_a" in s:
            return "LoHa"
        if any(k.startswith(".lokr_") for k in s):
            return "LoKr"
        if _UP in s or _DOWN in s:
            if ".dora_scale" in s:
                return "DoRA"
            if ".lora_mid.weight" in s:
                return "LoCon (Tucker)"
            down = s.get(_DOWN)
            return "LoCon" if down is not None and down.dim() == 4 and down.shape[2:].numel() > 1 else "LoRA"
        if ".a1.weight" in s:
            return "GLoRA"
        if ".oft_blocks" in s:
            return "OFT"
        if any(k in s for k in (".diff", ".diff_b", ".w_norm", ".b_norm", ".set_weight")):
            return "full diff"
        return "unknown"

    @property
    def up(self) -> torch.Tensor | None:
        return self.tensors.get(_UP)

    @property
    def down(self) -> torch.Tensor | None:
        return self.tensors.get(_DOWN)

    @property
    def alpha(self) -> float | None:
        """The alpha stored in the file, if any."""
        a = self.tensors.get(".alpha")
        return None if a is None else float(a.float().item())

    @property
    def rank(self) -> int:
        """The divisor of alpha for a low-rank layer (ComfyUI divides by the down matrix's rows); 0 for others."""
        return int(self.down.shape[0]) if self.down is not None else 0

    @property
    def is_unet(self) -> bool:
        return self.part == "unet"

    @property
    def target(self) -> str:
        """``diffusion_model.<ldm module>`` for the UNet, the file's module name for a text encoder."""
        if self.is_unet and isinstance(self.weight_key, str):
            return self.weight_key.removesuffix(".weight")
        return self.name

    @property
    def as_written(self) -> bool:
        """Whether ComfyUI's key map knows the module as the file names it (core LoraLoader places it too)."""
        return self.source == self.name

    @property
    def label(self) -> str:
        return f"{NAMING_LABELS.get(self.naming, self.naming)} {self.kind}"


@dataclass
class ParsedLora:
    format: str
    base: str | None
    layers: list[ParsedLayer]
    total_keys: int
    unplaced: dict[str, str] = field(default_factory=dict)  # key in the file -> why it was not placed

    @property
    def placed_keys(self) -> int:
        return self.total_keys - len(self.unplaced)

    def describe(self) -> str:
        return FORMAT_DESCRIPTIONS.get(self.format, self.format)

    def kinds(self) -> dict[str, int]:
        """{"kohya LoHa": layers, ...} in the order first seen."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.label] = counts.get(layer.label, 0) + 1
        return counts


def _canonical_suffix(suffix: str) -> str:
    for pattern, canonical in _RENAMED_SUFFIXES:
        if pattern.fullmatch(suffix):
            return canonical
    return suffix


def _split_known(key: str) -> tuple[str, str] | None:
    """(module, suffix as written) for a tensor name with a suffix this module knows, else None."""
    for pattern, _ in _RENAMED_SUFFIXES:
        m = pattern.search(key)
        if m and m.start() > 0:
            return key[:m.start()], key[m.start():]
    m = _PEFT_DORA.search(key)
    if m and m.start() > 0:
        return key[:m.start()], key[m.start():]
    for suffix in _COMFY_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[:-len(suffix)], suffix
    return None


def _scan_key_map(key: str, key_map: dict) -> tuple[str, str] | None:
    """(module, suffix) for a key of unknown suffix: the longest proper prefix the key map knows, cut at a ``.``
    or ``_`` (ComfyUI may know a suffix this pack does not)."""
    if not key_map:
        return None
    for i in range(len(key) - 1, 0, -1):
        if key[i] in "._" and key[:i] in key_map:
            return key[:i], key[i:]
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


def _naming_of(module: str) -> str:
    """The naming of a module name with its wrappers stripped."""
    if re.match(r"^blocks\.\d+\.", module) or module in ("text_intermediate_proj", "add_time_embedding.0",
                                                          "add_time_embedding.2"):
        return "diffsynth"
    if re.match(r"^(down_blocks|up_blocks|mid_block)\.", module) or module.split(".")[0] in (
            "conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding", "encoder_hid_proj"):
        return "diffusers"
    if re.match(r"^(input_blocks|middle_block|output_blocks|time_embed|label_emb|out)\.", module):
        return "ldm"
    return "unknown"


def _naming_in_key_map(module: str) -> str:
    """The naming of a module name that ComfyUI's key map knows as written."""
    if module.startswith("lora_unet_") or module.startswith(("lora_te", "lora_prior_")):
        return "kohya"
    if module.startswith("lycoris_"):
        return "lycoris"
    if module.startswith(UNET_PREFIX):
        return "comfyui"
    if module.startswith(_TEXT_ENCODER_PREFIXES):
        return "text-encoder"
    return "diffusers"


def _diffusers_to_processor(name: str) -> str:
    """Plain diffusers attention names to the processor spelling ComfyUI's key map holds:
    ``attn1.to_q`` -> ``attn1.processor.to_q``, ``attn1.to_out.0`` -> ``attn1.processor.to_out``."""
    name = name.replace(".processor.", ".").replace(".to_", ".processor.to_")
    return name.removesuffix(".0") if name.endswith(".to_out.0") else name


def _rename(stripped: str, naming: str, base: str | None, key_map: dict) -> str | None:
    """The key-map name for a module ComfyUI's map does not know as written, or None."""
    if naming == "ldm":
        candidates = [UNET_PREFIX + stripped]
    elif naming == "diffusers":
        candidates = [_diffusers_to_processor(stripped), "lora_unet_" + stripped.replace(".", "_"),
                      UNET_PREFIX + stripped]  # encoder_hid_proj has the same name in both layouts
    elif naming == "diffsynth" and base is not None:
        ldm = layout.name_tables(base)["diffsynth"].get(stripped)
        candidates = [UNET_PREFIX + ldm] if ldm else []
    else:
        candidates = []
    return next((c for c in candidates if c in key_map), None)


def _unrenamed_reason(module: str, stripped: str, naming: str, base: str | None) -> str:
    if stripped in ("text_intermediate_proj", "encoder_hid_proj"):
        return "Kolors text projection (encoder_hid_proj): the loaded model has no such layer (not a Kolors UNet?)"
    if naming == "unknown":
        return f"unrecognised module name {module!r}"
    if naming == "diffsynth":
        ldm = layout.name_tables(base)["diffsynth"].get(stripped) if base else None
        if ldm is None:
            return f"no {base or 'SD1.5/SDXL'} UNet module named {stripped!r}"
        return f"the loaded model has no {ldm}"
    return f"the loaded model has no module named {stripped!r}"


def parse_lora(state_dict: dict[str, torch.Tensor], key_map: dict | None = None, clip_key_map: dict | None = None,
               base: str | None = None) -> ParsedLora:
    """Every layer of a LoRA state dict, named for ComfyUI's loader.

    ``key_map``: the UNet key map of the loaded model ({module name: weight key}, ComfyUI's
    ``model_lora_keys_unet``); None: the standard SD1.5 or SDXL one (``base``, inferred when None).
    ``clip_key_map``: the text encoder's (``model_lora_keys_clip``); None: text-encoder layers keep their names
    and no weight. ``base`` ("sd15"/"sdxl"; Kolors is "sdxl") places DiffSynth 1.x block names."""
    if base is not None and base not in layout.BASES:
        raise ValueError(f"unknown base {base!r}: use one of {', '.join(layout.BASES)}")
    if key_map is None:
        if base is None:
            base = infer_base(state_dict)
        key_map = layout.standard_key_map(base, kolors=base == "sdxl")
    groups, unplaced, namings = _group(state_dict, key_map, clip_key_map or {}, base)
    layers = _complete_layers(groups, unplaced)
    return ParsedLora(_file_format(state_dict, namings, groups), base, layers, len(state_dict), unplaced)


@dataclass
class _Group:
    layer: ParsedLayer
    conflict: str | None = None  # why the whole layer cannot be placed


def _group(state_dict, key_map, clip_key_map, base) -> tuple[dict[str, _Group], dict[str, str], list[str]]:
    """Tensors grouped by the key-map name of their module; the names of tensors no layer takes, with why; the
    naming of every UNet tensor's module."""
    groups: dict[str, _Group] = {}
    unplaced: dict[str, str] = {}
    namings: list[str] = []
    claimed: dict[object, str] = {}  # weight key -> key-map name of the first layer that patches it
    for key, tensor in state_dict.items():
        placed = _place_key(key, key_map, clip_key_map, base)
        if len(placed) == 2:
            unplaced[key], naming = placed
            namings += [naming] if naming not in ("unknown", "text-encoder") else []
            continue
        name, suffix, weight_key, part, naming, source = placed
        if part == "unet":
            namings.append(naming)
        group = groups.get(name)
        if group is None:
            group = groups[name] = _Group(ParsedLayer(name, weight_key, part, naming, source))
            first = claimed.setdefault(weight_key, name) if weight_key is not None else name
            if first != name:
                group.conflict = f"{groups[first].layer.source} in the same file already patches that weight"
        canonical = _canonical_suffix(suffix)
        if canonical in group.layer.tensors:
            unplaced[key] = f"second {canonical.strip('.')} tensor for {source} (another peft adapter?)"
            continue
        group.layer.tensors[canonical] = tensor
        group.layer.keys[canonical] = key
    _attach_unknown(state_dict, groups, unplaced)
    return groups, unplaced, namings


def _attach_unknown(state_dict, groups: dict[str, _Group], unplaced: dict[str, str]) -> None:
    """A tensor of unknown kind named after a placed layer goes with that layer: ComfyUI's loader may know it,
    and if it does not, the layer must not be applied without it (see ``unread_tensors``)."""
    unknown = [key for key, why in unplaced.items() if why.startswith("not a tensor kind")]
    if not unknown:
        return
    by_source = {g.layer.source: g for g in groups.values()}
    for key in unknown:
        for i in range(len(key) - 1, 0, -1):
            group = by_source.get(key[:i]) if key[i] in "._" else None
            if group is not None:
                suffix = key[i:]
                group.layer.tensors[suffix] = state_dict[key]
                group.layer.keys[suffix] = key
                del unplaced[key]
                break


def _place_key(key, key_map, clip_key_map, base):
    """(name, suffix, weight key, part, naming, module in file), or (the reason the key cannot be placed,
    the naming its module looks like)."""
    maps = (("unet", key_map), ("clip", clip_key_map))
    split = _split_known(key)
    if split is None:
        for part, kmap in maps:
            scanned = _scan_key_map(key, kmap)
            if scanned is not None:
                return scanned[0], scanned[1], kmap[scanned[0]], part, _naming_in_key_map(scanned[0]), scanned[0]
        return "not a tensor kind of any LoRA format ComfyUI or this pack knows", "unknown"
    module, suffix = split
    for part, kmap in maps:  # ComfyUI's loader reads a known suffix after exactly this module name
        if module in kmap:
            return module, suffix, kmap[module], part, _naming_in_key_map(module), module
    if module.startswith(_TEXT_ENCODER_PREFIXES):
        if clip_key_map:
            return "the connected CLIP has no such layer", "text-encoder"
        return module, suffix, None, "clip", "text-encoder", module
    stripped = _strip_unet_prefix(module)
    naming = _naming_of(stripped)
    name = _rename(stripped, naming, base, key_map)
    if name is None:
        return _unrenamed_reason(module, stripped, naming, base), naming
    return name, suffix, key_map[name], "unet", naming, module


# which tensors a layer of each kind needs before ComfyUI can apply it
_REQUIRED = {"LoRA": (_UP, _DOWN), "LoCon": (_UP, _DOWN), "LoCon (Tucker)": (_UP, _DOWN), "DoRA": (_UP, _DOWN),
             "LoHa": (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")}


_MATRIX_NAMES = {_UP: "up/B matrix (lora_up)", _DOWN: "down/A matrix (lora_down)"}


def _lokr_missing(tensors: dict) -> list[str]:
    """Each Kronecker factor is stored whole (lokr_w1) or as two low-rank matrices (lokr_w1_a, lokr_w1_b)."""
    missing = []
    for w in ("w1", "w2"):
        halves = [f"lokr_{w}_{ab}" for ab in "ab" if f".lokr_{w}_{ab}" not in tensors]
        if f".lokr_{w}" not in tensors:
            missing += [f"lokr_{w}"] if len(halves) == 2 else halves
    return missing


def _complete_layers(groups: dict[str, _Group], unplaced: dict[str, str]) -> list[ParsedLayer]:
    layers = []
    for group in groups.values():
        layer = group.layer
        reason = group.conflict
        kind = layer.kind
        if reason is None and kind == "unknown":
            reason = f"{layer.source}: no tensor ComfyUI applies (only {', '.join(s.strip('.') for s in layer.keys)})"
        if reason is None:
            missing = [s for s in _REQUIRED.get(kind, ()) if s not in layer.tensors]
            if kind == "LoKr":
                missing = _lokr_missing(layer.tensors)
            if missing:
                reason = f"{layer.source} has no {' or '.join(_MATRIX_NAMES.get(m, m.strip('.')) for m in missing)}"
        if reason is not None:
            unplaced.update({key: reason for key in layer.keys.values()})
        else:
            layers.append(layer)
    return layers


def _file_format(state_dict, namings: list[str], groups: dict[str, _Group]) -> str:
    main = max(set(namings), key=namings.count) if namings else "unknown"
    peft = any(_PEFT_SUFFIX.search(k) for k in state_dict)
    fmt = {"ldm": "comfyui", "comfyui": "comfyui", "kohya": "kohya", "lycoris": "lycoris", "diffusers": "diffusers",
           "diffsynth": "diffsynth"}.get(main, "unknown")
    if peft and fmt in ("comfyui", "diffusers"):
        fmt += "-peft"
    if fmt == "unknown" and any(g.layer.part == "clip" for g in groups.values()):
        fmt = "kohya" if any(g.layer.source.startswith("lora_te") for g in groups.values()) else "diffusers"
    return fmt


def infer_base(state_dict: dict[str, torch.Tensor]) -> str:
    """The base ("sd15"/"sdxl") whose standard UNet places the most of the file's tensors; ties go to the
    cross-attention width, then to SDXL (Kolors, this pack's main model, is SDXL-shaped)."""
    counts = {}
    for base in layout.BASES:
        key_map = layout.standard_key_map(base, kolors=base == "sdxl")
        groups, _, _ = _group(state_dict, key_map, {}, base)
        counts[base] = sum(1 for g in groups.values() if g.layer.part == "unet" and not g.conflict)
    best = max(counts.values())
    leaders = [b for b, c in counts.items() if c == best]
    if len(leaders) == 1:
        return leaders[0]
    return _context_dim_base(state_dict) or "sdxl"


def _context_dim_base(state_dict: dict[str, torch.Tensor]) -> str | None:
    """SD1.5 cross-attention reads 768-wide text features, SDXL (and Kolors) 2048-wide."""
    for key, tensor in state_dict.items():
        split = _split_known(key)
        if split and _canonical_suffix(split[1]) == _DOWN and re.search(
                r"attn2[._](processor[._])?to_[kv]$", split[0]):
            return {768: "sd15", 1024: "sd15", 2048: "sdxl"}.get(tensor.shape[1])
    return None
