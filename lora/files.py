"""Reading LoRA files safely and writing them atomically.

Pickle-based files (.ckpt, .pt, .bin, .pth) are only opened with ``torch.load(weights_only=True)``: its
unpickler accepts tensors, numbers, strings and plain containers and refuses any other global, so a file
crafted to run code when unpickled is rejected instead of run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open

from ..common.files import write_safetensors
from ..common.tensors import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, TensorFileError, load_pickle, read_safetensors
from ..common.paths import path_inside


LORA_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
# containers that training frameworks wrap the tensors in (Lightning, DeepSpeed, older trainers)
_WRAPPER_KEYS = ("state_dict", "module", "model", "lora", "params")


class LoraFileError(ValueError):
    """The file cannot be read as a LoRA; the message names the file and what to do."""


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a LoRA file (.safetensors, or .ckpt/.pt/.pth/.bin read with weights_only=True)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise LoraFileError(f"{path}: no such file")
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return read_safetensors(path, "save it again with the tool that made it"), metadata
        except (TensorFileError, SafetensorError, OSError) as e:
            raise LoraFileError(str(e) if isinstance(e, TensorFileError) else
                                f"{path}: not a readable safetensors file ({e})") from e
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path), {}
    raise LoraFileError(f"{path}: unsupported extension {suffix!r}; use one of {', '.join(LORA_SUFFIXES)}")


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = load_pickle(path, "Convert it to .safetensors with the tool that made it, or with `aesthete convert-lora` "
                                "on a machine where you trust the file.", "it is not a readable PyTorch checkpoint")
    except TensorFileError as e:
        raise LoraFileError(str(e)) from e
    tensors = _find_tensors(obj)
    if not tensors:
        raise LoraFileError(f"{path}: the checkpoint holds no tensors")
    return tensors


def _find_tensors(obj) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} dict inside a checkpoint, unwrapping ``state_dict``-style containers."""
    if not isinstance(obj, dict):
        return {}
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors:
        return tensors
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            found = _find_tensors(obj[key])
            if found:
                return found
    return {}


def numbered_path(root: str | os.PathLike, prefix: str, suffix: str = ".safetensors") -> Path:
    """The first free ``<prefix>_NNNNN<suffix>`` inside ``root`` (the folders of the prefix are created); a prefix
    that leaves ``root`` is refused (``common.paths.path_inside``)."""
    base = path_inside(root, prefix, what="save name")
    base.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(base.name) + r"_(\d{5})" + re.escape(suffix) + "$")
    taken = [int(m[1]) for p in base.parent.iterdir() if (m := pattern.match(p.name))]
    return base.with_name(f"{base.name}_{max(taken, default=0) + 1:05d}{suffix}")


def diffsynth_base(base_model: str) -> str | None:
    """The converter's base name for ComfyUI's model config name (Kolors is SDXL-architecture)."""
    name = base_model.lower()
    if "sdxl" in name or "kolors" in name:
        return "sdxl"
    return "sd15" if name in ("sd15", "sd15_instructpix2pix") else None


# metadata key of a trained LoRA: the architecture of the UNet it was trained on (JSON of ComfyUI's unet_config
# fields that fix module names), so a copy in another tool's naming fits UNets other than the standard ones
UNET_METADATA_KEY = "aesthete.unet"


def unet_metadata(unet_config: dict) -> str:
    """The ``aesthete.unet`` value for ComfyUI's ``unet_config`` of the trained model."""
    fields = ("num_res_blocks", "transformer_depth", "transformer_depth_middle", "channel_mult", "adm_in_channels")
    return json.dumps({k: unet_config[k] for k in fields if k in unet_config}, sort_keys=True, default=list)


def write_converted_copy(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike,
                         to: str) -> tuple[Path, dict[str, str]]:
    """A copy of a ComfyUI-format LoRA in ``to``'s key format ("diffsynth" or "diffusers") at ``path``
    (atomically). Returns the path and the metadata written (the converter's ``aesthete.dropped_keys`` counts what
    the target cannot hold). A diffusers copy follows the trained UNet's own architecture when the metadata
    records it (``aesthete.unet``); a DiffSynth 1.x copy always uses DiffSynth's SD1.5/SDXL block list."""
    from . import layout
    from .convert import convert_lora  # imported late: the conversion is optional

    base = diffsynth_base(metadata.get("aesthete.base_model", ""))
    unet = None
    if to == "diffusers" and metadata.get(UNET_METADATA_KEY):
        unet = layout.architecture_from_unet_config(json.loads(metadata[UNET_METADATA_KEY]), "trained")
    converted, extra = convert_lora(dict(tensors), to=to, base=base if unet is None else None, unet=unet)
    meta = {**metadata, **{k: str(v) for k, v in (extra or {}).items()}}
    return write_safetensors(path, converted, meta), meta
