"""comfy-cli, the Comfy Registry's command line (`comfy node validate`, `comfy node pack`), in a virtual environment of
its own under .cache/comfy-cli, built on first use (about 20 s): its many dependencies never touch .venv."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from devkit import REPO

CLI_VENV = REPO / ".cache" / "comfy-cli"
# pinned, so that what the registry checks cannot change under the tests; trove-classifiers and setuptools let a test
# validate pyproject.toml the way a build does
PINS = ("comfy-cli==1.23.0", "trove-classifiers==2026.9.21.13", "setuptools>=68")


def cli_python() -> Path:
    """The Python of the comfy-cli environment, creating it when it is missing or its pins changed."""
    stamp = CLI_VENV / f".aesthete-{hashlib.sha256(' '.join(PINS).encode()).hexdigest()[:16]}"
    python = CLI_VENV / "bin" / "python"
    if not stamp.exists():
        shutil.rmtree(CLI_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(CLI_VENV)], check=True)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"installing {' '.join(PINS)} into {CLI_VENV} failed:\n{proc.stderr[-3000:]}")
        stamp.touch()
    return python


def comfy(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``comfy <args>`` (non-interactive, no telemetry, plain output; its config lives inside its venv)."""
    cli_python()
    home = CLI_VENV / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), DO_NOT_TRACK="1", COMFY_NO_TELEMETRY="1")
    return subprocess.run([str(CLI_VENV / "bin" / "comfy"), "--skip-prompt", "--no-json", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def pack(dest: Path) -> Path:
    """The archive ``comfy node pack`` makes of the repository (its git-tracked files minus .comfyignore), moved to
    ``dest``. comfy-cli always writes it as node.zip in the repository root (git-ignored)."""
    made = REPO / "node.zip"
    made.unlink(missing_ok=True)
    proc = comfy("node", "pack")
    if proc.returncode != 0 or not made.exists():
        raise RuntimeError(f"comfy node pack failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(made, dest)
    return dest


def packed_names() -> list[str]:
    """The file names the published archive would hold."""
    with tempfile.TemporaryDirectory(prefix="aesthete-pack-") as tmp:
        with zipfile.ZipFile(pack(Path(tmp) / "node.zip")) as z:
            return sorted(z.namelist())
