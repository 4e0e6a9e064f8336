"""The "same numbers" reference for Kolors: diffusers' own KolorsPipeline and its parts, nothing of the pack.

The pack's Kolors loader and text encoder are checked against these helpers: the prompt embeddings and pooled
vector ChatGLM3 gives, the UNet's noise prediction, the scheduler's sigmas, one Euler step from given noise.
Runs without ComfyUI.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kolors"
MAX_SEQUENCE_LENGTH = 256  # KolorsPipeline's max_sequence_length (Kolors's context length)


def _variant(folder: Path) -> str | None:
    return "fp16" if any((folder / "unet").glob("*.fp16.safetensors")) else None


def load_pipeline(folder: str | Path, dtype: torch.dtype = torch.float32):
    """A KolorsPipeline on the CPU from a folder in either layout (tests/harness/kolors_models.py).

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
    """The 1100 training sigmas, ascending: sqrt((1 - alphas_cumprod) / alphas_cumprod) of Kolors's scaled_linear
    betas (0.00085..0.014); ComfyUI's model_sampling holds the same table."""
    ac = pipe.scheduler.alphas_cumprod.to(torch.float64)
    return ((1 - ac) / ac).sqrt().to(torch.float32)


def fixture_config(name: str) -> dict:
    """One of the real Kolors configs in tests/fixtures/kolors (unet_config.json, text_encoder_config.json,
    vae_config.json, scheduler_config.json)."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))
