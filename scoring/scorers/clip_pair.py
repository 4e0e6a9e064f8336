"""Scorers that are a CLIP model's image-text similarity: PickScore v1 and CLIPScore ViT-L/14 (transformers
CLIPModel files).

The reference (DiffSynth 1.1.9 ``PickScore``, a generic transformers-CLIP cosine) scores one image at a time and
encodes the prompt again for each; here images go in batches through ``speed.FastScorer``'s vision path and each
distinct prompt is encoded once. Same math: the L2-normalised image and text embeddings' dot product, times
``scale`` (PickScore's model card multiplies by ``logit_scale.exp()``; CLIPScore keeps the cosine, as DiffSynth).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..predictor import resolve_device, resolve_dtype
from ..speed import FastScorer, unsupported_reason
from .base import PromptScorer, warn_cut_prompts
from .catalog import ScorerInfo
from .pixels import Preprocess
from .weights import load_strict, read_weights

log = logging.getLogger("aesthete.scoring")


def load_clip_model(folder: Path, device: torch.device, dtype: torch.dtype):
    """A transformers CLIPModel from ``folder`` (config.json + model.safetensors), strictly (weights.load_strict)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_pretrained(str(folder))
    weights = Path(folder) / "model.safetensors"
    model = load_strict(lambda: CLIPModel(config), read_weights(weights, dtype), weights,
                        ignore=lambda k: k.endswith("position_ids"))
    return model.to(device=device, dtype=dtype)


class ClipPairScorer(PromptScorer):
    def __init__(self, info: ScorerInfo, model, image_processor, tokenizer, logit_scaled: bool,
                 clean: Callable[[str], str] | None = None):
        super().__init__(info)
        self.clean = clean or (lambda text: text)  # the reference's text cleaning before its tokenizer
        self.model = model
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.logit_scaled = logit_scaled
        self.max_tokens = min(model.config.text_config.max_position_embeddings,
                              getattr(tokenizer, "model_max_length", 77) or 77)
        reason = unsupported_reason(model, head=False)
        if reason is not None:
            log.warning("%s: scoring images with the model's own forward (slower): %s", info.id, reason)
        self.fast = None if reason is not None else FastScorer(model, head=False, pack=False)  # packing: slower here, +RAM

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    @property
    def scale(self) -> torch.Tensor | float:
        return self.model.logit_scale.exp().float() if self.logit_scaled else 1.0

    def warn_cut(self, prompts: list[str]) -> None:
        warn_cut_prompts(self.info.id, self.tokenizer, [self.clean(p) for p in prompts], self.max_tokens)

    def image_embeds(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        pixels = self.image_processor(images).to(self.device, self.dtype)
        if self.fast is not None:
            return self.fast(pixels).float()
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        embeds = self.model.visual_projection(pooled).float()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer([self.clean(p) for p in prompts], padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                       attention_mask=tokens["attention_mask"]).pooler_output
        embeds = self.model.text_projection(pooled).float()
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def score_batch(self, images: Sequence[Image.Image | torch.Tensor], prompts: list[str]) -> torch.Tensor:
        distinct = list(dict.fromkeys(prompts))
        text = self.text_embeds(distinct)[[distinct.index(p) for p in prompts]]
        return (self.image_embeds(images) * text).sum(-1) * self.scale


def load_clip_pair(info: ScorerInfo, model_folder: Path, processor_folder: Path, logit_scaled: bool,
                   device="cpu", dtype="auto") -> ClipPairScorer:
    from transformers import AutoTokenizer

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = load_clip_model(model_folder, dev, dt)
    processor = Preprocess.from_folder(processor_folder)
    tokenizer = AutoTokenizer.from_pretrained(str(processor_folder))
    log.info("loaded %s from %s (%s, %s)", info.id, model_folder, dev, dt)
    return ClipPairScorer(info, model, processor, tokenizer, logit_scaled)


def load_openclip_pair(info: ScorerInfo, weights: Path, bpe: Path, device="cpu", dtype="auto") -> ClipPairScorer:
    """HPSv2, HPSv2.1, CLIPScore ViT-H/14: an open_clip state dict read as a transformers CLIPModel, open_clip's
    tokenizer and preprocessing (openclip_files, pixels.Letterbox); the score is the cosine, as DiffSynth's."""
    from .openclip_files import clean_prompt, load_openclip_as_transformers, tokenizer_from_bpe
    from .pixels import Letterbox

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = load_openclip_as_transformers(weights, read_weights(weights, dt), dev, dt)
    log.info("loaded %s from %s (%s, %s)", info.id, weights, dev, dt)
    return ClipPairScorer(info, model, Letterbox(model.config.vision_config.image_size), tokenizer_from_bpe(bpe),
                          logit_scaled=False, clean=clean_prompt)
