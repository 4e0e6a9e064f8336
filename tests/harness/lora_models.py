"""ComfyUI's own names for the LoRA tests, read in ComfyUI's import world (run_in_comfy) so that the test process never
imports ComfyUI."""

from __future__ import annotations

import math

import torch

from devkit.build_models import SMALL_SDXL_CONFIG
from harness.in_comfy import run_in_comfy


def _unet_to_diffusers(unet_config: dict) -> dict[str, str]:
    """In ComfyUI's import world (run_in_comfy): comfy.utils.unet_to_diffusers of ``unet_config``."""
    import comfy.utils

    return comfy.utils.unet_to_diffusers(unet_config)


def comfy_diffusers_names(unet_config: dict = SMALL_SDXL_CONFIG) -> dict[str, str]:
    """ldm module -> diffusers module, from ComfyUI's own comfy.utils.unet_to_diffusers."""
    mapping = run_in_comfy(_unet_to_diffusers, unet_config)
    # reverse: add_embedding wins over its alias class_embedding
    return {v[:-7]: k[:-7] for k, v in sorted(mapping.items(), reverse=True) if k.endswith(".weight")}


def comfy_lora_key_names(unet_config: dict, prefix: str = "") -> dict[str, str]:
    """{kohya module name: weight name in the model file} from ComfyUI's own comfy.lora.model_lora_keys_unet logic
    (``lora_unet_`` + the ldm name and + the diffusers name of ``unet_config``'s layout); ``prefix``: what the
    model file puts in front of the UNet's weight names ("model.diffusion_model." in a checkpoint)."""
    mapping = run_in_comfy(_unet_to_diffusers, unet_config)
    by_diffusers = {"lora_unet_" + k[:-7].replace(".", "_"): v for k, v in mapping.items() if k.endswith(".weight")}
    names = {name: prefix + ldm for name, ldm in by_diffusers.items()}
    for ldm in set(by_diffusers.values()):
        names["lora_unet_" + ldm[:-len(".weight")].replace(".", "_")] = prefix + ldm
    return names


# the LyCORIS/kohya kinds ComfyUI's weight adapters apply, and the layers each is built for
KINDS = ("lora", "locon", "locon-tucker", "loha", "lokr", "dora", "diff")
CONV_KINDS = ("locon", "locon-tucker")  # kinds made for 3x3 convolutions: no text-encoder part


def lycoris_layer(kind: str, shape: tuple[int, ...], rank: int, alpha: float | None, g: torch.Generator,
                  bias: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors (by suffix) of one layer of ``kind`` for a weight of ``shape``, named as kohya/LyCORIS write
    them and as ComfyUI's comfy/weight_adapter reads them."""
    out_dim, in_dim = shape[0], shape[1]
    kernel = tuple(shape[2:])
    in_total = in_dim * math.prod(kernel)

    def rnd(*dims, scale=0.05):
        return torch.randn(*dims, generator=g) * scale

    t: dict[str, torch.Tensor] = {}
    if kind in ("lora", "locon", "dora"):
        t["lora_up.weight"] = rnd(out_dim, rank, *([1] * len(kernel)))
        t["lora_down.weight"] = rnd(rank, in_dim, *kernel)
        if kind == "dora":  # LyCORIS wd_on_out: one magnitude per output channel
            t["dora_scale"] = 0.5 + torch.rand(out_dim, *([1] * (len(shape) - 1)), generator=g)
    elif kind == "locon-tucker":
        t["lora_up.weight"] = rnd(out_dim, rank, 1, 1)
        t["lora_mid.weight"] = rnd(rank, rank, *kernel, scale=0.3)
        t["lora_down.weight"] = rnd(rank, in_dim, 1, 1)
    elif kind == "loha":
        for w in ("w1", "w2"):
            t[f"hada_{w}_a"] = rnd(out_dim, rank, scale=0.2)
            t[f"hada_{w}_b"] = rnd(rank, in_total, scale=0.2)
    elif kind == "lokr":
        a = 4 if out_dim % 4 == 0 else 1
        b = 2 if in_total % 2 == 0 else 1
        t["lokr_w1"] = rnd(a, b, scale=0.3)
        if rank % 8 == 0:  # a full second factor (ComfyUI then ignores alpha), else a low-rank one
            t["lokr_w2"] = rnd(out_dim // a, in_total // b, scale=0.05)
        else:
            t["lokr_w2_a"] = rnd(out_dim // a, rank, scale=0.2)
            t["lokr_w2_b"] = rnd(rank, in_total // b, scale=0.2)
    elif kind == "diff":
        t["diff"] = rnd(*shape, scale=0.01)
        if bias is not None:
            t["diff_b"] = rnd(bias, scale=0.01)
        return t
    else:
        raise ValueError(kind)
    if alpha is not None:
        t["alpha"] = torch.tensor(float(alpha))
    return t
