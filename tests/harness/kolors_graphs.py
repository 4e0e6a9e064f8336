"""Pieces of the graphs the Kolors tests run in a real ComfyUI: the Kolors Loader, one KSampler step whose latent core
SaveLatent writes, and that latent read back from the server's output folder."""

from __future__ import annotations

import torch
from safetensors.torch import load as load_safetensors


def kolors_loader(g, kolors: str, dtype: str = "fp32"):
    """AestheteKolorsLoader on the folder the loader lists as ``kolors``: out(0) MODEL, out(1) CLIP, out(2) VAE."""
    return g.node("AestheteKolorsLoader", kolors=kolors, dtype=dtype, text_encoder_device="default")


def one_step_latent(g, model, positive, negative, prefix: str, seed: int, size: int = 64):
    """EmptyLatentImage (size x size) -> KSampler (1 step, euler, normal, cfg 1, full denoise) -> SaveLatent into
    ``latents/<prefix>``; returns the KSampler node."""
    latent = g.node("EmptyLatentImage", width=size, height=size, batch_size=1)
    sampler = g.node("KSampler", model=model, positive=positive, negative=negative, latent_image=latent.out(0),
                     seed=seed, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    g.node("SaveLatent", samples=sampler.out(0), filename_prefix=f"latents/{prefix}")
    return sampler


def saved_latent(comfy_server, prefix: str) -> torch.Tensor:
    """The latest latent core SaveLatent wrote as ``latents/<prefix>_*.latent``, in fp32."""
    files = sorted((comfy_server.output_dir / "latents").glob(f"{prefix}_*.latent"))
    assert files, f"SaveLatent wrote no {prefix} file"
    return load_safetensors(files[-1].read_bytes())["latent_tensor"].float()
