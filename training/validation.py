"""Validation by score, every epoch, apart from ComfyUI: what to generate (the spec), each epoch's images, scores and
mean loss (the history), which epoch's LoRA to output, and the pictures and table shown to the user (a grid with the
scores drawn on, the mean score per epoch beside the loss curve, epoch / mean loss / mean score as text).

The node (nodes/training_nodes.py) generates the images with ComfyUI's sampling and scores them with the
aesthetic predictor; this module never imports ComfyUI."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..prompts.negative import RECIPE_NEGATIVE_ZH
from ..scoring.annotate import GridRow, draw_scored_grid, format_score
from ..scoring.predictor import finite_mean
from .loss_graph import draw_epoch_graph, draw_loss_graph

# the recipe's test prompt: the image it judged each LoRA by
RECIPE_TEST_PROMPT = "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"
RECIPE_NEGATIVE = RECIPE_NEGATIVE_ZH
OUTPUT_CHOICES = ("best score", "last epoch")  # which epoch's LoRA Train LoRA outputs
GRID_CELL = 256  # the largest side of one image in the grid (validation images are usually 1024 px)


class ValidationError(ValueError):
    """Validation settings that cannot be used; the message names the setting and what to do."""


def parse_prompts(text: str) -> tuple[str, ...]:
    """One prompt per line; blank lines are skipped."""
    prompts = tuple(line.strip() for line in (text or "").splitlines() if line.strip())
    if not prompts:
        raise ValidationError("validation prompts: none given; write one prompt per line (the recipe's test "
                              f"prompt is {RECIPE_TEST_PROMPT})")
    return prompts


@dataclass(frozen=True)
class ValidationSpec:
    """What every epoch generates: each prompt ``images_per_prompt`` times, from the same seed every epoch (so the
    images change only because the LoRA did). ``predictor`` is the caller's scorer, opaque here; without one the
    images are shown unscored and the last epoch is output."""

    prompts: tuple[str, ...] = (RECIPE_TEST_PROMPT,)
    negative: str = RECIPE_NEGATIVE
    seed: int = 0
    steps: int = 20
    width: int = 1024
    height: int = 1024
    images_per_prompt: int = 1
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"
    output: str = "best score"
    predictor: Any = field(default=None, compare=False, repr=False)

    def check(self) -> None:
        if not self.prompts:
            parse_prompts("")
        if self.steps < 1 or self.images_per_prompt < 1:
            raise ValidationError(f"validation steps ({self.steps}) and images per prompt "
                                  f"({self.images_per_prompt}) must each be at least 1")
        if self.width % 8 or self.height % 8 or min(self.width, self.height) < 16:
            raise ValidationError(f"validation size {self.width}x{self.height}: use multiples of 8, at least 16")
        if self.output not in OUTPUT_CHOICES:
            raise ValidationError(f"output {self.output!r}: use one of {', '.join(OUTPUT_CHOICES)}")

    @property
    def images_per_epoch(self) -> int:
        return len(self.prompts) * self.images_per_prompt


@dataclass
class EpochValidation:
    """One epoch's validation: its images (in prompt order), their scores (None without a predictor), the mean
    loss of its optimizer steps, and the name of its saved LoRA."""

    epoch: int
    mean_loss: float
    images: list[Image.Image]
    scores: list[float] | None = None
    lora_name: str = ""
    path: Path | None = None  # the saved LoRA file
    # a judge's every scorer's scores of the images ({} for one scorer: ``scores`` are its own)
    columns: dict[str, list[float]] = field(default_factory=dict)

    @property
    def mean_score(self) -> float:
        return finite_mean(self.scores) if self.scores else math.nan

    def column_means(self) -> dict[str, float]:
        return {k: finite_mean(v) for k, v in self.columns.items()}


@dataclass
class ValidationHistory:
    """The epochs validated so far, in order."""

    epochs: list[EpochValidation] = field(default_factory=list)
    _losses_seen: int = 0

    def add(self, epoch: int, losses_so_far: Sequence[float], images: Sequence[Image.Image],
            scores: Sequence[float] | None, lora_name: str = "", path: Path | None = None,
            columns: dict[str, Sequence[float]] | None = None) -> EpochValidation:
        """Record ``epoch``; its mean loss is that of the losses added since the previous epoch. ``columns``: a
        judge's per-scorer scores (``scores`` being their combination); kept when there are several."""
        new = [float(v) for v in losses_so_far[self._losses_seen:]]
        self._losses_seen = len(losses_so_far)
        kept = {k: [float(v) for v in c] for k, c in (columns or {}).items()} if len(columns or {}) > 1 else {}
        entry = EpochValidation(epoch, finite_mean(new) if new else math.nan, list(images),
                                None if scores is None else [float(s) for s in scores], lora_name, path, kept)
        self.epochs.append(entry)
        return entry

    def choose(self, output: str = "best score") -> EpochValidation | None:
        """The epoch whose LoRA to output: the highest mean score (the earlier epoch on a tie), or the last epoch
        when ``output`` says so or no epoch has a score."""
        if not self.epochs:
            return None
        scored = [e for e in self.epochs if math.isfinite(e.mean_score)]
        if output == "last epoch" or not scored:
            return self.epochs[-1]
        return max(scored, key=lambda e: (e.mean_score, -e.epoch))

    def why(self, output: str) -> str:
        chosen = self.choose(output)
        if chosen is None:
            return "no epoch was validated"
        if output == "last epoch":
            return f"epoch {chosen.epoch} (the last, as asked)"
        if not math.isfinite(chosen.mean_score):
            return f"epoch {chosen.epoch} (the last: no scores, connect an aesthetic predictor to choose by score)"
        return f"epoch {chosen.epoch} (best mean score {format_score(chosen.mean_score)})"

    def scorer_names(self) -> list[str]:
        """The judge's scorers whose own means every epoch shows (none for a single scorer)."""
        names: list[str] = []
        for e in self.epochs:
            names += [k for k in e.columns if k not in names]
        return names

    def table(self, output: str = "best score") -> str:
        """Tab-separated: epoch, mean loss, mean score (a judge's combination), each scorer's mean when a judge
        has several, the saved LoRA; the output epoch marked with ``*``."""
        chosen = self.choose(output)
        names = self.scorer_names()
        lines = ["\t".join(["epoch", "mean loss", "mean score", *(f"mean {n}" for n in names), "lora"])]
        for e in self.epochs:
            score = format_score(e.mean_score) if e.scores else "-"
            means = e.column_means()
            extra = [f"{means[n]:.4f}" if n in means and math.isfinite(means[n]) else "-" for n in names]
            mark = " *" if e is chosen else ""
            lines.append("\t".join([str(e.epoch), f"{e.mean_loss:.4f}", score, *extra, e.lora_name + mark]))
        return "\n".join(lines)


