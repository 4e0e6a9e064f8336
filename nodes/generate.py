"""Generate and judge: the images a graph of core nodes makes (CLIPTextEncode, EmptyLatentImage, KSampler,
VAEDecode) and their scores (the Aesthetic Score node's code), on the model the caller gives: the model being
trained (Train LoRA's per-epoch validation) or the base model with one LoRA file applied (Judge LoRA Files).
One path, so both judge exactly as a user's own graph with the same settings would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import comfy.model_management
import comfy.sample

from ..scoring.judge import as_judge
from ..training.validation import ValidationSpec


@dataclass
class EncodedPrompts:
    """The settings' prompts as CONDITIONING, encoded once by one CLIP."""

    texts: tuple[str, ...]
    positive: list[Any]
    negative: Any


def encode_text(clip, text: str):
    """CONDITIONING of ``text``, as CLIPTextEncode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def encode_prompts(clip, spec: ValidationSpec) -> EncodedPrompts:
    with torch.no_grad():
        return EncodedPrompts(spec.prompts, [encode_text(clip, p) for p in spec.prompts],
                              encode_text(clip, spec.negative))


def generate(model, vae, prompts: EncodedPrompts, spec: ValidationSpec) -> torch.Tensor:
    """IMAGE [B,H,W,C]: for each prompt in order, ``spec.images_per_prompt`` images from EmptyLatentImage's latent
    and KSampler's noise of ``spec.seed`` (the same noise for every prompt, model and epoch), decoded by ``vae``."""
    images = []
    with torch.no_grad():
        for positive in prompts.positive:
            latent = torch.zeros([spec.images_per_prompt, 4, spec.height // 8, spec.width // 8],
                                 device=comfy.model_management.intermediate_device())  # EmptyLatentImage
            latent = comfy.sample.fix_empty_latent_channels(model, latent)
            noise = comfy.sample.prepare_noise(latent, spec.seed)
            samples = comfy.sample.sample(model, noise, spec.steps, spec.cfg, spec.sampler, spec.scheduler, positive,
                                          prompts.negative, latent, denoise=1.0, disable_pbar=True, seed=spec.seed)
            decoded = vae.decode(samples)
            images.append(decoded.reshape(-1, *decoded.shape[-3:]) if decoded.ndim == 5 else decoded)
    return torch.cat(images)


def image_prompts(spec: ValidationSpec) -> list[str]:
    """The prompt of each generated image, in ``generate``'s order."""
    return [p for p in spec.prompts for _ in range(spec.images_per_prompt)]


@dataclass
class Judgement:
    """The judge's score per image (the combination) and each scorer's raw scores, by scorer id."""

    scores: list[float]
    columns: dict[str, list[float]]


def judge(scorer, images: torch.Tensor, prompts: list[str]) -> Judgement | None:
    """Scores of ``images`` by ``scorer`` (the AESTHETIC_MODEL value: a scorer or an Aesthete Judge; None: not
    judged) on the Aesthetic Score node's path (loaded through ComfyUI's model management, interruptible between
    batches); a prompt-aware one reads each image's prompt."""
    if scorer is None:
        return None
    combined = as_judge(scorer.ready())
    with torch.no_grad():
        table = combined.score_table(images, prompts if combined.prompt_aware else None,
                                     interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
    return Judgement(list(table.combined), {k: list(v) for k, v in table.columns.items()})
