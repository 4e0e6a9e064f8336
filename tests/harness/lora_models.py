"""ComfyUI's own names for the LoRA tests, read in a subprocess so that the test process never imports ComfyUI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness.build_models import SMALL_SDXL_CONFIG
from harness.comfy_server import COMFY_DIR


def comfy_diffusers_names(unet_config: dict = SMALL_SDXL_CONFIG) -> dict[str, str]:
    """ldm module -> diffusers module, from ComfyUI's own comfy.utils.unet_to_diffusers."""
    code = ("import json, sys, comfy.utils; cfg = json.loads(sys.argv[1]); "
            "m = comfy.utils.unet_to_diffusers(cfg); "
            "print(json.dumps({v[:-7]: k[:-7] for k, v in sorted(m.items(), reverse=True) "
            "if k.endswith('.weight')}))")  # reverse: add_embedding wins over its alias class_embedding
    out = subprocess.run([sys.executable, "-c", code, json.dumps(unet_config)], cwd=COMFY_DIR, check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(COMFY_DIR)))
    return json.loads(out.stdout)
