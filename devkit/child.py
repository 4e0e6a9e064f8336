"""The benchmarks' one way to run a contender in a process of its own, and to read a process's memory.

A benchmark runs each contender in a fresh process so that its peak memory is its own and no cache or allocator
state carries over. The parent calls ``run_child("benchmarks.bench_x", "--worker", ...)``: the module runs with the
pack's Python from the repository root, and its worker ends with ``print_result(figures)``, a line of JSON behind
``RESULT_MARK`` on stdout (the last such line counts: ComfyUI and libraries print there too). A child that fails
raises :class:`ChildFailed` with its exit status and the tail of its stderr.

Memory comes from the process's /proc status (``aesthete.training.memory.process_status``, the pack's one reader):
VmHWM is the peak resident size, VmRSS the size now. Never ``ru_maxrss``: in a child it starts from the parent's
resident size at the fork, so a contender smaller than its parent would report the parent's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping

from aesthete.training.memory import process_status

from . import REPO

RESULT_MARK = "@@RESULT@@"
MIB = 1024 ** 2


class ChildFailed(RuntimeError):
    """A child process exited with an error or printed no result; ``last_line`` is the last line of its stderr."""

    def __init__(self, what: str, returncode: int, stdout: str, stderr: str):
        lines = stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"]
        self.last_line = lines[-1]
        super().__init__(f"{what} failed (exit status {returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")


def run_child(module: str, *args: object, env: Mapping[str, str] | None = None, timeout: float | None = None):
    """``python -m module *args`` in a fresh process from the repository root (offline, unbuffered, plus ``env``);
    what its :func:`print_result` printed."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **(env or {})),
                          timeout=timeout)
    if proc.returncode != 0 or RESULT_MARK not in proc.stdout:
        raise ChildFailed(" ".join([module, *map(str, args)])[:300], proc.returncode, proc.stdout, proc.stderr)
    return read_result(proc.stdout)


def print_result(result) -> None:
    """The child's answer to :func:`run_child`: ``result`` as JSON on a line of its own."""
    sys.stdout.write(f"\n{RESULT_MARK}{json.dumps(result)}\n")
    sys.stdout.flush()


def read_result(stdout: str):
    """The JSON behind the last ``RESULT_MARK`` of a child's output."""
    return json.loads(stdout.rsplit(RESULT_MARK, 1)[1].strip().splitlines()[0])


def memory_mib(field: str = "VmHWM", pid: int | str = "self") -> float:
    """A memory field of a process's /proc status in MiB: VmHWM (peak resident, since the process started or since
    ``aesthete.training.memory.reset_resident_peak``), VmRSS (resident now), RssAnon, RssFile. ``pid``: this process
    or another (a ComfyUI server the benchmark started)."""
    return process_status(field, pid) / MIB


def enter_comfy(*flags: str) -> None:
    """Make this process (a benchmark's worker) one that imports the embedded ComfyUI as main.py does: its folder first
    on the path and as the working directory, and ``flags`` (``--cpu``, ``--use-pytorch-cross-attention``...) as its
    command line. Paths given to the worker must be absolute: the working directory changes."""
    from .comfy_server import COMFY_DIR

    sys.path.insert(0, str(COMFY_DIR))
    os.chdir(COMFY_DIR)
    sys.argv = [sys.argv[0], *flags]  # ComfyUI reads its device and options from the command line
    import comfy.options

    comfy.options.enable_args_parsing()
