"""MPS (Multi-dimensional Preference Score, Kolors team), the "overall" condition, as DiffSynth 1.1.9's ``MPScore``
computes it on ``MPS_overall_checkpoint_diffsynth.safetensors``.

A CLIP ViT-H/14 (transformers layout) gives every image token and every prompt token; the prompt tokens similar to
the condition words (light, color, clarity, ... position, number) make a mask; a 4-layer cross model (queries: the
image tokens, context: the masked prompt tokens) gives the image feature; the score is ``logit_scale.exp()`` times
its cosine with the prompt's CLIP embedding. The reference rounds the pixel values to fp16 and passes the prompt
without an attention mask, padded to 77 tokens: so do we. What is faster: images in batches, the vision tower through
``speed.FastScorer``'s layers, the condition prompt encoded once per call and each distinct prompt once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import nn

from ..predictor import resolve_device, resolve_dtype
from ..speed import FastScorer, unsupported_reason
from .base import PromptScorer, warn_cut_prompts
from .catalog import ScorerInfo
from .pixels import Preprocess
from .weights import load_strict, read_weights

log = logging.getLogger("aesthete.scoring")

CONDITIONS = {
    "overall": "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, structure, "
               "instance, texture, quantity, attributes, position, number, location, word, things",
}
MASK_THRESHOLD = 0.3  # prompt tokens whose similarity to the condition (relative to the best) is above it are read
CROSS_DIM, CROSS_LAYERS, CROSS_HEADS, HEAD_DIM, FF_MULT = 1024, 4, 16, 64, 4


def _layer_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight)  # MPS's layer norms have no bias (theirs is a zero buffer)


def _swiglu(x: torch.Tensor) -> torch.Tensor:
    x, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * x


class _Norm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class _CrossAttention(nn.Module):
    """Queries from the image tokens, one shared key/value head from the prompt tokens, a parallel SwiGLU MLP."""

    def __init__(self):
        super().__init__()
        inner, ff = CROSS_HEADS * HEAD_DIM, FF_MULT * CROSS_DIM
        self.norm = _Norm(CROSS_DIM)
        self.to_q = nn.Linear(CROSS_DIM, inner, bias=False)
        self.to_kv = nn.Linear(CROSS_DIM, HEAD_DIM * 2, bias=False)
        self.to_out = nn.Linear(inner, CROSS_DIM, bias=False)
        self.ff = nn.Sequential(nn.Linear(CROSS_DIM, ff * 2, bias=False), nn.Identity(),
                                nn.Linear(ff, CROSS_DIM, bias=False))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = _layer_norm(x, self.norm.weight)
        q = self.to_q(h).view(b, n, CROSS_HEADS, HEAD_DIM).transpose(1, 2)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, k[:, None], v[:, None], attn_mask=mask[:, None],
                                             scale=HEAD_DIM ** -0.5)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, -1))
        return out + self.ff[2](_swiglu(self.ff[0](h))) + x


class _ParallelBlock(nn.Module):
    """Self-attention over the image tokens (rotary positions, one shared key/value head) beside a SwiGLU MLP."""

    def __init__(self):
        super().__init__()
        inner, ff = CROSS_HEADS * HEAD_DIM, FF_MULT * CROSS_DIM
        self.split = (inner, HEAD_DIM, HEAD_DIM, ff * 2)
        self.norm = _Norm(CROSS_DIM)
        self.fused_attn_ff_proj = nn.Linear(CROSS_DIM, sum(self.split), bias=False)
        self.attn_out = nn.Linear(inner, CROSS_DIM, bias=False)
        self.ff_out = nn.Sequential(nn.Identity(), nn.Linear(ff, CROSS_DIM, bias=False))

    @staticmethod
    def rotate(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        first, second = t.chunk(2, dim=-1)
        return t * angles.cos() + torch.cat((-second, first), dim=-1) * angles.sin()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = _layer_norm(x, self.norm.weight)
        q, k, v, ff = self.fused_attn_ff_proj(h).split(self.split, dim=-1)
        q = q.view(b, n, CROSS_HEADS, HEAD_DIM).transpose(1, 2)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2, device=x.device).float() / HEAD_DIM))
        freqs = torch.outer(torch.arange(n, device=x.device, dtype=inv_freq.dtype), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1).to(x.dtype)
        q, k = self.rotate(q, angles), self.rotate(k, angles)
        out = F.scaled_dot_product_attention(q, k[:, None], v[:, None], scale=HEAD_DIM ** -0.5)
        out = self.attn_out(out.transpose(1, 2).reshape(b, n, -1))
        return out + self.ff_out[1](_swiglu(ff)) + x


class _Residual(nn.Module):  # the checkpoint's names: layers.N.0.fn.*, layers.N.1.fn.*
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn


class CrossModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([_Residual(_CrossAttention()), _Residual(_ParallelBlock())])
                                    for _ in range(CROSS_LAYERS))

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = image_tokens
        for cross, block in self.layers:
            x = block.fn(cross.fn(x, text_tokens, mask))
        return x


class MPSModel(nn.Module):
    """The checkpoint's modules: ``model`` (a transformers CLIPModel) and ``cross_model``."""

    def __init__(self, config):
        super().__init__()
        from transformers import CLIPModel

        self.model = CLIPModel(config)
        self.cross_model = CrossModel()


