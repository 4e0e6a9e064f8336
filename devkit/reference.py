"""Run a reference implementation that needs other package versions than the pack's environment.

A reference (DiffSynth-Studio 1.1.9 needs transformers<5, for example) is listed in ``tests/reference/<name>.txt``;
``scripts/setup.sh --test`` installs that list with ``pip --target .cache/reference/<name> --no-deps``. A child
process of the pack's own Python with that folder first on ``PYTHONPATH`` then imports the reference's versions
and shares everything else (torch above all) with ``.venv``. Nothing is installed into ``.venv``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import REPO
from .child import RESULT_MARK, read_result

REFERENCE_DIR = REPO / ".cache" / "reference"


class ReferenceMissing(RuntimeError):
    """The reference folder was not built: `make setup-test` builds it."""


def reference_folder(name: str) -> Path:
    folder = REFERENCE_DIR / name
    if not (REPO / "tests" / "reference" / f"{name}.txt").is_file():
        raise ValueError(f"no tests/reference/{name}.txt")
    if not any(folder.glob(".built-*")):
        raise ReferenceMissing(f"{folder} is not built; run `make setup-test` (scripts/setup.sh --test)")
    return folder


def reference_env(name: str) -> dict[str, str]:
    """The environment of a child process that imports reference ``name``'s packages first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(reference_folder(name)), str(REPO.parent)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def run_reference(name: str, script: Path | str, *args: str, timeout: float = 900) -> dict:
    """Run ``script`` (a file) with reference ``name`` first on the path; it prints ``@@RESULT@@`` followed by
    JSON on its last line, which is returned. A failure raises with the child's stderr."""
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=reference_env(name), cwd=str(REPO))
    if proc.returncode != 0 or RESULT_MARK not in proc.stdout:
        raise AssertionError(f"reference {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return read_result(proc.stdout)
