"""Kolors ControlNets (Kwai-Kolors's Kolors-ControlNet-Canny / -Depth / -Pose, diffusers' ControlNetModel layout) as a
core CONTROL_NET: ComfyUI's own ``comfy.cldm.cldm.ControlNet`` plus the ControlNet's ``encoder_hid_proj``, wrapped in
``comfy.controlnet.ControlNet``, so core Apply ControlNet (strength, start/end percent) drives it on the Kolors MODEL.

Kwai-Kolors's ControlNet forward (kolors/models/controlnet.py) first projects the ChatGLM3 context with the
ControlNet's own ``encoder_hid_proj``; the Kolors MODEL hands every ControlNet the unprojected context (its UNet
projects inside its forward), so this model projects it the same way."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import torch

from ..common.tensors import load_into_module
from ..kolors import configs
from ..kolors.folder import KolorsFolderError
from . import compat
from .kolors_model import DTYPES, KolorsModelConfig, cpu_attention_options


class KolorsControlNetModel(compat.ControlNetModel):
    """ComfyUI's ControlNet with Kolors's text projection applied to the context first."""

    def __init__(self, encoder_hid_dim: int, context_dim: int, dtype=None, device=None, operations=None, **kwargs):
        super().__init__(context_dim=context_dim, dtype=dtype, device=device, operations=operations, **kwargs)
        self.encoder_hid_proj = operations.Linear(encoder_hid_dim, context_dim, dtype=dtype, device=device)

    # the attention the Kolors MODEL uses (set by kolors_controlnet: PyTorch's SDPA on the CPU where ComfyUI would
    # take its slower sub-quadratic kernel); core's ControlNet forward passes its blocks no transformer options
    transformer_options: dict = {}

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        """Core's ControlNet forward (without the union ControlNet's control types, which Kolors's have not)
        on the projected context, its attention chosen as the Kolors MODEL's."""
        if context.shape[-1] != self.encoder_hid_proj.in_features:
            raise ValueError(f"a Kolors ControlNet reads Kolors's ChatGLM3 context ({self.encoder_hid_proj.in_features} "
                             f"wide), this model's conditioning is {context.shape[-1]} wide: apply it to prompts "
                             f"encoded by the Kolors CLIP and sample with the Kolors MODEL")
        context = self.encoder_hid_proj(context)
        options = self.transformer_options
        emb = self.time_embed(compat.timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        guided_hint = self.input_hint_block(hint, emb, context)
        emb = emb + self.label_emb(y)
        h, outputs = x, []
        for index, (module, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = module(h, emb, context, transformer_options=options)
            if index == 0:
                h = h + guided_hint
            outputs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context, transformer_options=options)
        return {"middle": [self.middle_block_out(h, emb, context)], "output": outputs}


def _diffusers_names(settings: dict, weights: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{ComfyUI name: diffusers name} of a diffusers ControlNetModel's tensors: the UNet's encoder half as ComfyUI
    names it, the zero convolutions, the hint encoder and the text projection."""
    names = {comfy_key: diffusers_key for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(settings).items()
             if diffusers_key in weights}
    for kind in ("weight", "bias"):
        names[f"middle_block_out.0.{kind}"] = f"controlnet_mid_block.{kind}"
        names[f"encoder_hid_proj.{kind}"] = f"encoder_hid_proj.{kind}"
        names[f"input_hint_block.0.{kind}"] = f"controlnet_cond_embedding.conv_in.{kind}"
        blocks = 2 * (len(configs.HINT_CHANNELS) - 1)
        for i in range(blocks):
            names[f"input_hint_block.{2 * (i + 1)}.{kind}"] = f"controlnet_cond_embedding.blocks.{i}.{kind}"
        names[f"input_hint_block.{2 * (blocks + 1)}.{kind}"] = f"controlnet_cond_embedding.conv_out.{kind}"
        i = 0
        while f"controlnet_down_blocks.{i}.{kind}" in weights:
            names[f"zero_convs.{i}.0.{kind}"] = f"controlnet_down_blocks.{i}.{kind}"
            i += 1
    return {c: d for c, d in names.items() if d in weights}


def kolors_controlnet(weights: Mapping[str, torch.Tensor], config: dict, dtype_name: str = "auto",
                      where: str = "controlnet", take=None):
    """A core CONTROL_NET from a Kolors ControlNet's diffusers-named weights and its config.json. ``weights`` may be
    a LazyWeights (meta tensors; ``take(key)`` reads each one as it is copied in)."""
    settings = configs.controlnet_settings(config)
    names = _diffusers_names(settings, weights)
    leftover = sorted(set(weights) - set(names.values()))
    if leftover:
        raise KolorsFolderError(f"{where}: {len(leftover)} weights do not belong to a Kolors ControlNet with this "
                                f"config.json (for example {', '.join(leftover[:3])}); the weights and config.json do "
                                f"not match")
    unet_like = {k: v for k, v in settings.items() if k != "hint_channels"}
    model_config = KolorsModelConfig({**unet_like, "out_channels": settings["in_channels"]})
    load_device = mm.get_torch_device()
    if dtype_name == "auto":
        dtype = mm.unet_dtype(model_params=-1, supported_dtypes=list(model_config.supported_inference_dtypes),
                              weight_dtype=comfy.utils.weight_dtype({k: weights[k] for k in names.values()}))
    else:
        dtype = DTYPES[dtype_name]
    manual_cast = mm.unet_manual_cast(dtype, load_device)
    operations = compat.controlnet_operations(dtype, manual_cast)
    model = KolorsControlNetModel(**settings, operations=operations, dtype=dtype, device=mm.unet_offload_device())
    take = take or (lambda key: weights[key])
    report = load_into_module(model, list(names), lambda comfy_key: take(names[comfy_key]))
    if report:
        raise KolorsFolderError(f"{where}: the weights do not fit the ControlNet its config.json describes (missing "
                                f"{report.missing[:3]}, unexpected {report.unexpected[:3]}"
                                f"{'; ' + report.errors[0].strip() if report.errors else ''})")
    model.transformer_options = cpu_attention_options(load_device)
    return compat.core_controlnet(model, load_device, manual_cast)


def controlnet_config_path(weights_file: Path) -> Path | None:
    """The config.json beside a ControlNet file (Kwai-Kolors ships each ControlNet as a folder with both)."""
    path = weights_file.parent / "config.json"
    return path if path.is_file() else None
