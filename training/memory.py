"""Peak memory of a run's phases (encoding, training, validation), measured by the pack itself: CUDA's peak
allocation on a GPU, the process's peak resident memory (VmHWM) on the CPU, read, never reset (the benchmarks, which
own their processes, reset VmHWM with :func:`reset_resident_peak`). No ComfyUI."""

from __future__ import annotations

import ctypes
import logging
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("aesthete.training")

GIB = 1024 ** 3


def process_status(field: str, pid: int | str = "self") -> int:
    """A memory field of a process's /proc status (VmRSS, VmHWM, RssAnon, RssFile...), in bytes; 0 where it is
    missing (no /proc). ``pid``: this process, or another one (a server the benchmarks started)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
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


HOLD_FREED_MEMORY = "AESTHETE_HOLD_FREED_MEMORY"  # =1 opts in to steady_step_memory


@contextmanager
def steady_step_memory(device: torch.device | str = "cpu") -> Iterator[bool]:
    """Opt-in (``AESTHETE_HOLD_FREED_MEMORY=1`` in the environment), training on the CPU only: keep the memory a
    training step frees for the next step. glibc hands blocks above its threshold (32 MiB at most) back to the OS when
    freed, so every step can take a conv's weight-sized buffers afresh from the OS (21,600 page faults a step on the
    medium Kolors; the benchmark prints the faults per step). Inside, glibc keeps freed blocks up to 1 GiB; on leaving,
    fixed thresholds (the values glibc's own adaptive ones settle at) are set and everything free is returned.
    Opt-in because glibc's thresholds cannot be read, so what the process had before cannot be put back: setting them
    ends glibc's adaptive thresholds for the rest of the ComfyUI process.
    Yields whether it applies (elsewhere nothing changes)."""
    libc = _glibc() if torch.device(device).type == "cpu" and os.environ.get(HOLD_FREED_MEMORY) == "1" else None
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


def reset_resident_peak(pid: int | str = "self") -> bool:
    """Start a process's VmHWM again from its current resident size (Linux: ``5`` into clear_refs); False where it
    cannot."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PhaseMemory:
    """``with meter.phase("encoding"): ...``: the memory each phase of a run reached. It reads the process's peak (CUDA's
    peak allocated on a GPU, VmHWM on the CPU) and never resets it: those statistics belong to the whole ComfyUI
    process (other nodes and tools read them), and neither can be put back once reset. So a phase's figure is the
    process's peak when the phase ended if the phase raised it, else "at most" the peak it ended under. Phases may nest
    (validation inside training)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.peaks: dict[str, int] = {}  # the process's peak when each phase (last) ended
        self.raised: dict[str, bool] = {}  # whether the phase raised the process's peak
        self.starts: dict[str, int] = {}  # the memory in use when each phase first began

    def _peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return resident_peak()

    def _now(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else resident_now()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.starts.setdefault(name, self._now())
        before = self._peak()
        try:
            yield
        finally:
            after = self._peak()
            self.peaks[name] = max(self.peaks.get(name, 0), after)
            self.raised[name] = self.raised.get(name, False) or after > before

    def describe(self) -> str:
        """``memory (CUDA peak allocated, whole process): encoding 1.20 GiB (+0.80), training 3.40 GiB (+0.20),
        validation at most 3.40 GiB``: the peak each phase reached, in brackets its rise over the memory in use when
        it began; "at most" where the phase stayed under a peak reached before it."""
        what = "CUDA peak allocated" if self.cuda else "peak resident"
        parts = []
        for name, peak in self.peaks.items():
            if self.raised[name]:
                parts.append(f"{name} {peak / GIB:.2f} GiB (+{max(0, peak - self.starts[name]) / GIB:.2f})")
            else:
                parts.append(f"{name} at most {peak / GIB:.2f} GiB")
        return f"memory ({what}, whole process): {', '.join(parts)}"
