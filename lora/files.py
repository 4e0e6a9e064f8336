"""Reading LoRA files safely and writing them atomically.

Pickle-based files (.ckpt, .pt, .bin, .pth) are only opened with ``torch.load(weights_only=True)``: its
unpickler accepts tensors, numbers, strings and plain containers and refuses any other global, so a file
crafted to run code when unpickled is rejected instead of run.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from ..common.files import write_safetensors  # noqa: F401 - the LoRA area's writer is the pack's one

log = logging.getLogger("aesthete.lora")

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
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
            return load_file(str(path)), metadata
        except (SafetensorError, OSError) as e:
            raise LoraFileError(f"{path}: not a readable safetensors file ({e})") from e
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path), {}
    raise LoraFileError(f"{path}: unsupported extension {suffix!r}; use one of {', '.join(LORA_SUFFIXES)}")


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as e:
        raise LoraFileError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain containers, and "
            f"loading them could run code ({str(e).splitlines()[0]}). Convert it to .safetensors with the tool "
            f"that made it, or with `aesthete convert-lora` on a machine where you trust the file.") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise LoraFileError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    tensors = _find_tensors(obj)
    if not tensors:
        raise LoraFileError(f"{path}: the checkpoint holds no tensors")
    return tensors


def _torch_load(path: Path):
    """weights_only loading; memory-mapped for torch's zip format (no copy of the tensors), plain for legacy files."""
    if zipfile.is_zipfile(path):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return torch.load(str(path), map_location="cpu", weights_only=True)


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
