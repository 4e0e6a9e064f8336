"""A LoRA training set read from a folder of captioned images: aesthetic filtering, aspect-ratio buckets or crops,
repeats, and the per-epoch plan of batches (each batch from one bucket, so its images share a size)."""

from __future__ import annotations

import itertools
import logging
import random
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..common.images import list_images, open_image, pil_to_uint8
from ..common.captions import CaptionError, find_caption, read_metadata_csv
from .captions import CaptionRecipe

log = logging.getLogger("aesthete.training")

CROP_MODES = ("buckets", "center crop", "random crop")
# images, their captions (the prompts of a prompt-aware scorer) -> one score each
ScoreFn = Callable[[list[Image.Image], list[str]], Sequence[float]]


class DatasetError(ValueError):
    """The folder cannot give a training set; the message names it and says what to do."""


@dataclass
class TrainingImage:
    path: Path
    tags: list[str]
    caption_source: str  # txt, json, csv or none
    image: torch.Tensor  # [H, W, 3] uint8, already at its bucket size (a quarter of float32's memory)
    score: float | None = None

    @property
    def pixels(self) -> torch.Tensor:
        """[H, W, 3] float32 0..1, as ComfyUI's IMAGE."""
        return self.image.float() / 255.0

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass
class LoraDataset:
    """Images at their training size with their tags; ``plan_epoch`` turns them into batches of captions."""

    folder: Path
    images: list[TrainingImage]
    recipe: CaptionRecipe = field(default_factory=CaptionRecipe)
    repeats: int = 1
    resolution: int = 512
    crop_mode: str = "buckets"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _encodings: list[tuple[list, dict]] = field(default_factory=list, repr=False)

    def encodings_for(self, encoders: tuple) -> dict:
        """A memo of encodings made with exactly these encoder objects (held by weak reference, so a model that
        was unloaded and replaced never matches); the last few sets are kept."""
        for refs, memo in self._encodings:
            if len(refs) == len(encoders) and all(r() is e for r, e in zip(refs, encoders)):
                return memo
        memo: dict = {}
        self._encodings = self._encodings[-2:] + [([weakref.ref(e) for e in encoders], memo)]
        return memo

    def __len__(self) -> int:
        return len(self.images)

    def buckets(self) -> dict[tuple[int, int], int]:
        """{(width, height): number of images}."""
        return dict(sorted(Counter(img.size for img in self.images).items()))

    def plan_epoch(self, epoch: int, batch_size: int, seed: int) -> list[list[tuple[int, str]]]:
        """The batches of one epoch: each a list of (image index, caption), all of one bucket. Every image comes
        ``repeats`` times; order and varying captions are drawn from ``seed`` and ``epoch`` (reproducible)."""
        rng = random.Random(seed * 100003 + epoch)
        by_bucket: dict[tuple[int, int], list[tuple[int, str]]] = {}
        for _ in range(self.repeats):
            for i, img in enumerate(self.images):
                by_bucket.setdefault(img.size, []).append((i, self.recipe.build(img.tags, rng)))
        batches = []
        for size in sorted(by_bucket):
            entries = by_bucket[size]
            rng.shuffle(entries)
            batches += [entries[j:j + batch_size] for j in range(0, len(entries), batch_size)]
        rng.shuffle(batches)
        return batches

    def steps_per_epoch(self, batch_size: int) -> int:
        return sum(-(-n * self.repeats // batch_size) for n in self.buckets().values())

    def report(self) -> str:
        """What was kept, what was skipped and why, and the buckets, in a few lines for the node's UI."""
        sources = Counter(img.caption_source for img in self.images)
        lines = [f"{self.folder}: {len(self.images)} images kept, {len(self.skipped)} skipped, "
                 f"repeats {self.repeats}, {self.crop_mode} at {self.resolution}px",
                 "captions: " + ", ".join(f"{n} from {s}" for s, n in sorted(sources.items()))]
        scores = [img.score for img in self.images if img.score is not None]
        if scores:
            lines.append(f"aesthetic scores kept: min {min(scores):.2f}, max {max(scores):.2f}")
        lines.append("buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in self.buckets().items()))
        lines += [f"skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def bucket_sizes(resolution: int, max_ratio: float = 2.5) -> list[tuple[int, int]]:
    """Sizes with about ``resolution``² pixels (never more), sides multiples of a step (64 for 256 px and up, else 8),
    aspect ratios up to ``max_ratio`` either way. Always holds the square."""
    step = 64 if resolution >= 256 else 8
    side = max(step, resolution // step * step)
    area = side * side
    sizes = {(side, side)}
    w = step
    while w <= side * max_ratio:
        h = min(area // w // step * step, int(side * max_ratio) // step * step)
        if h >= step and max(w / h, h / w) <= max_ratio:
            sizes.add((w, h))
        w += step
    return sorted(sizes)


def nearest_bucket(width: int, height: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The size whose aspect ratio is closest to the image's (in log space), the larger on a tie."""
    ratio = np.log(width / height)
    return min(sizes, key=lambda s: (abs(np.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def fit_image(image: Image.Image, size: tuple[int, int], crop: str, rng: random.Random) -> Image.Image:
    """Resize ``image`` to cover ``size`` keeping its aspect ratio, then crop to it (centre, or a random place)."""
    w, h = size
    scale = max(w / image.width, h / image.height)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    if crop == "random crop":
        left, top = rng.randint(0, rw - w), rng.randint(0, rh - h)
    else:
        left, top = (rw - w) // 2, (rh - h) // 2
    return image.crop((left, top, left + w, top + h))


def load_dataset(folder: str | Path, *, resolution: int = 512, crop_mode: str = "buckets",
                 recipe: CaptionRecipe | None = None, repeats: int = 1, require_captions: bool = False,
                 score: ScoreFn | None = None, min_score: float = 0.0, seed: int = 0,
                 score_batch: int = 16, score_needs_captions: bool = False) -> LoraDataset:
    """Read every image of ``folder`` with its caption into a :class:`LoraDataset`.

    ``score`` (optional) maps PIL images and their captions to scores; images below ``min_score`` are skipped.
    ``score_needs_captions`` (a prompt-aware scorer): images without a caption are skipped with the reason.
    Unreadable images, images without a caption (when ``require_captions``) and low scores are skipped and
    listed in ``skipped`` with the reason; a folder left with no image raises :class:`DatasetError`."""
    folder = Path(folder)
    if crop_mode not in CROP_MODES:
        raise DatasetError(f"crop mode {crop_mode!r}: use one of {', '.join(CROP_MODES)}")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; put the training images (with .txt/.json captions or a "
                           "metadata.csv) in a folder under ComfyUI's input directory and give its name")
    sizes = bucket_sizes(resolution) if crop_mode == "buckets" else [(resolution, resolution)]
    rng = random.Random(seed)
    skipped: list[tuple[str, str]] = []
    images: list[TrainingImage] = []
    candidates = captioned_images(folder, read_metadata_csv(folder), require_captions, skipped,
                                  needs_caption="the scorer reads each image's caption as its prompt"
                                  if score is not None and score_needs_captions else "")
    for chunk in iter(lambda: list(itertools.islice(candidates, score_batch)), []):  # one scoring batch in memory
        scores = aesthetic_scores(score, [c.image for c in chunk], [", ".join(c.tags) for c in chunk])
        for candidate, s in zip(chunk, scores):
            if s is not None and s < min_score:
                skipped.append((candidate.name, f"aesthetic score {s:.2f} < {min_score:.2f}"))
                continue
            size = nearest_bucket(candidate.image.width, candidate.image.height, sizes)
            pixels = pil_to_uint8(fit_image(candidate.image, size, crop_mode, rng))
            images.append(TrainingImage(candidate.path, candidate.tags, candidate.source, pixels, s))
    for name, why in skipped:
        log.info("Aesthete dataset %s: skipped %s: %s", folder, name, why)
    if not images:
        reasons = "; ".join(f"{n}: {w}" for n, w in skipped[:5]) or "no image files"
        raise DatasetError(f"{folder}: no usable training image ({reasons})")
    return LoraDataset(folder, images, recipe or CaptionRecipe(), max(1, repeats), resolution, crop_mode, skipped)


@dataclass
class Candidate:
    """An image of the folder, opened, with its caption; not yet scored or fitted to a bucket."""

    path: Path
    name: str  # relative to the dataset folder, as the report lists it
    tags: list[str]
    source: str
    image: Image.Image


def captioned_images(folder: Path, metadata: dict[str, str], require_captions: bool,
                     skipped: list[tuple[str, str]], needs_caption: str = "") -> Iterator[Candidate]:
    """Every image of ``folder`` (subfolders too) that opens (``common.images.open_image``, the rule Score Folder
    keeps) and has a readable caption, in order; the others go to ``skipped`` with the reason."""
    for path in list_images(folder, recursive=True):
        name = str(path.relative_to(folder))
        opened = open_image(path)
        if opened.skipped:
            skipped.append((name, opened.reason))
            continue
        try:
            tags, source = find_caption(path, metadata, path.relative_to(folder).as_posix())
        except CaptionError as e:
            skipped.append((name, str(e)))
            continue
        if (require_captions or needs_caption) and not tags:
            skipped.append((name, "no caption (.txt, .json or metadata.csv)" + (f": {needs_caption}"
                                                                                  if needs_caption else "")))
            continue
        yield Candidate(path, name, tags, source, opened.image)


def aesthetic_scores(score: ScoreFn | None, images: list[Image.Image], captions: list[str]) -> list[float | None]:
    """One score per image from ``score`` (None each when there is no scorer)."""
    if score is None or not images:
        return [None] * len(images)
    scores = [float(s) for s in score(images, captions)]
    if len(scores) != len(images):
        raise DatasetError(f"the aesthetic scorer returned {len(scores)} scores for {len(images)} images")
    return scores
