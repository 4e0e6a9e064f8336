"""The GPU check (benchmarks/gpu_check.py) is a script for a CUDA machine; its tiny mode runs the same code on the CPU
here, so the one command that proves the pack on a GPU does not rot between the sessions that have one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_end_to_end_on_tiny_models(tmp_path):
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny", "--json",
                           str(rows_file)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(rows_file.read_text())
    assert {r["part"] for r in rows} == {"training", "kolors", "scoring", "memory"}
    training = [r for r in rows if r["part"] == "training"]
    assert [r["setting"] for r in training] == ["ComfyUI defaults, fp32", "ComfyUI defaults, bf16",
                                                 "ComfyUI defaults, fp16 autocast"]
    assert all(r["ok"] for r in training) and all("0 UNet loads per validation" in r["figures"] for r in training)
    assert "off fp32" in training[1]["figures"] and "speed" in next(r for r in rows if r["part"] == "kolors")["figures"]
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    assert len(table) == len(rows) + 2 and table[0].startswith("| part")  # one table: header, rule, a line per row