def draw_validation_grid(history: ValidationHistory, output: str = "best score",
                         cell: int = GRID_CELL) -> Image.Image:
    """Rows = epochs, columns = the validation images; each image with its score drawn on (scoring.annotate's
    label), each row headed by its epoch and mean score; the output epoch's heading is red."""
    if not history.epochs:
        raise ValidationError("no epoch was validated; nothing to draw")
    chosen = history.choose(output)
    rows = [GridRow([f"epoch {e.epoch}", f"loss {e.mean_loss:.4f}"]
                    + ([f"score {format_score(e.mean_score)}"] if e.scores else []),
                    e.images, e.scores, highlight=e is chosen) for e in history.epochs]
    return draw_scored_grid(rows, cell=cell, label_width=96)


def draw_score_graph(history: ValidationHistory, losses: Sequence[float], output: str = "best score",
                     height: int = 400) -> Image.Image:
    """The loss curve (training/loss_graph's plot) with the mean score per epoch beside it, the output epoch
    circled; with a judge of several scorers, each scorer's mean per epoch beside that (e.g. aesthetic and prompt
    alignment: a LoRA collapsing into one style rises on the first and falls on the second)."""
    chosen = history.choose(output)
    scores = [e.mean_score for e in history.epochs]
    highlight = history.epochs.index(chosen) if chosen is not None else None
    names = history.scorer_names()
    title = ("mean combined score per epoch" if names else "mean validation score per epoch") + (
        f" (output: epoch {chosen.epoch})" if chosen else "")
    panels = [draw_epoch_graph(scores, width=height + 80, height=height, title=title, highlight=highlight)]
    for name in names:
        values = [e.column_means().get(name, math.nan) for e in history.epochs]
        panels.append(draw_epoch_graph(values, width=height + 80, height=height, title=f"mean {name} per epoch",
                                       highlight=highlight))
    right = Image.new("RGB", (sum(p.width for p in panels), height), "white")
    for i, panel in enumerate(panels):
        right.paste(panel, (i * panels[0].width, 0))
    finite = [v for v in losses if math.isfinite(float(v))]
    if not finite:
        return right
    left = draw_loss_graph(finite, width=640, height=height)
    both = Image.new("RGB", (left.width + right.width, height), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    return both
