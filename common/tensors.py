"""Reading tensors from model files safely. safetensors files hold only tensors; pickled files (.bin, .ckpt, .pt,
.pth) are only ever opened with ``torch.load(weights_only=True)``, whose unpickler refuses every object other than
tensors and plain containers, so a file crafted to run code when unpickled is refused instead of run.
:class:`LazyWeights` reads a model's tensors one at a time, as a loader copies them in."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
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


def read_tensor_file(path: str | os.PathLike, unsafe_advice: str, broken_advice: str) -> dict[str, torch.Tensor]:
    """All tensors of a weight file: safetensors, or a pickle (weights_only) that holds a dictionary of tensors."""
    path = Path(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        return read_safetensors(path, broken_advice)
    obj = load_pickle(path, unsafe_advice, broken_advice)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TensorFileError(f"{path}: expected a dictionary of tensors; {broken_advice}")
    return obj


# safetensors dtype names -> torch dtypes
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def safetensors_header(path: str | os.PathLike, advice: str) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """key -> (dtype, shape, first byte, end byte) of every tensor of a safetensors file, from its header alone
    (no tensor is read); a header that does not fit the file is a :class:`TensorFileError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 2 <= header_len <= size - 8:
                raise ValueError("the header length does not fit the file")
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        index = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"{key}: dtype {info['dtype']} is not supported here")
            if data_start + end > size:
                raise ValueError(f"{key} lies past the end of the file")
            index[key] = (dtype, list(info["shape"]), data_start + begin, data_start + end)
        return index
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise TensorFileError(f"{path}: not a readable safetensors file ({e}); {advice}") from e


REDOWNLOAD = "it may be truncated, download it again"
UNSAFE_PICKLE = "Use the model's safetensors file, or download the file again from its publisher"


class LazyWeights(Mapping):
    """The tensors of a model's weight files, each read from disk only when taken.

    ``weights[key]`` is a meta tensor (shape and dtype, no data), enough to size and build a model; ``take(key)``
    reads the real tensor and forgets the key. A loader that copies each tensor into its model as it takes it
    never holds more than one file tensor, where reading the whole file first holds all of them beside the model
    (for an fp16 file loaded in fp32, half the model's size again). safetensors files are read with plain file
    reads, not memory-mapped: every page of a mapping that has been read counts in the process's memory until the
    whole file is closed. Pickled files are read whole (:func:`read_tensor_file`) and handed out from memory.
    A file that cannot be read is a :class:`TensorFileError` naming it, with ``broken_advice`` (``unsafe_advice``
    for a pickle that would run code). ``readers``: other formats by file suffix, each a function of the path giving an
    object with ``shapes`` ({key: shape}), ``dtype(key)`` and ``tensor(key)`` (read then; kolors.gguf_file's, for
    one)."""

    def __init__(self, files: Iterable[str | os.PathLike], broken_advice: str = REDOWNLOAD,
                 unsafe_advice: str = UNSAFE_PICKLE, readers: Mapping[str, Callable[[Path], Any]] | None = None):
        self._meta: dict[str, torch.Tensor] = {}
        self._where: dict[str, tuple[Path, int, int]] = {}  # key -> (file, first byte, end byte)
        self._loaded: dict[str, torch.Tensor] = {}
        self._sources: dict[str, Any] = {}  # key -> the reader's file object it is read from
        self._advice = broken_advice
        for path in map(Path, files):
            if readers and path.suffix in readers:
                source = readers[path.suffix](path)
                for key, shape in source.shapes.items():
                    self._meta[key] = torch.empty(shape, dtype=source.dtype(key), device="meta")
                    self._sources[key] = source
            elif path.suffix in SAFETENSORS_SUFFIXES:
                for key, (dtype, shape, begin, end) in safetensors_header(path, broken_advice).items():
                    self._meta[key] = torch.empty(shape, dtype=dtype, device="meta")
                    self._where[key] = (path, begin, end)
            else:
                for key, tensor in read_tensor_file(path, unsafe_advice, broken_advice).items():
                    self._loaded[key] = tensor
                    self._meta[key] = tensor.to("meta")

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._meta[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta)

    def __len__(self) -> int:
        return len(self._meta)

    def take(self, key: str) -> torch.Tensor:
        """The real tensor of ``key``, read now; the key is gone afterwards."""
        meta = self._meta.pop(key)
        if key in self._loaded:
            return self._loaded.pop(key)
        if key in self._sources:
            return self._sources.pop(key).tensor(key)
        path, begin, end = self._where.pop(key)
        tensor = torch.empty(meta.shape, dtype=meta.dtype)
        if end > begin:
            with open(path, "rb") as f:
                f.seek(begin)
                if f.readinto(tensor.view(-1).view(torch.uint8).numpy()) != end - begin:
                    raise TensorFileError(f"{path}: ends inside {key}; {self._advice}")
        return tensor


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