# constant buffers of the reference's modules (zero layer-norm biases, rotary frequencies, position ids): computed
IGNORED_SUFFIXES = ("position_ids", "norm.bias", "rotary_emb.inv_freq")


class MPSScorer(PromptScorer):
    def __init__(self, info: ScorerInfo, model: MPSModel, preprocess: Preprocess, tokenizer,
                 condition: str = "overall"):
        super().__init__(info)
        self.mps = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.condition = CONDITIONS[condition]
        self.max_tokens = tokenizer.model_max_length
        reason = unsupported_reason(model.model, head=False)
        if reason is not None:
            log.warning("%s: scoring images with the model's own forward (slower): %s", info.id, reason)
        self.fast = None if reason is not None else FastScorer(model.model, head=False, pack=False)

    def modules(self) -> list[nn.Module]:
        return [self.mps]

    def warn_cut(self, prompts: list[str]) -> None:
        warn_cut_prompts(self.info.id, self.tokenizer, prompts, self.max_tokens)

    def tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, max_length=self.max_tokens, padding="max_length", truncation=True,
                              return_tensors="pt").input_ids.to(self.device)

    def text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(every token projected [N,77,D], the pooled prompt embedding [N,D]), without an attention mask."""
        clip = self.mps.model
        out = clip.text_model(input_ids=self.tokens(texts))
        return clip.text_projection(out.last_hidden_state), clip.text_projection(out.pooler_output)

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        clip = self.mps.model
        pixels = pixels.half().to(self.dtype)  # the reference rounds the pixel values to fp16
        if self.fast is None:
            return clip.visual_projection(clip.vision_model(pixel_values=pixels).last_hidden_state)
        vision, fast = clip.vision_model, self.fast
        linear = fast._linear(pixels)
        out = []
        for chunk in pixels.split(4):
            hidden = vision.pre_layrnorm(vision.embeddings(chunk))
            for layer in vision.encoder.layers:
                hidden = fast.layer(layer, hidden, linear)
            out.append(clip.visual_projection(hidden))
        return torch.cat(out)

    def score_batch(self, images: Sequence[Image.Image | torch.Tensor], prompts: list[str]) -> torch.Tensor:
        distinct = list(dict.fromkeys(prompts))
        pick = [distinct.index(p) for p in prompts]
        text_tokens, text_pooled = self.text(distinct)
        condition_tokens, _ = self.text([self.condition])
        # for each prompt token, its best similarity to a condition token, relative to the prompt's best
        sim = torch.einsum("bid,jd->bji", text_tokens, condition_tokens[0]).amax(dim=1, keepdim=True)
        sim = sim / sim.amax(dim=(1, 2), keepdim=True)
        mask = torch.zeros_like(sim).masked_fill(sim <= MASK_THRESHOLD, float("-inf"))
        image_tokens = self.image_tokens(self.preprocess(images).to(self.device))
        mask = mask[pick].expand(-1, image_tokens.shape[1], -1).to(image_tokens.dtype)
        features = self.mps.cross_model(image_tokens, text_tokens[pick], mask)[:, 0].float()
        features = features / features.norm(dim=-1, keepdim=True)
        text = text_pooled[pick].float()
        text = text / text.norm(dim=-1, keepdim=True)
        return self.mps.model.logit_scale.exp().float() * (features * text).sum(-1)


def load_mps(info: ScorerInfo, weights: Path, clip_folder: Path, device="cpu", dtype="auto") -> MPSScorer:
    from transformers import AutoTokenizer, CLIPConfig

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    config = CLIPConfig.from_pretrained(str(clip_folder))
    model = load_strict(lambda: MPSModel(config), read_weights(weights, dt), weights,
                        ignore=lambda k: k.endswith(IGNORED_SUFFIXES) and "cross_model" in k or
                        k.endswith("position_ids"))
    model.to(device=dev, dtype=dt)
    tokenizer = AutoTokenizer.from_pretrained(str(clip_folder))
    log.info("loaded %s from %s (%s, %s)", info.id, weights, dev, dt)
    return MPSScorer(info, model, Preprocess.from_folder(clip_folder), tokenizer)
