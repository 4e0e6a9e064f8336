"""The suite's folders say what their tests start and mark them so (tests/conftest.py): tests/comfy and tests/browser
are ``comfy`` (tests/browser also ``browser``), tests/install ``install``, tests/ray ``ray``, tests/full_size ``slow``,
tests/processes ``process``, tests/reference ``reference``; tests/unit starts none of them. So `pytest -m "not comfy"`
starts no ComfyUI server, whatever a test file remembers to declare. (This file runs pytest itself, so it is not in
tests/unit either.)"""

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


def test_unit_tests_start_no_server_cluster_or_install():
    """A unit test that declared such a mark (a Ray cluster, a ComfyUI server, an install, a full-size model, a fresh
    process, a reference package) belongs in its folder."""
    assert collected("-m", "comfy or ray or install or browser or slow or process or reference", "tests/unit") == []
    assert collected("tests/unit")  # and the folder is not empty


def test_reference_tests_are_marked_and_none_needs_the_server():
    """Every test comparing a scorer to a reference package sits in tests/reference and is marked so."""
    assert collected("-m", "not reference", "tests/reference") == []
    assert collected("-m", "comfy", "tests/reference") == []
    assert collected("tests/reference")
