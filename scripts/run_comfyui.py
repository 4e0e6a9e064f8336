"""`make run`: start the embedded ComfyUI with Aesthete registered (after scripts/setup.sh has run)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = ROOT / ".comfyui" / "ComfyUI"
BASE_DIR = ROOT / ".comfyui" / "base"
NODES_PARENT = ROOT / ".comfyui" / "custom_nodes"


def say(message: str) -> None:
    """One line for the person at the terminal (a script's output, not a log)."""
    sys.stderr.write(f"aesthete: {message}\n")


def port_is_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def torchaudio_loads() -> bool:
    try:
        import torchaudio  # noqa: F401
    except Exception:  # noqa: BLE001 - an ImportError, or an OSError from a library built for another torch
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8188")))
    args, extra = ap.parse_known_args()

    if not (COMFY_DIR / "main.py").exists():
        say(f"{COMFY_DIR} is missing; run `make run` (it sets it up)")
        return 1
    if port_is_busy(args.host, args.port):
        say(f"port {args.port} on {args.host} is busy; stop what uses it or run `make run PORT=8189`")
        return 1

    for sub in ("custom_nodes", "models/checkpoints", "models/loras", "models/aesthetic", "input", "output",
                "user/default"):
        (BASE_DIR / sub).mkdir(parents=True, exist_ok=True)
    yaml_path = ROOT / ".comfyui" / "extra_model_paths.yaml"
    yaml_path.write_text(f"aesthete:\n    custom_nodes: {NODES_PARENT}\n")

    import torch

    device_args = [] if torch.cuda.is_available() else ["--cpu"]
    models = BASE_DIR / "models"
    say(f"ComfyUI at http://{args.host}:{args.port} ({'GPU' if not device_args else 'CPU only'})")
    say(f"put checkpoints in {models / 'checkpoints'}, LoRAs in {models / 'loras'}, "
          f"aesthetic predictors in {models / 'aesthetic'} (downloaded there on first use when a hub is reachable)")
    if not torchaudio_loads():
        say("ComfyUI's audio nodes (nodes_audio.py, nodes_audio_encoder.py) will print IMPORT FAILED: torchaudio "
            "does not load beside this torch; only those audio nodes are missing, Aesthete does not use them")
    # ComfyUI's default database sits in its own folder, which --base-directory moved away from
    database = f"sqlite:///{BASE_DIR / 'user' / 'comfyui.db'}"
    cmd = [sys.executable, "main.py", "--listen", args.host, "--port", str(args.port), "--disable-auto-launch",
           "--base-directory", str(BASE_DIR), "--extra-model-paths-config", str(yaml_path),
           "--database-url", database, *device_args, *extra]
    os.chdir(COMFY_DIR)
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    sys.exit(main())
