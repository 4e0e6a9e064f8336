"""Weights parked on disk while a module waits: where a model runs on the CPU there is no second memory to offload
a text encoder or a VAE to, so their tensors' bytes are written once to a file and the module's tensors become
views of a private mapping of that file. The module computes exactly as before (a page comes back from the OS file
cache, or the disk, when it is touched), nothing is ever written back to the file (a write to a parked tensor
changes a private copy), and :meth:`ParkedWeights.release` hands the pages touched since back to the OS without
losing anything. No ComfyUI.

The file is deleted as soon as it is mapped where the OS allows it (Linux, macOS): its disk space is freed with the
module. On Windows it stays in the given folder until the process ends (ComfyUI empties its temp folder at start).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import mmap
import os
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("aesthete")

_ALIGN = 4096  # each storage starts on a page: any dtype is aligned, and release works page by page
_MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)  # Linux 5.4+: reclaim these pages now (never discards data)
_mappings: list[tuple[int, int, weakref.ref]] = []  # (address, length, mmap) of every parking still alive


@dataclass
class ParkedWeights:
    """What :func:`park_on_disk` moved: ``tensors`` tensors of ``nbytes`` bytes (``reused`` of them were parked
    before), ``kept`` tensors left in RAM (not on the CPU, or not plain tensors), ``path`` the file."""

    path: Path | None
    nbytes: int = 0
    tensors: int = 0
    reused: int = 0
    kept: int = 0
    _maps: list[mmap.mmap] = field(default_factory=list, repr=False)

    def release(self) -> bool:
        """Give the resident pages of the parked tensors back to the OS (they are read again when next touched).
        False where the OS cannot (not Linux)."""
        done = bool(self._maps) and sys.platform.startswith("linux")
        for mm in self._maps if done else ():
            done &= _madvise(mm, _MADV_PAGEOUT)
        return done

    def describe(self) -> str:
        kept = f", {self.kept} left in RAM" if self.kept else ""
        if not self.tensors:
            return f"already parked on disk ({self.reused} tensors{kept})" if self.reused else \
                f"has nothing to park on disk ({self.kept} tensors not on the CPU)"
        earlier = f", {self.reused} parked before" if self.reused else ""
        return f"parked on disk ({self.nbytes / 1024 ** 2:.0f} MiB, {self.tensors} tensors{earlier}{kept})"


def park_on_disk(module: nn.Module, folder: str | os.PathLike, *, name: str = "weights") -> ParkedWeights | None:
    """Move the CPU tensors of ``module`` (parameters and buffers) into a private mapping of a new file in
    ``folder``; returns None, with a warning logged, where the folder has no room or cannot be written (the module
    is then left as it was). Tensors parked by an earlier call stay where they are."""
    owners, kept, reused_maps, reused = _slots_to_park(module)
    storages = {a: slots[0][2].untyped_storage() for a, slots in owners.items()}
    sizes = {a: s.nbytes() for a, s in storages.items()}
    result = ParkedWeights(None, 0, 0, reused, kept, reused_maps)
    if not storages:
        return result
    written = _write_storages(Path(folder), name, storages, sizes)
    if written is None:
        return None
    path, offsets, mm = written
    _forget_file(path)
    if mm is None:
        return result
    for address, slots in owners.items():
        mapped = torch.frombuffer(mm, dtype=torch.uint8, count=sizes[address], offset=offsets[address]) \
            if sizes[address] else torch.tensor([], dtype=torch.uint8)
        for holder, key, t in slots:
            view = torch.empty(0, dtype=t.dtype).set_(mapped.untyped_storage(), t.storage_offset(), t.size(),
                                                      t.stride())
            holder[key] = nn.Parameter(view, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else view
            result.tensors += 1
    result.path, result.nbytes = path, sum(sizes.values())
    result._maps.append(mm)
    _mappings.append((_address(mm), len(mm), weakref.ref(mm)))
    return result


def _slots_to_park(module: nn.Module) -> tuple[dict[int, list[tuple[dict, str, torch.Tensor]]], int,
                                               list[mmap.mmap], int]:
    """The module's parkable tensors by storage address (the slots that use each storage), the number of tensors
    kept (not on the CPU, subclasses, quantized), the mappings of those already parked and their number."""
    owners: dict[int, list[tuple[dict, str, torch.Tensor]]] = {}
    kept = reused = 0
    reused_maps: list[mmap.mmap] = []
    for mod in module.modules():
        for slots in (mod._parameters, mod._buffers):
            for key, t in slots.items():
                if t is None:
                    continue
                if t.device.type != "cpu" or type(t.data) is not torch.Tensor or t.is_quantized:
                    kept += 1
                    continue
                address = t.untyped_storage().data_ptr()
                parked = _parked_mapping(address)
                if parked is not None:
                    reused += 1
                    if all(m is not parked for m in reused_maps):
                        reused_maps.append(parked)
                    continue
                owners.setdefault(address, []).append((slots, key, t))
    return owners, kept, reused_maps, reused


def _write_storages(folder: Path, name: str, storages: dict, sizes: dict[int, int]
                    ) -> tuple[Path, dict[int, int], mmap.mmap | None] | None:
    """Write the storages, each aligned, to a new file in ``folder`` and map it privately: the file, each storage's
    offset and the mapping (None for an empty file). None, with a warning, where it cannot be written."""
    total = sum(-(-n // _ALIGN) * _ALIGN for n in sizes.values())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < total + 256 * 1024 ** 2:
            log.warning("Aesthete: %s stays in RAM: %s has %.1f GiB free, parking it needs %.1f GiB", name, folder,
                        free / 1024 ** 3, total / 1024 ** 3)
            return None
        fd, tmp = tempfile.mkstemp(prefix=f".aesthete-parked-{name}-", suffix=".bin", dir=folder)
    except OSError as e:
        log.warning("Aesthete: %s stays in RAM: cannot write to %s (%s)", name, folder, e)
        return None
    path = Path(tmp)
    offsets: dict[int, int] = {}
    try:
        with os.fdopen(fd, "wb") as f:
            for address, storage in storages.items():
                offsets[address] = f.tell()
                if sizes[address]:
                    f.write(torch.tensor([], dtype=torch.uint8).set_(storage).numpy().data)
                f.write(b"\0" * (-f.tell() % _ALIGN))
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if total else None
    except OSError as e:
        path.unlink(missing_ok=True)
        log.warning("Aesthete: %s stays in RAM: writing %s failed (%s)", name, path, e)
        return None
    return path, offsets, mm


def _parked_mapping(address: int) -> mmap.mmap | None:
    """The live parking mapping that holds ``address``, if any (dead ones are dropped from the list)."""
    found = None
    for entry in list(_mappings):
        start, length, ref = entry
        mm = ref()
        if mm is None or mm.closed:
            _mappings.remove(entry)
        elif start <= address < start + length:
            found = mm
    return found


def _address(mm: mmap.mmap) -> int:
    view = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


def _madvise(mm: mmap.mmap, advice: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc.madvise(_address(mm), len(mm), advice) == 0
    except (OSError, AttributeError, ValueError):
        return False


def _forget_file(path: Path) -> None:
    """Delete the parked file now where a mapped file can be deleted; else when the process ends."""
    if os.name == "nt":
        atexit.register(_unlink_quietly, path)
        return
    _unlink_quietly(path)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # still mapped (Windows): ComfyUI's temp folder is emptied at its next start
        log.debug("Aesthete: %s not deleted (%s)", path, e)
