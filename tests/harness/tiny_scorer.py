"""A tiny prompt-aware scorer for tests of everything that USES scorers (the judge, the nodes, the CLI): a random-weight
transformers CLIPModel scoring 100 * cos(image, prompt) as CLIPScore does, with a byte-level tokenizer (no vocabulary
files). It keeps the Scorer contract of scoring/scorers (info, prompt_aware, device, dtype, modules, to, score_tensor,
score_images). No ComfyUI import: the test server's test-only node wraps it like a loader's output."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

SIZE = 32
MAX_TOKENS = 24
EOS = 259  # the highest id: CLIP's text model pools at it


@dataclass(frozen=True)
class TinyInfo:
    id: str
    display_name: str
    prompt_aware: bool
    size_mb: int
    licence: str
    measures: str
    typical_range: tuple[float, float]
    folder: str


class TinyClipScore:
    """100 * cosine(image embedding, prompt embedding) of a tiny random CLIP (seeded)."""

    prompt_aware = True

    def __init__(self, seed: int = 0, scorer_id: str = "tiny-clipscore", device: str = "cpu"):
        from transformers import CLIPConfig, CLIPModel

        torch.manual_seed(seed)
        config = CLIPConfig(
            text_config=dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=MAX_TOKENS, eos_token_id=EOS, bos_token_id=258,
                             pad_token_id=0),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=SIZE, patch_size=8),
            projection_dim=16)
        self.model = CLIPModel(config).eval().to(device)
        self.info = TinyInfo(scorer_id, "tiny CLIPScore (tests)", True, 1, "test weights",
                             "prompt alignment of a random tiny CLIP", (-100.0, 100.0), "none")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]

    def to(self, device):
        self.model.to(device)
        return self

    def tokens(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), MAX_TOKENS, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            body = list(p.encode("utf-8"))[:MAX_TOKENS - 1] + [EOS]
            ids[i, :len(body)] = torch.tensor(body)
            mask[i, :len(body)] = 1
        return ids, mask

    def check(self, prompts: Sequence[str] | None, count: int) -> None:
        if prompts is None or len(prompts) != count or any(not (p or "").strip() for p in prompts):
            from aesthete.scoring.scorers.errors import PromptRequired

            raise PromptRequired(f"{self.info.id} needs one non-empty prompt per image")

    def _score(self, pixels: torch.Tensor, prompts: Sequence[str]) -> list[float]:
        pixels = torch.nn.functional.interpolate(pixels.float(), size=(SIZE, SIZE), mode="bilinear",
                                                 align_corners=False)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        ids, mask = self.tokens(prompts)
        with torch.inference_mode():
            image = self.model.get_image_features(pixel_values=((pixels - mean) / std).to(self.device, self.dtype))
            text = self.model.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            image = getattr(image, "pooler_output", image)
            text = getattr(text, "pooler_output", text)
            cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        return (100 * cos).cpu().tolist()

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str] | None = None, batch_size: int = 16,
                     progress: Callable | None = None, interrupt: Callable | None = None) -> list[float]:
        self.check(prompts, images.shape[0])
        out: list[float] = []
        for start in range(0, images.shape[0], batch_size):
            if interrupt is not None:
                interrupt()
            chunk = images[start:start + batch_size].permute(0, 3, 1, 2)
            out += self._score(chunk, list(prompts)[start:start + batch_size])
            if progress is not None:
                progress(len(out), images.shape[0])
        return out

    def score_images(self, images: Sequence[Image.Image], prompts: Sequence[str] | None = None,
                     batch_size: int = 16, progress: Callable | None = None) -> list[float]:
        import numpy as np

        def as_tensor(im) -> torch.Tensor:  # [1,3,SIZE,SIZE] in 0..1
            if isinstance(im, torch.Tensor):  # [3,H,W] uint8
                t = im.float()[None] / 255
            else:
                t = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
            return torch.nn.functional.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)

        self.check(prompts, len(images))
        out: list[float] = []
        for start in range(0, len(images), batch_size):
            chunk = torch.cat([as_tensor(im) for im in images[start:start + batch_size]])
            out += self._score(chunk, list(prompts)[start:start + batch_size])
            if progress is not None:
                progress(len(out), len(images))
        return out
