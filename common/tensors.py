"""Reading tensors from model files safely. safetensors files hold only tensors; pickled files (.bin, .ckpt, .pt,
.pth) are only ever opened with ``torch.load(weights_only=True)``, whose unpickler refuses every object other than
tensors and plain containers, so a file crafted to run code when unpickled is refused instead of run."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class TensorFileError(ValueError):
    """A model file cannot be read; the message names the file, why, and what to do (the caller's ``advice``)."""


def read_safetensors(path: str | os.PathLike, advice: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise TensorFileError(f"{path}: not a readable safetensors file ({e}); {advice}") from e


def load_pickle(path: str | os.PathLike, unsafe_advice: str, broken_advice: str):
    """What a pickled checkpoint holds, read with weights_only (memory-mapped for torch's zip format)."""
    path = Path(path)
    try:
        if _is_zip(path):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise TensorFileError(f"{path}: refused to unpickle: the file holds objects other than tensors and plain "
                              f"containers, and loading them could run code ({str(e).splitlines()[0]}). "
                              f"{unsafe_advice}") from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TensorFileError(f"{path}: cannot be read ({why}); {broken_advice}") from e


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False
