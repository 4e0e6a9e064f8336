"""The suite's folders mark their tests (tests/conftest.py): everything under tests/comfy and tests/browser is
``comfy`` (and tests/browser ``browser``), so `pytest -m "not comfy"` starts no ComfyUI server, whatever a test
file remembers to declare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def collected(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]  # 5: nothing selected
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_not_comfy_selects_nothing_that_needs_the_server():
    assert collected("-m", "not comfy", "tests/comfy", "tests/browser") == []
