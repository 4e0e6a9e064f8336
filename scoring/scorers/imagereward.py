"""ImageReward v1.0 as DiffSynth 1.1.9's ``ImageRewardScore`` computes it on ``ImageReward/ImageReward.safetensors``:
BLIP's ViT-L/16 (224 px) encodes the image; a BERT whose every layer also attends to the image tokens (BLIP's
"MED" text encoder, configured by ``med_config.json``) reads the prompt (bert-base-uncased's tokenizer, 35 tokens);
an MLP on its first token gives the reward, standardised by ImageReward's published mean and std.

Written anew with the checkpoint's module names. What is faster than the reference: images in batches, PyTorch's
fused attention, and on the CPU in fp32 oneDNN's matmuls with GELU fused (``speed.linear_for``: ATen's linear took 1.5x
as long for ViT-L's MLP on the development CPU); the same math (the reference's -10000 padding mask and a removed key
weigh the same in fp32).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import nn

from ..predictor import resolve_device, resolve_dtype
from ..speed import linear_for
from .base import PromptScorer, warn_cut_prompts
from .catalog import ScorerInfo
from .pixels import Preprocess
from .weights import load_strict, read_weights

log = logging.getLogger("aesthete.scoring")

REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072  # ImageReward's standardisation
MAX_TOKENS = 35  # ImageReward's prompt length
VIT_L = dict(image_size=224, patch=16, width=1024, depth=24, heads=16)  # BLIP's 'large', fixed by ImageReward


class _VitBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, 4 * width)
        self.mlp.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, linear) -> torch.Tensor:
        b, n, c = x.shape
        qkv = linear(self.norm1(x), self.attn.qkv)
        q, k, v = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + linear(out, self.attn.proj)
        return x + linear(linear(self.norm2(x), self.mlp.fc1, None, "gelu"), self.mlp.fc2)


class BlipVit(nn.Module):
    """BLIP's vision transformer: every token, after the final norm."""

    def __init__(self, image_size: int, patch: int, width: int, depth: int, heads: int):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, width))
        self.blocks = nn.ModuleList(_VitBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, pixels: torch.Tensor, linear=None) -> torch.Tensor:
        """``linear``: how linear layers run (``speed.linear_for``; chosen for ``pixels`` when not given)."""
        linear = linear or linear_for(pixels)
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed[:, :x.shape[1]]
        for block in self.blocks:
            x = block(x, linear)
        return self.norm(x)


class _Attention(nn.Module):
    """BERT attention (``self``: query, key, value; ``output``: dense, LayerNorm, post-norm residual)."""

    def __init__(self, hidden: int, heads: int, eps: float, context: int | None = None):
        super().__init__()
        self.heads = heads
        self.self = nn.Module()
        self.self.query = nn.Linear(hidden, hidden)
        self.self.key = nn.Linear(context or hidden, hidden)
        self.self.value = nn.Linear(context or hidden, hidden)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None, linear) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        q = split(linear(x, self.self.query))
        k, v = split(linear(context, self.self.key)), split(linear(context, self.self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, c)
        return self.output.LayerNorm(linear(out, self.output.dense) + x)


class _MedLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, encoder_width: int):
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.crossattention = _Attention(hidden, heads, eps, context=encoder_width)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(hidden, intermediate)
        self.output = nn.Module()
        self.output.dense = nn.Linear(intermediate, hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, mask, image_tokens, linear):
        x = self.attention(x, x, mask, linear)
        x = self.crossattention(x, image_tokens, None, linear)  # every image token is read
        return self.output.LayerNorm(linear(linear(x, self.intermediate.dense, None, "gelu"), self.output.dense) + x)


class MedBert(nn.Module):
    """BLIP's "MED" text encoder in its multimodal mode: bidirectional self-attention over the prompt, then
    cross-attention to the image tokens, in every layer."""

    def __init__(self, config: dict, encoder_width: int):
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type",
                                                                    "absolute") != "absolute":
            raise ValueError("med_config.json: only BLIP's gelu activation and absolute positions are supported")
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
        self.embeddings.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
        self.embeddings.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            _MedLayer(hidden, config["num_attention_heads"], config["intermediate_size"], eps, encoder_width)
            for _ in range(config["num_hidden_layers"]))

    def forward(self, input_ids, attention_mask, image_tokens, linear=None) -> torch.Tensor:
        linear = linear or linear_for(image_tokens)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embeddings.word_embeddings(input_ids) + self.embeddings.position_embeddings(positions)[None]
        x = self.embeddings.LayerNorm(x)
        mask = attention_mask[:, None, None, :].bool()  # padding is never read
        for layer in self.encoder.layer:
            x = layer(x, mask, image_tokens, linear)
        return x


class ImageRewardModel(nn.Module):
    """The checkpoint's modules: ``blip.visual_encoder``, ``blip.text_encoder``, ``mlp.layers``."""

    def __init__(self, med_config: dict):
        super().__init__()
        self.blip = nn.Module()
        self.blip.visual_encoder = BlipVit(**VIT_L)
        self.blip.text_encoder = MedBert(med_config, VIT_L["width"])
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(nn.Linear(med_config["hidden_size"], 1024), nn.Identity(),
                                        nn.Linear(1024, 128), nn.Identity(), nn.Linear(128, 64), nn.Identity(),
                                        nn.Linear(64, 16), nn.Linear(16, 1))


# unused by the score (BLIP's contrastive projections) or constant (position ids)
IGNORED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.")


class ImageRewardScorer(PromptScorer):
    def __init__(self, info: ScorerInfo, model: ImageRewardModel, tokenizer):
        super().__init__(info)
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = Preprocess(224, 224, crop_rounding="round")  # torchvision Resize + CenterCrop

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def warn_cut(self, prompts: list[str]) -> None:
        warn_cut_prompts(self.info.id, self.tokenizer, prompts, MAX_TOKENS)

    def score_batch(self, images: Sequence[Image.Image | torch.Tensor], prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device, self.dtype)
        linear = linear_for(pixels)
        image_tokens = self.model.blip.visual_encoder(pixels, linear)
        tokens = self.tokenizer(prompts, padding="longest", truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt").to(self.device)
        text = self.model.blip.text_encoder(tokens["input_ids"], tokens["attention_mask"], image_tokens, linear)
        reward = self.model.mlp.layers(text[:, 0])
        return (reward[:, 0].float() - REWARD_MEAN) / REWARD_STD


def load_imagereward(info: ScorerInfo, weights: Path, med_config: Path, bert_folder: Path, device="cpu",
                     dtype="auto") -> ImageRewardScorer:
    from transformers import BertTokenizer

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    config = json.loads(Path(med_config).read_text(encoding="utf-8"))
    model = load_strict(lambda: ImageRewardModel(config), read_weights(weights, dt), weights,
                        ignore=lambda k: k.startswith(IGNORED_PREFIXES) or k.endswith("position_ids"))
    model.to(device=dev, dtype=dt)
    tokenizer = BertTokenizer.from_pretrained(str(bert_folder))
    log.info("loaded %s from %s (%s, %s)", info.id, weights, dev, dt)
    return ImageRewardScorer(info, model, tokenizer)
