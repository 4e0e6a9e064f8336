"""Peak memory of a run's phases (encoding, training, validation), measured by the pack itself: CUDA's peak
allocation on a GPU, the process's peak resident memory (VmHWM, reset per phase) on the CPU. No ComfyUI."""

from __future__ import annotations

import ctypes
import logging
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("aesthete.training")

GIB = 1024 ** 3
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def process_status(field: str) -> int:
    """A memory field of this process's /proc status (VmRSS, VmHWM, RssAnon, RssFile...), in bytes; 0 where it is
    missing (no /proc)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resident_peak() -> int:
    """This process's peak resident memory in bytes since it started or since :func:`reset_resident_peak`."""
    # ru_maxrss: kilobytes on Linux; never reset
    return process_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resident_now() -> int:
    """This process's resident memory now, in bytes (0 where /proc is missing)."""
    return process_status("VmRSS")


# glibc's mallopt parameters; while training, blocks up to _HOLD stay in the process when freed; afterwards the values
# glibc's own adaptive thresholds settle at (its DEFAULT_MMAP_THRESHOLD_MAX, and twice it) are set back
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HOLD = 1 << 30
_SETTLED_MMAP, _SETTLED_TRIM = 32 << 20, 64 << 20


def _glibc():
    """The C library where it is glibc (whose malloc this tunes), else None (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def give_back_free_memory() -> bool:
    """Return the memory the C allocator holds free to the OS (glibc's malloc_trim); False where it cannot."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


@contextmanager
def steady_step_memory() -> Iterator[bool]:
    """Keep the memory a training step frees for the next step. glibc hands blocks above its threshold (32 MiB at
    most) back to the OS when freed, so every step took a conv's weight-sized buffers afresh from the OS: 21,600
    page faults (84 MiB) a step on the medium Kolors, where the diffusers + peft step measured the same way had
    almost none after its first (benchmarks/bench_training_kolors.py prints the faults per step). Inside, glibc
    keeps freed blocks up to 1 GiB; on leaving, its settled thresholds come back and everything free is returned to
    the OS.
    Yields whether it applies (glibc only; elsewhere nothing changes)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.malloc_trim(0)  # start from what the steps need: what encoding freed goes back first
    libc.mallopt(_M_MMAP_THRESHOLD, _HOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _HOLD)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP)
        libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM)
        libc.malloc_trim(0)


def reset_resident_peak() -> bool:
    """Start VmHWM again from the current resident size (Linux: ``5`` into clear_refs); False where it cannot."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PhaseMemory:
    """``with meter.phase("encoding"): ...``: the peak memory of each phase. Phases may nest (validation inside
    training); the memory used while an inner phase runs counts for the inner one only."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.peaks: dict[str, int] = {}
        self.starts: dict[str, int] = {}  # the memory in use when each phase first began
        self._active: list[str] = []
        self.resettable = True

    def _peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return resident_peak()

    def _now(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else resident_now()

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not reset_resident_peak():
            self.resettable = False

    def _fold(self) -> None:
        """Credit the peak since the last switch to the phase running now, and start measuring anew."""
        if self._active:
            name = self._active[-1]
            self.peaks[name] = max(self.peaks.get(name, 0), self._peak())
        self._reset()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._fold()
        self.starts.setdefault(name, self._now())
        self._active.append(name)
        try:
            yield
        finally:
            self._fold()
            self._active.pop()

    def describe(self) -> str:
        """``memory (CUDA peak allocated): encoding 1.20 GiB (+0.80), training 3.40 GiB (+0.20)``: each phase's
        peak, and in brackets its rise over the memory in use when the phase began."""
        what = "CUDA peak allocated" if self.cuda else "peak resident, whole process"
        if not self.cuda and not self.resettable:
            what += ", since start: the peak could not be reset per phase"
        parts = ", ".join(f"{name} {peak / GIB:.2f} GiB (+{max(0, peak - self.starts.get(name, peak)) / GIB:.2f})"
                          for name, peak in self.peaks.items())
        return f"memory ({what}): {parts}"
