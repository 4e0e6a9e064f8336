"""The "same numbers" reference for Kolors: diffusers' own KolorsPipeline and its parts, nothing of the pack.

The pack's Kolors loader and text encoder are checked against these helpers: the prompt embeddings and pooled
vector ChatGLM3 gives, the UNet's noise prediction, the scheduler's sigmas, one Euler step from given noise.
Runs without ComfyUI.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import REPO

FIXTURES = REPO / "tests" / "fixtures" / "kolors"
MAX_SEQUENCE_LENGTH = 256  # KolorsPipeline's max_sequence_length (Kolors's context length)


def _variant(folder: Path) -> str | None:
    return "fp16" if any((folder / "unet").glob("*.fp16.safetensors")) else None


def load_pipeline(folder: str | Path, dtype: torch.dtype = torch.float32):
    """A KolorsPipeline on the CPU from a folder in either layout (devkit/kolors_models.py).

    The "kolors" layout (pickled ChatGLM3 shards, tokenizer inside text_encoder/) is loaded component by component
    as Kolors's own scripts do: ``ChatGLMTokenizer.from_pretrained(f"{dir}/text_encoder")``,
    ``ChatGLMModel.from_pretrained(f"{dir}/text_encoder", torch_dtype=...)``, the UNet, VAE and scheduler from their
    folders. The "diffusers" layout goes through ``KolorsPipeline.from_pretrained``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMModel
    from diffusers.pipelines.kolors.tokenizer import ChatGLMTokenizer

    folder = Path(folder)
    variant = _variant(folder)
    if (folder / "text_encoder" / "pytorch_model.bin.index.json").exists():
        text_encoder = ChatGLMModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype)
        tokenizer = ChatGLMTokenizer.from_pretrained(folder / "text_encoder")
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant=variant, torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder / "vae", variant=variant, torch_dtype=dtype)
        scheduler = EulerDiscreteScheduler.from_pretrained(folder / "scheduler")
        pipe = KolorsPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              force_zeros_for_empty_prompt=False)
    else:
        pipe = KolorsPipeline.from_pretrained(folder, torch_dtype=dtype, variant=variant)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


@torch.no_grad()
def encode(pipe, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds [B, 256, H], pooled [B, H]) exactly as KolorsPipeline.encode_prompt makes them.

    ChatGLM3 reads the prompt padded on the left to 256 tokens (``[gMASK]``, ``sop`` first), with its attention
    mask and position ids. ``prompt_embeds`` is ``hidden_states[-2]``: the output of the second-to-last GLM block
    (the input of the last one), no final norm. ``pooled`` is ``hidden_states[-1][-1]``: the output of the LAST GLM
    block at the last position, taken BEFORE the final RMSNorm (``encoder.final_layernorm``): GLMTransformer appends
    the last block's output to ``all_hidden_states`` before it applies the final norm, so the final norm never
    reaches the UNet."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe.device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False,
                                              max_sequence_length=MAX_SEQUENCE_LENGTH)
    return embeds, pooled


def add_time_ids(height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SDXL's micro-conditioning as KolorsPipeline builds it by default: original size (h, w), crop (0, 0),
    target size (h, w), in pixels: [[h, w, 0, 0, h, w]]."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)


@torch.no_grad()
def unet_eps(pipe, latent: torch.Tensor, timestep, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
             height: int, width: int) -> torch.Tensor:
    """The UNet's noise prediction for ``latent`` (already scaled by the scheduler, [B, 4, h/8, w/8]) at
    ``timestep`` (0..1099), with the add_time_ids the pipeline builds for an image of ``height`` x ``width`` px.
    The UNet applies its own ``encoder_hid_proj`` (Linear H -> cross_attention_dim) to ``prompt_embeds``."""
    dtype = pipe.unet.dtype
    batch = latent.shape[0]
    time_ids = add_time_ids(height, width, dtype).repeat(batch, 1)
    t = torch.as_tensor(timestep, dtype=torch.float32 if dtype == torch.float32 else dtype)
    return pipe.unet(latent.to(dtype), t, encoder_hidden_states=prompt_embeds.to(dtype),
                     added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids},
                     return_dict=False)[0]


