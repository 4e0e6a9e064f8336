"""Installing the pack never downgrades what a user's environment already has: what ``pip install`` would do here,
asked of pip itself (``--dry-run``, its JSON report; pip reads the package index, tens of seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(*args: str) -> list[dict]:
    """What `pip install` would install here, without installing it (pip's JSON report)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                           "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip dry run failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)["install"]


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_installing_requirements_downgrades_nothing_and_keeps_torch_and_transformers():
    """Whatever this environment holds: pip would downgrade no installed package and would not replace torch or
    transformers (a newer release of some unrelated tool pip may pick is not the pack's doing)."""
    from packaging.version import Version

    would_install = _dry_run("-r", str(ROOT / "requirements.txt"))
    replaced = {i["metadata"]["name"].lower().replace("_", "-"): (_installed_version(i["metadata"]["name"]),
                                                                   i["metadata"]["version"])
                for i in would_install if _installed_version(i["metadata"]["name"]) is not None}
    downgrades = {n: v for n, v in replaced.items() if Version(v[1]) < Version(v[0])}
    assert downgrades == {}, f"installing requirements.txt would downgrade: {downgrades}"
    assert not {"torch", "transformers"} & set(replaced), f"requirements.txt would replace {replaced}"


def test_predictor_package_installs_without_touching_transformers():
    if int(metadata.version("transformers").split(".")[0]) < 5:
        pytest.skip("this test is about users on transformers 5")
    # what install.py runs: only the package itself
    names = [i["metadata"]["name"].lower() for i in _dry_run("--no-deps", "--force-reinstall",
                                                            "simple-aesthetics-predictor==0.1.2")]
    assert names == ["simple-aesthetics-predictor"]
    # and why: with its declared requirements, pip would downgrade transformers below 5
    with_deps = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                 for i in _dry_run("--force-reinstall", "simple-aesthetics-predictor==0.1.2",
                                   *(f"{name}=={_installed_version(name)}" for name in ("torch", "torchvision")
                                     if _installed_version(name)))}
    assert int(with_deps["transformers"].split(".")[0]) < 5
