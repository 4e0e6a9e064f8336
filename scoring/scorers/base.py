"""What every scorer offers (the ``Scorer`` protocol) and the batching, prompt checks and NaN handling the
prompt-aware scorers share."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ...common.images import finite_mask, tensor_to_uint8
from .catalog import ScorerInfo
from .errors import PromptRequired

log = logging.getLogger("aesthete.scoring")

ScoreProgress = Callable[[int, int], None]


@runtime_checkable
class Scorer(Protocol):
    info: ScorerInfo
    prompt_aware: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def modules(self) -> list[torch.nn.Module]: ...

    def to(self, device) -> Scorer: ...

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str] | None = None, batch_size: int = 16,
                     progress: ScoreProgress | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]: ...

    def score_images(self, images: Sequence[Image.Image], prompts: Sequence[str] | None = None,
                     batch_size: int = 16, progress: ScoreProgress | None = None) -> list[float]: ...


def checked_prompts(scorer_id: str, prompts: Sequence[str] | None, count: int) -> list[str]:
    """One non-empty prompt per image, or PromptRequired naming the scorer."""
    if prompts is None:
        raise PromptRequired(f"{scorer_id} scores an image against its prompt: give one prompt per image")
    if isinstance(prompts, str):
        raise TypeError("prompts: a list of strings, one per image, not one string")
    prompts = list(prompts)
    if len(prompts) != count:
        raise ValueError(f"{scorer_id}: {len(prompts)} prompts for {count} images; give one prompt per image")
    empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if empty:
        raise PromptRequired(f"{scorer_id} scores an image against its prompt: images {empty} have an empty prompt")
    return prompts


def warn_cut_prompts(scorer_id: str, tokenizer, prompts: Sequence[str], max_tokens: int) -> None:
    """One warning naming what the tokenizer will cut from prompts longer than ``max_tokens`` (special tokens
    included), as the Kolors encoder does."""
    cut = []
    for prompt in dict.fromkeys(prompts):
        ids = tokenizer(prompt, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        if len(ids) > max_tokens:
            kept_body = max_tokens - 2  # the start and end tokens stay
            lost = tokenizer.decode(ids[1 + kept_body:-1]).strip()
            cut.append(f"{prompt[:40]!r}... loses {len(ids) - max_tokens} tokens: {lost!r}")
    if cut:
        log.warning("%s reads at most %d tokens per prompt; cut: %s", scorer_id, max_tokens, "; ".join(cut))


class ModuleScorer:
    """Where a scorer's weights are: ``modules()`` is what a ModelPatcher owns; ``device`` and ``dtype`` are those of
    its first module's parameters, ``to`` moves every module."""

    def modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.modules()[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.modules()[0].parameters()).dtype

    def to(self, device):
        for m in self.modules():
            m.to(device)
        return self


def score_finite(images: torch.Tensor, score: Callable[[list[torch.Tensor], list[int]], list[float]]) -> list[float]:
    """Scores of a [B,H,W,C] 0..1 batch, equal to scoring the PNGs ComfyUI would save from it: ``score(uint8 images,
    their indices in the batch)`` for the finite images; an image with a NaN or infinity scores NaN (logged)."""
    ok = finite_mask(images).tolist()
    bad = [i for i, good in enumerate(ok) if not good]
    if bad:
        log.warning("images %s of the batch contain NaN or infinite values: not scored (score NaN)", bad)
    good_idx = [i for i, good in enumerate(ok) if good]
    scores = [math.nan] * images.shape[0]
    if good_idx:
        for i, s in zip(good_idx, score(list(tensor_to_uint8(images[good_idx])), good_idx)):
            scores[i] = s
    return scores


class PromptScorer(ModuleScorer):
    """Base of the prompt-aware scorers: ``score_batch(pil_or_uint8_images, prompts) -> [B] tensor`` is theirs, the
    rest (prompt checks, batches, progress, interrupt, NaN images) is here."""

    prompt_aware = True

    def __init__(self, info: ScorerInfo):
        self.info = info
        self._lock = threading.Lock()  # one forward at a time: nodes of one graph may share a scorer

    @property
    def name(self) -> str:
        return self.info.id

    def score_batch(self, images: Sequence[Image.Image | torch.Tensor], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def score_images(self, images: Sequence[Image.Image | torch.Tensor], prompts: Sequence[str] | None = None,
                     batch_size: int = 16, progress: ScoreProgress | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]:
        """One score per image, in order, each against its own prompt."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        prompts = checked_prompts(self.info.id, prompts, len(images))
        self.warn_cut(prompts)
        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            if interrupt is not None:
                interrupt()
            with self._lock, torch.inference_mode():
                batch = self.score_batch(images[start:start + batch_size], prompts[start:start + batch_size])
            scores.extend(batch.float().cpu().tolist())
            if progress is not None:
                progress(len(scores), len(images))
        return scores

    def warn_cut(self, prompts: list[str]) -> None:
        pass

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str] | None = None, batch_size: int = 16,
                     progress: ScoreProgress | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]:
        """Scores of a [B,H,W,C] 0..1 batch, equal to scoring the PNGs ComfyUI would save from it. An image with a
        NaN or infinity scores NaN (logged)."""
        prompts = checked_prompts(self.info.id, prompts, images.shape[0])
        return score_finite(images, lambda uint8, idx: self.score_images(uint8, [prompts[i] for i in idx], batch_size,
                                                                         progress, interrupt))
