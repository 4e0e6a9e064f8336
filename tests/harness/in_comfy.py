"""Call a test's function inside the embedded ComfyUI's import world (its modules, ``--cpu``), in a subprocess, so the
test process never imports ComfyUI.

``run_in_comfy(function, *args)`` returns ``function(*args)`` computed in a fresh ``python -m harness.in_comfy``:
``function`` is a module-level function of a test file or harness module (linted like any other code), which imports
ComfyUI and the pack's nodes inside its body, takes JSON arguments (paths as ``str``) and returns JSON. The child
imports the function's module, with ComfyUI's folder, ``tests/`` and the repository root on ``sys.path`` (``harness``
and ``devkit`` imports work)."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from devkit.comfy_server import COMFY_DIR

TESTS = Path(__file__).resolve().parents[1]
RESULT_MARK = "@@RESULT@@"


def run_in_comfy(function: Callable, *args, timeout: float = 300):
    """``function(*args)`` inside ComfyUI's import world; raises AssertionError with the child's output if it fails."""
    if "." in function.__qualname__:
        raise ValueError(f"{function.__qualname__}: run_in_comfy calls module-level functions only")
    call = {"file": inspect.getsourcefile(function), "function": function.__name__, "args": list(args)}
    # ComfyUI's folder first: its top-level modules (comfy, nodes, folder_paths...) win over anything in tests/ or the
    # repository root (whose devkit the test files import)
    path = os.pathsep.join([str(COMFY_DIR), str(TESTS), str(TESTS.parent)])
    proc = subprocess.run([sys.executable, "-m", "harness.in_comfy"], input=json.dumps(call), capture_output=True,
                          text=True, cwd=COMFY_DIR, env=dict(os.environ, PYTHONPATH=path), timeout=timeout)
    if proc.returncode != 0 or RESULT_MARK not in proc.stdout:
        raise AssertionError(f"{function.__name__} failed in ComfyUI ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.rsplit(RESULT_MARK, 1)[1])


def _call_from_stdin() -> None:
    call = json.load(sys.stdin)
    sys.argv = ["aesthete-test", "--cpu"]  # ComfyUI reads its device from the command line
    import comfy.options

    comfy.options.enable_args_parsing()
    result = getattr(_module_of(Path(call["file"])), call["function"])(*call["args"])
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result))


def _module_of(file: Path):
    """A harness module by its package name (its relative imports work); a test file, which is in no package (its
    folder may share a name with ComfyUI's own ``comfy``), from its path."""
    if file.is_relative_to(TESTS) and (file.parent / "__init__.py").exists():
        return importlib.import_module(".".join(file.relative_to(TESTS).with_suffix("").parts))
    spec = importlib.util.spec_from_file_location(f"in_comfy_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    _call_from_stdin()
