"""Reading tensors from model files safely. safetensors files hold only tensors; pickled files (.bin, .ckpt, .pt,
.pth) are only ever opened with ``torch.load(weights_only=True)``, whose unpickler refuses every object other than
tensors and plain containers, so a file crafted to run code when unpickled is refused instead of run."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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


@dataclass
class LoadReport:
    """What :func:`load_into_module` could not place: keys no module of the model owns (``unexpected``), weights the
    model has that no key gave (``missing``), and the modules' own errors (a shape that does not fit, for one)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.errors)


def load_into_module(module: torch.nn.Module, keys: Iterable[str], take: Callable[[str], torch.Tensor]) -> LoadReport:
    """Load the weights named ``keys`` into ``module``, reading each with ``take(key)`` just before the submodule
    that owns it loads it, so no more than one submodule's tensors are held beside the model (a whole-file
    ``load_state_dict`` first reads every tensor).

    Each submodule loads through its own ``_load_from_state_dict``, exactly as ``load_state_dict`` would call it: a
    layer that creates its weights only when they are loaded (ComfyUI's DynamicVRAM operations create ``Linear``
    layers with ``weight=None`` and placeholder ``Embedding`` weights) loads the same way as under ``load_state_dict``.
    The check is ``load_state_dict``'s strict one; nothing is raised here, the caller words the error."""
    modules = dict(module.named_modules())
    owned: dict[str, list[str]] = {}
    report = LoadReport()
    for key in keys:
        owner = key.rpartition(".")[0]
        if owner in modules:
            owned.setdefault(owner, []).append(key)
        else:
            report.unexpected.append(key)
    with torch.no_grad():
        for path, submodule in modules.items():
            local = {key: take(key) for key in owned.get(path, ())}
            submodule._load_from_state_dict(local, f"{path}." if path else "", {}, True, report.missing,
                                            report.unexpected, report.errors)
            del local
    return report
