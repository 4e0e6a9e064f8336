"""Run a Python snippet inside the embedded ComfyUI's import world (its modules, ``--cpu``), in a subprocess, so the
test process never imports ComfyUI. The snippet writes its answer with ``answer(obj)`` (JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from devkit.comfy_server import COMFY_DIR

_PRELUDE = """
import json, sys
sys.argv = ["aesthete-test", "--cpu"]  # ComfyUI reads its device from the command line
import comfy.options
comfy.options.enable_args_parsing()
def answer(obj):
    sys.stdout.write("\\n@@RESULT@@" + json.dumps(obj))
"""


def run_in_comfy(snippet: str, timeout: float = 300) -> object:
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(snippet)], capture_output=True, text=True,
                          cwd=COMFY_DIR, env=dict(os.environ, PYTHONPATH=str(COMFY_DIR)), timeout=timeout)
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        raise AssertionError(f"snippet failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])
