"""Kolors's diffusers config files turned into the settings of ComfyUI's own classes (plain dicts, no ComfyUI).

Every width, depth and head count is read from the config, so a small test model and the real Kolors go through
the same code. ``unet_settings`` gives the keyword arguments of ComfyUI's SDXL-family ``UNetModel`` plus
``encoder_hid_dim`` (the text projection); ``vae_settings`` the ``ddconfig`` of ComfyUI's ``AutoencoderKL``;
``sampling_settings`` the discrete noise schedule.
"""

from __future__ import annotations

from .folder import KolorsFolderError

CROSS_ATTN_DOWN = "CrossAttnDownBlock2D"
CROSS_ATTN_UP = "CrossAttnUpBlock2D"
PLAIN_DOWN = "DownBlock2D"
PLAIN_UP = "UpBlock2D"
SIZE_EMBED_DIM = 256  # ComfyUI's SDXL size embedder is Timestep(256); Kolors uses the same


def _per_level(value, levels: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise KolorsFolderError(f"unet/config.json: {name} has {len(value)} entries for {levels} levels")
        return list(value)
    return [value] * levels


def unet_settings(config: dict) -> dict:
    """ComfyUI ``UNetModel`` keyword arguments for a Kolors UNet config (diffusers' UNet2DConditionModel)."""
    try:
        channels = list(config["block_out_channels"])
        down_types = list(config["down_block_types"])
        up_types = list(config["up_block_types"])
        layers = config["layers_per_block"]
    except KeyError as e:
        raise KolorsFolderError(f"unet/config.json: no {e.args[0]!r}; this is not a diffusers UNet config") from None
    levels = len(channels)
    if len(down_types) != levels or len(up_types) != levels:
        raise KolorsFolderError("unet/config.json: block types and block_out_channels differ in length")
    _check_blocks(config, down_types, up_types)
    model_channels = channels[0]
    if any(c % model_channels for c in channels):
        raise KolorsFolderError("unet/config.json: block_out_channels are not multiples of the first")
    num_res_blocks = _per_level(layers, levels, "layers_per_block")
    depth = _per_level(config.get("transformer_layers_per_block", 1), levels, "transformer_layers_per_block")
    reverse_depth = config.get("reverse_transformer_layers_per_block") or list(reversed(depth))
    num_heads, num_head_channels = _heads(config, channels, down_types)
    transformer_depth, transformer_depth_output = _transformer_depths(down_types, up_types, depth, reverse_depth,
                                                                      num_res_blocks)
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": config.get("in_channels", 4),
        "out_channels": config.get("out_channels", 4),
        "model_channels": model_channels,
        "num_res_blocks": num_res_blocks,
        "channel_mult": [c // model_channels for c in channels],
        "transformer_depth": transformer_depth,
        "transformer_depth_output": transformer_depth_output,
        "transformer_depth_middle": depth[-1],
        "num_heads": num_heads,
        "num_head_channels": num_head_channels,
        "context_dim": config["cross_attention_dim"],
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": config["projection_class_embeddings_input_dim"],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "encoder_hid_dim": config["encoder_hid_dim"],
    }


def _check_blocks(config: dict, down_types: list[str], up_types: list[str]) -> None:
    unknown = [t for t in down_types if t not in (CROSS_ATTN_DOWN, PLAIN_DOWN)] + \
              [t for t in up_types if t not in (CROSS_ATTN_UP, PLAIN_UP)]
    if unknown or config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise KolorsFolderError(f"unet/config.json: block types {unknown or config.get('mid_block_type')} are not "
                                f"those of the SDXL-family UNet Kolors uses")
    if config.get("addition_time_embed_dim", SIZE_EMBED_DIM) != SIZE_EMBED_DIM:
        raise KolorsFolderError(f"unet/config.json: addition_time_embed_dim must be {SIZE_EMBED_DIM} as in Kolors")


def _heads(config: dict, channels: list[int], down_types: list[str]) -> tuple[int, int]:
    """ComfyUI's ``num_heads, num_head_channels`` (one of them -1) for the levels that attend."""
    levels = len(channels)
    # diffusers calls the number of heads "attention_head_dim" unless num_attention_heads is set
    heads = _per_level(config.get("num_attention_heads") or config.get("attention_head_dim", 8), levels,
                       "attention_head_dim")
    # only levels with attention have heads (Kolors's first level is a DownBlock2D whose entry is unused); the middle
    # block attends with the last level's count
    attends = [down_types[i] == CROSS_ATTN_DOWN or i == levels - 1 for i in range(levels)]
    head_channels = {c // h for c, h, a in zip(channels, heads, attends) if a}
    if len(head_channels) == 1:
        return -1, head_channels.pop()
    if len({h for h, a in zip(heads, attends) if a}) == 1:
        return next(h for h, a in zip(heads, attends) if a), -1
    raise KolorsFolderError("unet/config.json: neither the head count nor the head width is the same on every "
                            "level, which ComfyUI's UNet cannot express")


def _transformer_depths(down_types: list[str], up_types: list[str], depth: list[int], reverse_depth: list[int],
                        num_res_blocks: list[int]) -> tuple[list[int], list[int]]:
    """ComfyUI's ``transformer_depth`` (input blocks) and ``transformer_depth_output`` (output blocks)."""
    levels = len(down_types)
    transformer_depth = []
    for level in range(levels):
        cross = down_types[level] == CROSS_ATTN_DOWN
        transformer_depth += [depth[level] if cross else 0] * num_res_blocks[level]
    # ComfyUI lists output blocks shallow level first and pops from the end (deepest level first)
    transformer_depth_output = []
    for level in range(levels):
        up_index = levels - 1 - level
        cross = up_types[up_index] == CROSS_ATTN_UP
        rd = reverse_depth[up_index]
        transformer_depth_output += [rd if cross else 0] * (num_res_blocks[level] + 1)
    return transformer_depth, transformer_depth_output


# the hint encoder of ComfyUI's ControlNet class (comfy.cldm): diffusers' default conditioning embedding
HINT_CHANNELS = (16, 32, 96, 256)


def controlnet_settings(config: dict) -> dict:
    """ComfyUI ``comfy.cldm.cldm.ControlNet`` keyword arguments (plus ``encoder_hid_dim``) for a Kolors ControlNet
    config (diffusers' ControlNetModel, as Kwai-Kolors publishes Kolors-ControlNet-Canny/-Depth/-Pose): the UNet's
    encoder half, whose up blocks mirror the down blocks."""
    if config.get("encoder_hid_dim_type", "text_proj") != "text_proj" or not config.get("encoder_hid_dim"):
        raise KolorsFolderError("controlnet config.json: no encoder_hid_dim with encoder_hid_dim_type 'text_proj'; "
                                "this is not a Kolors ControlNet (an SDXL ControlNet loads with core Load ControlNet "
                                "Model, but does not fit Kolors)")
    hint = tuple(config.get("conditioning_embedding_out_channels", HINT_CHANNELS))
    if hint != HINT_CHANNELS or config.get("controlnet_conditioning_channel_order", "rgb") != "rgb" \
            or config.get("global_pool_conditions", False):
        raise KolorsFolderError(f"controlnet config.json: conditioning embedding {list(hint)} (channel order "
                                f"{config.get('controlnet_conditioning_channel_order', 'rgb')}, global pooling "
                                f"{config.get('global_pool_conditions', False)}) is not the one Kolors ControlNets use "
                                f"({list(HINT_CHANNELS)}, rgb, none)")
    ups = {CROSS_ATTN_DOWN: CROSS_ATTN_UP, PLAIN_DOWN: PLAIN_UP}
    up_types = [ups.get(t, t) for t in reversed(config.get("down_block_types", []))]
    settings = unet_settings({**config, "up_block_types": up_types})
    settings.pop("out_channels")
    settings["hint_channels"] = 3
    return settings


def vae_settings(config: dict) -> dict:
    """ComfyUI ``AutoencoderKL`` ddconfig for a diffusers AutoencoderKL config (the SDXL VAE in Kolors)."""
    channels = list(config.get("block_out_channels", (128, 256, 512, 512)))
    ch = channels[0]
    return {"double_z": True, "z_channels": config.get("latent_channels", 4), "resolution": 256,
            "in_channels": config.get("in_channels", 3), "out_ch": config.get("out_channels", 3), "ch": ch,
            "ch_mult": [c // ch for c in channels], "num_res_blocks": config.get("layers_per_block", 2),
            "attn_resolutions": [], "dropout": 0.0}


def sampling_settings(config: dict) -> dict:
    """ComfyUI's discrete schedule for the scheduler config (Kolors: 1100 steps, scaled linear 0.00085..0.014)."""
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule != "scaled_linear":
        raise KolorsFolderError(f"scheduler/scheduler_config.json: beta_schedule {schedule!r} is not supported "
                                f"(Kolors uses 'scaled_linear')")
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise KolorsFolderError(f"scheduler/scheduler_config.json: prediction_type {prediction!r} is not supported "
                                f"(Kolors predicts 'epsilon')")
    # ComfyUI's "linear" schedule is linspace(sqrt(start), sqrt(end))**2, diffusers' scaled_linear
    return {"beta_schedule": "linear", "linear_start": float(config.get("beta_start", 0.00085)),
            "linear_end": float(config.get("beta_end", 0.012)),
            "timesteps": int(config.get("num_train_timesteps", 1000))}
