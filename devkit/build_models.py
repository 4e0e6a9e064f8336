"""Build the random-weight test models. Run with the embedded ComfyUI's folder on sys.path (factories.py does).

  python build_models.py sdxl-small-unet OUT.safetensors   UNet only (for UNETLoader), detected as SDXL
  python build_models.py sd15-small OUT.safetensors   SD1.5-format checkpoint that CheckpointLoaderSimple
                                                      detects as SD15 (small UNet, full CLIP-L and VAE)
"""

from __future__ import annotations

import json
import os
import sys

import torch


def reset_random(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip weight init; give every layer torch's default random init instead."""
    torch.manual_seed(seed)
    for m in module.modules():
        for base in type(m).__mro__:
            if base.__module__.startswith("torch.nn") and "reset_parameters" in base.__dict__:
                base.reset_parameters(m)
                break


def small_sd15_unet_config() -> dict:
    # model_channels 320 and context_dim 768 are what ComfyUI's SD15 detection keys on
    return dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1, 1],
        channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
        transformer_depth_middle=1, context_dim=768, num_heads=8, use_spatial_transformer=True,
        use_linear_in_transformer=False, legacy=False,
    )


# Every module name a Kolors/SDXL LoRA targets (70 transformer blocks, model_channels 320, context 2048, adm
# 2816), detected as SDXL, but channel_mult [1, 1, 1]: every level 320 wide (0.2 B parameters instead of 2.6 B)
SMALL_SDXL_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048, num_head_channels=64,
    use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False, num_classes="sequential",
    adm_in_channels=2816,
)


def build_small_sdxl(out_path: str, seed: int = 0) -> None:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management is imported: no GPU needed to build
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    from safetensors.torch import save_file

    unet = openaimodel.UNetModel(**SMALL_SDXL_CONFIG, operations=comfy.ops.disable_weight_init)
    reset_random(unet, seed)
    # fp16 on disk; ComfyUI on CPU loads it as fp32, so the test's reference weights are exact
    sd = {k: v.to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
    tmp = f"{out_path}.{os.getpid()}.tmp"  # parallel test runs may build at once
    save_file(sd, tmp)
    os.replace(tmp, out_path)



def build_sd15(out_path: str, seed: int = 0) -> None:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management is imported: no GPU needed to build
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd1_clip

    sd = {}
    unet = openaimodel.UNetModel(**small_sd15_unet_config(), operations=comfy.ops.disable_weight_init)
    reset_random(unet, seed)
    sd.update({"model.diffusion_model." + k: v for k, v in unet.state_dict().items()})

    config_path = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")
    with open(config_path) as f:
        clip_config = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    reset_random(clip, seed + 1)
    for k, v in clip.state_dict().items():
        if k.startswith("text_model."):
            sd["cond_stage_model.transformer." + k] = v
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    reset_random(vae, seed + 2)
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})

    from safetensors.torch import save_file

    out = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    tmp = f"{out_path}.{os.getpid()}.tmp"  # parallel test runs may build at once
    save_file(out, tmp)
    os.replace(tmp, out_path)


if __name__ == "__main__":
    kind, out = sys.argv[1], sys.argv[2]
    if kind == "sd15-small":
        build_sd15(out)
    elif kind == "sdxl-small-unet":
        build_small_sdxl(out)
    else:
        raise SystemExit(f"unknown model kind {kind!r}")
