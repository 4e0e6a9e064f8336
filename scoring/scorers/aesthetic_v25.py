"""Aesthetic Predictor V2.5 (discus0434): a SigLIP so400m/14 vision tower (384 px) and an MLP on its L2-normalised
pooled embedding, about 1-10, as the publisher's ``aesthetic-predictor-v2-5`` package computes it
(``AestheticPredictorV2_5Model``): the tower is transformers' ``SiglipVisionModel``, read strictly from the SigLIP
folder (a whole SiglipModel file: its text tower is not loaded); the head from the publisher's
``aesthetic_predictor_v2_5.pth`` (tensors only, read with weights_only). Image only: prompts are not read.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..predictor import resolve_device, resolve_dtype
from .base import ModuleScorer, score_finite
from .catalog import ScorerInfo
from .errors import ScorerFileError
from .pixels import Squash
from .weights import REDOWNLOAD, load_strict, read_weights

log = logging.getLogger("aesthete.scoring")


class AestheticV25Model(nn.Module):
    def __init__(self, vision_config):
        super().__init__()
        from transformers import SiglipVisionModel

        self.tower = SiglipVisionModel(vision_config)
        width = vision_config.hidden_size
        self.scoring_head = nn.Sequential(nn.Linear(width, 1024), nn.Identity(), nn.Linear(1024, 128), nn.Identity(),
                                          nn.Linear(128, 64), nn.Identity(), nn.Linear(64, 16), nn.Identity(),
                                          nn.Linear(16, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        embeds = self.tower(pixel_values=pixels).pooler_output
        return self.scoring_head(embeds / embeds.norm(dim=-1, keepdim=True))[:, 0]


class AestheticV25Scorer(ModuleScorer):
    prompt_aware = False

    def __init__(self, info: ScorerInfo, model: AestheticV25Model, preprocess: Squash):
        self.info = info
        self.model = model.eval()
        self.preprocess = preprocess
        self._lock = threading.Lock()

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def score_images(self, images: Sequence[Image.Image | torch.Tensor], prompts: Sequence[str] | None = None,
                     batch_size: int = 16, progress: Callable[[int, int], None] | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]:
        """One score per image; ``prompts`` is ignored (the image alone is rated)."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            if interrupt is not None:
                interrupt()
            pixels = self.preprocess(images[start:start + batch_size]).to(self.device, self.dtype)
            with self._lock, torch.inference_mode():
                scores.extend(self.model(pixels).float().cpu().tolist())
            if progress is not None:
                progress(len(scores), len(images))
        return scores

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str] | None = None, batch_size: int = 16,
                     progress: Callable[[int, int], None] | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]:
        return score_finite(images, lambda uint8, _: self.score_images(uint8, None, batch_size, progress, interrupt))


def load_aesthetic_v25(info: ScorerInfo, head_file: Path, siglip_folder: Path, device="cpu",
                       dtype="auto") -> AestheticV25Scorer:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    config = json.loads((Path(siglip_folder) / "config.json").read_text(encoding="utf-8"))
    vision = SiglipVisionConfig(**config.get("vision_config", config))
    weights = Path(siglip_folder) / "model.safetensors"
    with torch.device("meta"):  # transformers 5 names the vision model's own weights without "vision_model."
        keep = any(k.startswith("vision_model.") for k in SiglipVisionModel(vision).state_dict())
    state = {f"tower.{k if keep else k[len('vision_model.'):]}": v for k, v in read_weights(weights).items()
             if k.startswith("vision_model.")}
    if not state:
        raise ScorerFileError(f"{weights}: no vision_model.* tensors: not a SigLIP model; {REDOWNLOAD}")
    head = read_weights(head_file)
    if not isinstance(head, dict) or not all(k.startswith("scoring_head.") for k in head):
        raise ScorerFileError(f"{head_file}: not Aesthetic Predictor V2.5's head (scoring_head.* tensors); "
                              f"{REDOWNLOAD}")
    state.update(head)
    model = load_strict(lambda: AestheticV25Model(vision), state, weights, ignore=lambda k: k.endswith("position_ids"))
    model.to(device=dev, dtype=dt)
    log.info("loaded %s from %s and %s (%s, %s)", info.id, head_file, siglip_folder, dev, dt)
    return AestheticV25Scorer(info, model, Squash.from_folder(siglip_folder))
