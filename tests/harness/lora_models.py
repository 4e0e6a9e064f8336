"""Test models and LoRA files for the LoRA tests, built locally and cached in tests/.models.

``small_sdxl_unet()``: a random-weight UNet-only safetensors file (for UNETLoader) that ComfyUI detects as
SDXL: the full SDXL block layout (every module name a Kolors/SDXL LoRA targets, 70 transformer blocks,
model_channels 320, context 2048, adm 2816) but channel_mult [1, 1, 1], so every level is 320 wide
(about 0.2 B parameters instead of 2.6 B). Run as a script with the embedded ComfyUI on sys.path to build it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.comfy_server import COMFY_DIR
from harness.factories import _cached

SMALL_SDXL_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, num_head_channels=64,
    use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False, num_classes="sequential",
    adm_in_channels=2816,
)


def small_sdxl_unet() -> Path:
    path = _cached("aesthete-test-sdxl-small-unet.safetensors")
    if not path.exists():
        subprocess.run([sys.executable, str(Path(__file__).resolve()), str(path)], cwd=COMFY_DIR, check=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(COMFY_DIR), str(Path(__file__).parents[1])])))
    return path


def link_model(server, folder: str, source: Path, name: str) -> str:
    """Make ``source`` visible to ``server`` as models/<folder>/<name> (a symlink); returns ``name``."""
    dest = server.models_dir / folder / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        dest.symlink_to(source)
    return name


def comfy_diffusers_names(unet_config: dict = SMALL_SDXL_CONFIG) -> dict[str, str]:
    """ldm module -> diffusers module, from ComfyUI's own comfy.utils.unet_to_diffusers (run in a subprocess so
    the test process does not import ComfyUI)."""
    code = ("import json, sys, comfy.utils; cfg = json.loads(sys.argv[1]); "
            "m = comfy.utils.unet_to_diffusers(cfg); "
            "print(json.dumps({v[:-7]: k[:-7] for k, v in sorted(m.items(), reverse=True) "
            "if k.endswith('.weight')}))")  # reverse: add_embedding wins over its alias class_embedding
    out = subprocess.run([sys.executable, "-c", code, json.dumps(unet_config)], cwd=COMFY_DIR, check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(COMFY_DIR)))
    return json.loads(out.stdout)


def build_small_sdxl(out_path: str, seed: int = 0) -> None:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management is imported: no GPU needed to build
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import torch
    from harness.build_models import reset_random
    from safetensors.torch import save_file

    unet = openaimodel.UNetModel(**SMALL_SDXL_CONFIG, operations=comfy.ops.disable_weight_init)
    reset_random(unet, seed)
    # fp16 on disk; ComfyUI on CPU loads it as fp32, so the test's reference weights are exact
    sd = {k: v.to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
    tmp = out_path + ".tmp"
    save_file(sd, tmp)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    build_small_sdxl(sys.argv[1])
