"""`make run`'s first start, as a newcomer sees it: no database error, and a one-line word about the audio nodes'
tracebacks instead of leaving them unexplained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from devkit.comfy_server import free_port

REPO = Path(__file__).resolve().parents[2]


def test_make_run_starts_without_a_database_error_and_explains_the_audio_tracebacks():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "scripts/run_comfyui.py", "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1"))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/system_stats", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        assert proc.poll() is None, "make run's ComfyUI exited"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert "Failed to initialize database" not in output and "unable to open database file" not in output, output
    assert (REPO / ".comfyui" / "base" / "user" / "comfyui.db").is_file()
    if "IMPORT FAILED" in output and "nodes_audio" in output:
        explained = output.index("ComfyUI's audio nodes")
        assert explained < output.index("IMPORT FAILED")  # said before the tracebacks, in one line