def scheduler_sigmas(pipe) -> torch.Tensor:
    """The 1100 training sigmas, ascending (index = timestep): sqrt((1 - alphas_cumprod) / alphas_cumprod) of
    Kolors's scaled_linear betas (sqrt-linear from 0.00085 to 0.014). This is the table ComfyUI's ModelSamplingDiscrete
    holds (its "linear" schedule is the same sqrt-linear betas); sigma_min ~ 0.0292, sigma_max ~ 29.06 (SDXL's
    1000 steps to 0.012 end at 14.6)."""
    ac = pipe.scheduler.alphas_cumprod.to(torch.float64)
    return ((1 - ac) / ac).sqrt().to(torch.float32)


@torch.no_grad()
def one_step_euler(pipe, noise: torch.Tensor, prompt: str | list[str], width: int, height: int) -> torch.Tensor:
    """The latent that ComfyUI's KSampler saves (SaveLatent, unscaled) after 1 step, sampler "euler", scheduler
    "normal", cfg 1.0, denoise 1.0, from ``noise`` ([B, 4, height/8, width/8], standard normal) on an empty latent:

        sigma = sigma_max = scheduler_sigmas(pipe)[-1]          (timestep 1099, the highest)
        x     = noise * sqrt(1 + sigma^2)                       (KSampler's noise scaling at full denoise)
        eps   = unet(x / sqrt(1 + sigma^2), t=1099, cond)      (= unet(noise, ...): the EPS input scaling)
        x0    = x - sigma * eps                                 (one Euler step from sigma_max down to 0)
        saved = x0 / vae.scaling_factor                         (ComfyUI keeps latents unscaled: 0.13025)

    ``cond`` is ``encode(pipe, prompt)`` with add_time_ids [h, w, 0, 0, h, w] (the image size in pixels). The same
    step is what KolorsPipeline does for ``timesteps=[1099], guidance_scale=1.0, output_type="latent"`` (its result
    is x0, before the division); tests/unit/test_kolors_fixtures.py checks that."""
    sigma = scheduler_sigmas(pipe)[-1].to(torch.float64)
    timestep = pipe.scheduler.config.num_train_timesteps - 1
    embeds, pooled = encode(pipe, prompt)
    batch = noise.shape[0]
    if embeds.shape[0] != batch:
        embeds, pooled = embeds.repeat(batch, 1, 1), pooled.repeat(batch, 1)
    scale = float((1 + sigma ** 2).sqrt())
    x = noise.to(torch.float32) * scale
    eps = unet_eps(pipe, x / scale, timestep, embeds, pooled, height, width).to(torch.float32)
    x0 = x - float(sigma) * eps
    return x0 / pipe.vae.config.scaling_factor


def fixture_config(name: str) -> dict:
    """One of the real Kolors configs in tests/fixtures/kolors (unet_config.json, text_encoder_config.json,
    vae_config.json, scheduler_config.json)."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _real_unet_config() -> dict:
    return {k: v for k, v in fixture_config("unet_config.json").items() if not k.startswith("_")}


def real_kolors_unet_keys() -> dict[str, tuple[int, ...]]:
    """{diffusers key: shape} of the real Kolors UNet (2.6 B parameters), built from the real unet/config.json on
    the meta device: no memory, no weights. These are the key names of ``unet/diffusion_pytorch_model*.safetensors``
    and of the single UNet file users keep in models/unet."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_real_unet_config())
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def real_chatglm3_keys(prefix: str = "transformer.") -> dict[str, tuple[int, ...]]:
    """{key: shape} of the real ChatGLM3-6B text encoder (real text_encoder/config.json, meta device). With the
    default prefix these are the keys of the repository's pickled shards (ChatGLM3's own checkpoint naming); with
    ``prefix=""`` those of ChatGLMModel's state dict, which is how ``chatglm3-fp16.safetensors`` names them."""
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    config = ChatGLMConfig(**{k: v for k, v in fixture_config("text_encoder_config.json").items()
                              if k not in ("auto_map", "architectures", "_name_or_path")})
    with torch.device("meta"):
        model = ChatGLMModel(config)
    return {f"{prefix}{k}": tuple(v.shape) for k, v in model.state_dict().items()}


# --- add-ons: img2img, inpainting ---------------------------------------------------------------------------------

