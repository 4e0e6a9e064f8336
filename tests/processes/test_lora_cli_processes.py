"""``aesthete convert-lora`` as a user runs it: the console entry point in a fresh Python (torch imported again); the
in-process command tests are tests/unit/test_lora_cli.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth"


def test_console_entry_point(tmp_path):
    out = tmp_path / "o.safetensors"
    proc = subprocess.run([sys.executable, "-m", "aesthete.cli", "convert-lora", str(FIXTURES / "tiny_sd_lora.ckpt"),
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "16 of 16 tensors placed" in proc.stderr and out.exists()
