"""Check that ComfyUI's own classes can be configured for a tiny Kolors folder's UNet and VAE, from their
config.json files alone. Run with the embedded ComfyUI's folder on sys.path (``comfy_fit`` does); prints JSON.

  python kolors_comfy_check.py FOLDER

- VAE: ComfyUI's AutoencoderKL with ddconfig ch = block_out_channels[0], ch_mult = widths / ch, num_res_blocks =
  layers_per_block, z_channels = latent_channels; the diffusers weights converted by ComfyUI's own
  diffusers_convert load strictly, and decoding a latent gives diffusers' numbers.
- UNet: ComfyUI's UNetModel (SDXL family) with model_channels, channel_mult, num_res_blocks, per-level
  transformer depths, num_head_channels, context_dim and adm_in_channels read from unet/config.json; every
  diffusers key maps (comfy.utils.unet_to_diffusers) onto a UNetModel key of the same shape, except the
  Kolors-only text projection ``encoder_hid_proj`` that UNetModel lacks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def comfy_vae_config(cfg: dict) -> dict:
    widths = cfg["block_out_channels"]
    return {"embed_dim": cfg["latent_channels"],
            "ddconfig": {"double_z": True, "z_channels": cfg["latent_channels"], "resolution": 256,
                         "in_channels": cfg["in_channels"], "out_ch": cfg["out_channels"], "ch": widths[0],
                         "ch_mult": [w // widths[0] for w in widths], "num_res_blocks": cfg["layers_per_block"],
                         "attn_resolutions": [], "dropout": 0.0}}


def comfy_unet_config(cfg: dict) -> dict:
    widths = cfg["block_out_channels"]
    levels = len(widths)
    layers = cfg["transformer_layers_per_block"]
    layers = layers if isinstance(layers, list) else [layers] * levels
    heads = cfg["attention_head_dim"]
    heads = heads if isinstance(heads, list) else [heads] * levels
    attn = ["CrossAttn" in t for t in cfg["down_block_types"]]
    depth = [layers[i] if attn[i] else 0 for i in range(levels)]
    blocks = cfg["layers_per_block"]
    return dict(
        image_size=32, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], model_channels=widths[0],
        num_res_blocks=[blocks] * levels, channel_mult=[w // widths[0] for w in widths],
        transformer_depth=[d for d in depth for _ in range(blocks)], transformer_depth_middle=layers[-1],
        transformer_depth_output=[d for d in depth for _ in range(blocks + 1)],
        context_dim=cfg["cross_attention_dim"], num_head_channels=widths[-1] // heads[-1],
        use_spatial_transformer=True, use_linear_in_transformer=cfg["use_linear_projection"], legacy=False,
        num_classes="sequential", adm_in_channels=cfg["projection_class_embeddings_input_dim"])


def main(folder: Path) -> dict:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management is imported
    import comfy.diffusers_convert
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.utils
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    report = {}
    variant = ".fp16" if (folder / "vae" / "diffusion_pytorch_model.fp16.safetensors").exists() else ""
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    sd = load_file(folder / "vae" / f"diffusion_pytorch_model{variant}.safetensors")
    comfy_vae = comfy.ldm.models.autoencoder.AutoencoderKL(**comfy_vae_config(vae_cfg))
    missing, unexpected = comfy_vae.load_state_dict(
        {k: v.float() for k, v in comfy.diffusers_convert.convert_vae_state_dict(sd).items()}, strict=False)
    reference = AutoencoderKL.from_pretrained(folder / "vae", variant=variant[1:] or None, torch_dtype=torch.float32)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = comfy_vae.decode(latent)
        theirs = reference.decode(latent).sample
    report["vae"] = {"missing": sorted(missing), "unexpected": sorted(unexpected),
                     "decode_max_diff": float((ours - theirs).abs().max()), "decode_std": float(theirs.std())}

    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    config = comfy_unet_config(unet_cfg)
    unet = openaimodel.UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    comfy_shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    names = comfy.utils.unet_to_diffusers(config)  # diffusers key -> UNetModel key
    weights = load_file(folder / "unet" / f"diffusion_pytorch_model{variant}.safetensors")
    unmapped = sorted(k for k in weights if k not in names)
    mismatched = sorted(k for k in weights if k in names and comfy_shapes.get(names[k]) != tuple(weights[k].shape))
    uncovered = sorted(set(comfy_shapes) - {names[k] for k in weights if k in names})
    report["unet"] = {"comfy_config": config, "unmapped": unmapped, "shape_mismatch": mismatched,
                      "comfy_keys_without_weight": uncovered}
    return report


def comfy_fit(folder: Path) -> dict:
    """Run this check in a subprocess (the test process never imports ComfyUI) and return its report."""
    import subprocess

    from harness.comfy_server import COMFY_DIR

    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(folder)], cwd=COMFY_DIR, check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(COMFY_DIR)))
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(Path(sys.argv[1]))) + "\n")  # the report, for comfy_fit