@torch.no_grad()
def vae_latent(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """The latent (scaled by the VAE's scaling factor, as the pipelines use it) of ``pixels`` [B, H, W, 3] in 0..1,
    the mean of the VAE's posterior: what ComfyUI's VAEEncode keeps (the pipelines draw a sample from it instead,
    which only adds the posterior's noise)."""
    image = pixels.permute(0, 3, 1, 2).to(pipe.vae.dtype) * 2 - 1
    return pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor


@torch.no_grad()
def img2img_one_step(pipe, pixels: torch.Tensor, prompt: str, timestep: int, seed: int) -> torch.Tensor:
    """diffusers' KolorsImg2ImgPipeline (the same components as ``pipe``), one Euler step from ``timestep`` with
    guidance 1: noise drawn from ``torch.manual_seed(seed)`` (as ComfyUI draws it), added to the image's latent at
    sigma(timestep), then x0 = x - sigma * eps. The image goes in as its latent (``vae_latent``) so the pipeline does
    not draw a posterior sample from the same generator first. The pipeline's size conditioning is the image's size
    (height and width given): left out, it would condition on its default 1024 x 1024 (the UNet's sample size x 8)
    whatever the image's size, where ComfyUI takes the latent's size. Returns the latent unscaled, as SaveLatent
    writes it."""
    from diffusers import KolorsImg2ImgPipeline

    img2img = KolorsImg2ImgPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.unet, scheduler=pipe.scheduler, force_zeros_for_empty_prompt=False)
    img2img.set_progress_bar_config(disable=True)
    height, width = pixels.shape[1:3]
    latent = img2img(prompt=prompt, image=vae_latent(pipe, pixels), strength=1.0, timesteps=[timestep],
                     height=height, width=width,
                     guidance_scale=1.0, generator=torch.manual_seed(seed), output_type="latent").images
    return latent / pipe.vae.config.scaling_factor


