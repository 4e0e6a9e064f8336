"""Reading tensors from model files safely. safetensors files hold only tensors; pickled files (.bin, .ckpt, .pt,
.pth) are only ever opened with ``torch.load(weights_only=True)``, whose unpickler refuses every object other than
tensors and plain containers, so a file crafted to run code when unpickled is refused instead of run."""

from __future__ import annotations

import json
import os
import pickle
import struct
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


def read_safetensors(path: str | os.PathLike, advice: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file. ``dtype``: floating tensors come cast to it. A file already in that
    precision is mapped as it is (no copy); one in another precision is read and cast one tensor at a time through
    one buffer, so the file's tensors never sit in memory beside their cast copies (mapping it and casting the whole
    dict holds both: 1.4 GB more at the peak for a 2 GB fp16 ViT-H read as fp32)."""
    try:
        if dtype is not None:
            header = _safetensors_header(path)
            stored = {_DTYPES.get(info["dtype"]) for key, info in header.items() if key != "__metadata__"}
            if any(t is not None and t.is_floating_point and t != dtype for t in stored):
                return _read_cast(path, header, dtype)
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise TensorFileError(f"{path}: not a readable safetensors file ({e}); {advice}") from e


_DTYPES = {name: getattr(torch, attr) for name, attr in (
    ("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"), ("I16", "int16"), ("U16", "uint16"), ("I32", "int32"),
    ("U32", "uint32"), ("I64", "int64"), ("U64", "uint64"), ("F16", "float16"), ("BF16", "bfloat16"),
    ("F32", "float32"), ("F64", "float64"), ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"))
    if hasattr(torch, attr)}


def _safetensors_header(path: str | os.PathLike) -> dict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > os.fstat(f.fileno()).st_size - 8:
            raise ValueError("header longer than the file")
        return json.loads(f.read(size))


def _read_cast(path: str | os.PathLike, header: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    items = [(key, info) for key, info in header.items() if key != "__metadata__"]
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        data = 8 + size
        largest = max((info["data_offsets"][1] - info["data_offsets"][0] for _, info in items), default=0)
        buffer = torch.empty(largest, dtype=torch.uint8)
        for key, info in items:
            begin, end = info["data_offsets"]
            f.seek(data + begin)
            chunk = buffer[:end - begin]
            if f.readinto(memoryview(chunk.numpy())) != end - begin:
                raise ValueError(f"{key} ends past the end of the file")
            tensor = chunk.view(_DTYPES[info["dtype"]]).reshape(info["shape"])
            out[key] = tensor.to(dtype if tensor.is_floating_point() else tensor.dtype, copy=True)
    return out


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
