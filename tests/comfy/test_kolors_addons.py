"""Kolors add-ons through core nodes in a real ComfyUI server, against the reference on the same tiny weights:
img2img (core VAEEncode -> KSampler with denoise < 1) against diffusers' KolorsImg2ImgPipeline, and
Kolors-Inpainting (a 9-channel UNet, detected by its input channels) with core InpaintModelConditioning against
Kwai-Kolors's inpainting pipeline driven on diffusers' UNet (devkit/kolors_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from devkit.graph import new_graph
from harness.kolors_graphs import saved_latent
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors, tiny_kolors_inpainting
from PIL import Image

pytestmark = pytest.mark.comfy

SIZE = 64


@pytest.fixture(scope="module")
def folders(comfy_server) -> dict[str, str]:
    return {"base": comfy_server.link_model("kolors", tiny_kolors("kolors", "fp32"), "tiny-kolors-fp32"),
            "inpaint": comfy_server.link_model("kolors", tiny_kolors_inpainting(), "tiny-kolors-inpainting")}


@pytest.fixture(scope="module")
def pictures(comfy_server) -> dict[str, str]:
    """A smooth colour picture and a mask whose right half (8-pixel aligned) is to be repainted."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx * yy)], axis=-1)
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(comfy_server.input_dir / "kolors-picture.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, SIZE // 2:] = 255
    Image.fromarray(mask).convert("RGB").save(comfy_server.input_dir / "kolors-mask.png")
    return {"image": "kolors-picture.png", "mask": "kolors-mask.png"}


def _pixels(comfy_server, name: str) -> torch.Tensor:
    image = Image.open(comfy_server.input_dir / name).convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def test_img2img_one_step_equals_kolors_img2img_pipeline(comfy, comfy_server, folders, pictures):
    """Core LoadImage -> VAEEncode -> KSampler (1 step, denoise 0.5, scheduler simple: sigma(549) -> 0, cfg 1, seed 7)
    -> SaveLatent, against KolorsImg2ImgPipeline(strength 1, timesteps [549]) on the same weights, image and seed."""
    from devkit.kolors_reference import img2img_one_step, load_pipeline

    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=folders["base"], dtype="fp32", text_encoder_device="default")
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    image = g.node("LoadImage", image=pictures["image"])
    encoded = g.node("VAEEncode", pixels=image.out(0), vae=loader.out(2))
    sampler = g.node("KSampler", model=loader.out(0), positive=positive.out(0), negative=positive.out(0),
                     latent_image=encoded.out(0), seed=7, steps=1, cfg=1.0, sampler_name="euler",
                     scheduler="simple", denoise=0.5)
    g.node("SaveLatent", samples=sampler.out(0), filename_prefix="latents/kolors-img2img")
    comfy.run(g.finalize())
    ours = saved_latent(comfy_server, "kolors-img2img")

    pipe = load_pipeline(tiny_kolors("kolors", "fp32"), torch.float32)
    reference = img2img_one_step(pipe, _pixels(comfy_server, pictures["image"]), RECIPE_PROMPT, 549, seed=7)
    assert ours.shape == reference.shape == (1, 4, SIZE // 8, SIZE // 8)
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4), (ours - reference).abs().max()


def test_inpainting_unet_with_inpaint_model_conditioning_equals_kolors_inpainting(comfy, comfy_server, folders,
                                                                                  pictures):
    """Kolors Loader on a Kolors-Inpainting folder (9 input channels) -> core InpaintModelConditioning (noise_mask
    off) -> KSampler (1 step, cfg 1, seed 3) -> SaveLatent, against one step of Kwai-Kolors's inpainting pipeline
    from the same start (the image's latent plus the seed's noise at sigma_max)."""
    from devkit.kolors_reference import inpaint_one_step, load_pipeline, scheduler_sigmas, vae_latent

    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=folders["inpaint"], dtype="fp32", text_encoder_device="default")
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    image = g.node("LoadImage", image=pictures["image"])
    mask = g.node("LoadImageMask", image=pictures["mask"], channel="red")
    conditioning = g.node("InpaintModelConditioning", positive=positive.out(0), negative=positive.out(0),
                          vae=loader.out(2), pixels=image.out(0), mask=mask.out(0), noise_mask=False)
    sampler = g.node("KSampler", model=loader.out(0), positive=conditioning.out(0), negative=conditioning.out(1),
                     latent_image=conditioning.out(2), seed=3, steps=1, cfg=1.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    g.node("SaveLatent", samples=sampler.out(0), filename_prefix="latents/kolors-inpaint")
    comfy.run(g.finalize())
    ours = saved_latent(comfy_server, "kolors-inpaint")

    pipe = load_pipeline(tiny_kolors_inpainting(), torch.float32)
    pixels = _pixels(comfy_server, pictures["image"])
    mask_pixels = _pixels(comfy_server, pictures["mask"])[..., 0][:, None]
    sigma = scheduler_sigmas(pipe)[-1].item()
    noise = torch.randn([1, 4, SIZE // 8, SIZE // 8], generator=torch.manual_seed(3))
    start = vae_latent(pipe, pixels) + noise * (1 + sigma ** 2) ** 0.5
    reference = inpaint_one_step(pipe, start, pixels, mask_pixels, RECIPE_PROMPT, SIZE, SIZE)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-3, rtol=1e-4), (ours - reference).abs().max()


def test_inpainting_unet_through_vae_encode_for_inpaint_changes_only_the_masked_half(comfy, comfy_server, folders,
                                                                                    pictures):
    """Core VAEEncodeForInpaint (grow_mask 0) + KSampler: the latent outside the mask keeps the picture's latent
    (KSampler's noise_mask), the masked half is generated."""
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=folders["inpaint"], dtype="fp32", text_encoder_device="default")
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    image = g.node("LoadImage", image=pictures["image"])
    mask = g.node("LoadImageMask", image=pictures["mask"], channel="red")
    encoded = g.node("VAEEncodeForInpaint", pixels=image.out(0), vae=loader.out(2), mask=mask.out(0), grow_mask_by=0)
    sampler = g.node("KSampler", model=loader.out(0), positive=positive.out(0), negative=positive.out(0),
                     latent_image=encoded.out(0), seed=3, steps=2, cfg=3.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    g.node("SaveLatent", samples=sampler.out(0), filename_prefix="latents/kolors-inpaint-vae")
    g.node("SaveLatent", samples=encoded.out(0), filename_prefix="latents/kolors-inpaint-start")
    comfy.run(g.finalize())
    out, start = saved_latent(comfy_server, "kolors-inpaint-vae"), saved_latent(comfy_server, "kolors-inpaint-start")
    half = SIZE // 16
    assert torch.isfinite(out).all()
    assert torch.allclose(out[..., :half], start[..., :half], atol=1e-5)
    assert (out[..., half:] - start[..., half:]).abs().mean() > 0.1