@torch.no_grad()
def inpaint_one_step(pipe, start: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor, prompt: str,
                     height: int, width: int) -> torch.Tensor:
    """One Euler step of Kwai-Kolors's inpainting pipeline (Kwai-Kolors/Kolors,
    kolors/pipelines/pipeline_stable_diffusion_xl_chatglm_256_inpainting.py: ``prepare_mask_and_masked_image``,
    ``prepare_mask_latents`` and the denoising loop of ``__call__``), from sigma_max (timestep 1099), guidance 1:

        mask          = (mask >= 0.5)                                    [B, 1, H, W], 1 = repaint
        masked_image  = image * (mask < 0.5)                             (image in -1..1)
        masked_latent = vae(masked_image) * scaling_factor               (the posterior's mean, as ComfyUI's VAEEncode)
        mask_latent   = interpolate(mask, (H/8, W/8))                    (nearest)
        eps           = unet(cat([x / sqrt(1 + sigma^2), mask_latent, masked_latent]), 1099, cond)
        x0            = x - sigma * eps

    ``start`` is the noisy latent x the step starts from (model space). Kwai-Kolors starts from noise *
    init_noise_sigma (strength 1) or the image's latent plus noise (strength < 1); ComfyUI's KSampler adds the
    latent it is given to the scaled noise: the driver takes x as given so both start from the same point. Kwai-Kolors's
    code cannot be installed here; this driver runs the same operations on diffusers' UNet2DConditionModel, which holds
    the same weights. Returns the latent unscaled, as SaveLatent writes it."""
    sigma = scheduler_sigmas(pipe)[-1].item()
    mask = (mask >= 0.5).to(torch.float32)
    image = pixels.permute(0, 3, 1, 2) * 2 - 1
    masked = image * (mask < 0.5)
    masked_latent = pipe.vae.encode(masked).latent_dist.mode() * pipe.vae.config.scaling_factor
    mask_latent = torch.nn.functional.interpolate(mask, size=(height // 8, width // 8))
    embeds, pooled = encode(pipe, prompt)
    model_input = torch.cat([start / (1 + sigma ** 2) ** 0.5, mask_latent, masked_latent], dim=1)
    eps = unet_eps(pipe, model_input, 1099, embeds, pooled, height, width)
    return (start - sigma * eps) / pipe.vae.config.scaling_factor


# --- add-ons: ControlNet ------------------------------------------------------------------------------------------

def load_controlnet(folder: str | Path, dtype: torch.dtype = torch.float32):
    """diffusers' ControlNetModel from a Kolors ControlNet folder (config.json + weights): the class whose weights
    Kwai-Kolors's own ControlNet (kolors/models/controlnet.py) holds."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder, torch_dtype=dtype).eval()


@torch.no_grad()
def controlnet_residuals(controlnet, sample: torch.Tensor, timestep, context: torch.Tensor, pooled: torch.Tensor,
                         hint: torch.Tensor, scale: float, height: int, width: int):
    """(down residuals, mid residual) as Kwai-Kolors's ControlNetModel.forward (Kwai-Kolors/Kolors,
    kolors/models/controlnet.py) computes them: the ChatGLM3 context is first projected by the ControlNet's own
    ``encoder_hid_proj`` (diffusers' ControlNetModel.forward, which holds the same weights, does not do this), then
    diffusers' forward with ``hint`` ([B, 3, H, W] in 0..1, as its pipelines' prepare_control_image makes it) and
    ``conditioning_scale``."""
    time_ids = add_time_ids(height, width).repeat(sample.shape[0], 1)
    return controlnet(sample, torch.as_tensor(float(timestep)), encoder_hidden_states=controlnet.encoder_hid_proj(context),
                      controlnet_cond=hint, conditioning_scale=scale,
                      added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}, return_dict=False)


@torch.no_grad()
def controlnet_one_step(pipe, controlnet, noise: torch.Tensor, prompt: str, hint: torch.Tensor, scale: float,
                        height: int, width: int) -> torch.Tensor:
    """One Euler step from sigma_max (timestep 1099, guidance 1) of Kwai-Kolors's ControlNet pipeline
    (kolors/pipelines/pipeline_controlnet_xl_kolors_img2img.py, the denoising loop of ``__call__``): the ControlNet's
    residuals (``controlnet_residuals``) of the scaled latent are added to the UNet's down and mid blocks
    (``down_block_additional_residuals``, ``mid_block_additional_residual``). Starts from ``noise`` as ComfyUI's
    KSampler does at full denoise (x = noise * sqrt(1 + sigma^2)); returns the latent unscaled, as SaveLatent
    writes it."""
    sigma = scheduler_sigmas(pipe)[-1].item()
    embeds, pooled = encode(pipe, prompt)
    x = noise * (1 + sigma ** 2) ** 0.5
    model_input = x / (1 + sigma ** 2) ** 0.5
    down, mid = controlnet_residuals(controlnet, model_input, 1099, embeds, pooled, hint, scale, height, width)
    time_ids = add_time_ids(height, width)
    eps = pipe.unet(model_input, torch.as_tensor(1099.0), encoder_hidden_states=embeds,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                    down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0]
    return (x - sigma * eps) / pipe.vae.config.scaling_factor


# --- add-ons: IP-Adapter Plus ---------------------------------------------------------------------------------------

@torch.no_grad()
def ip_adapter_one_step(pipe, adapter_folder: str | Path, image, weight: float, noise: torch.Tensor, prompt: str,
                        height: int, width: int) -> torch.Tensor:
    """One KolorsPipeline step from sigma_max (``timesteps=[1099]``, guidance 1, ``latents=noise``) with
    Kolors-IP-Adapter-Plus loaded by diffusers' ``load_ip_adapter`` as Kwai-Kolors's sample
    (ipadapter/sample_ipadapter_plus.py) loads it: the folder's ``ip_adapter_plus_general.bin`` and its
    ``image_encoder/``; ``set_ip_adapter_scale(weight)``; ``ip_adapter_image`` a PIL image. The pipeline keeps the
    UNet's text projection as ``text_encoder_hid_proj`` and puts the image projection in its place. The adapter is
    unloaded afterwards. Returns the latent unscaled, as SaveLatent writes it."""
    pipe.load_ip_adapter(str(adapter_folder), subfolder="", weight_name="ip_adapter_plus_general.bin",
                         image_encoder_folder="image_encoder", low_cpu_mem_usage=False)
    try:
        pipe.set_ip_adapter_scale(weight)
        latent = pipe(prompt=prompt, ip_adapter_image=image, timesteps=[1099], guidance_scale=1.0,
                      latents=noise.to(pipe.unet.dtype), height=height, width=width, output_type="latent").images
    finally:
        pipe.unload_ip_adapter()
    return latent / pipe.vae.config.scaling_factor
