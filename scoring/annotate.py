"""Keeping a score with its image: in the file name, in PNG text metadata, or drawn on a preview."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..common.files import write_atomic

SCORE_KEY = "aesthetic_score"
MODEL_KEY = "aesthetic_model"
SCORES_KEY = "aesthetic_scores"  # a judge's every scorer's score, JSON


def format_score(score: float) -> str:
    return f"{score:.2f}" if math.isfinite(score) else "nan"


def score_filename(stem: str, counter: int, score: float) -> str:
    """``stem_00001_6.42_.png``: ComfyUI's counter first (so names still sort by time), then the score."""
    return f"{stem}_{counter:05}_{format_score(score)}_.png"


def png_info(score: float, model: str = "", extra: dict[str, str] | None = None,
             scores: dict[str, float] | None = None) -> PngInfo:
    """PNG text chunks: ``aesthetic_score`` (full precision), ``aesthetic_model``, ``aesthetic_scores`` (a judge's
    every scorer, JSON) and ``extra`` (ComfyUI's prompt and workflow)."""
    import json

    info = PngInfo()
    for key, value in (extra or {}).items():
        info.add_text(key, value)
    info.add_text(SCORE_KEY, repr(float(score)))
    if model:
        info.add_text(MODEL_KEY, model)
    if scores:
        info.add_text(SCORES_KEY, json.dumps(scores))
    return info


def read_score(path: Path) -> float | None:
    """The ``aesthetic_score`` stored in a PNG written by ``save_png``, or None."""
    with Image.open(path) as im:
        value = im.info.get(SCORE_KEY) or getattr(im, "text", {}).get(SCORE_KEY)
    return float(value) if value is not None else None


def save_png(image: Image.Image, path: Path, info: PngInfo | None = None, compress_level: int = 4) -> None:
    """Write a PNG atomically (a temporary file in the same folder, then renamed)."""
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info, compress_level=compress_level))


def draw_score(image: Image.Image, score: float, label: str = "") -> Image.Image:
    """A copy of ``image`` with the score in a dark box at the top-left corner, sized to the image."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    size = max(10, min(out.width, out.height) // 10)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    text = f"{label}{format_score(score)}"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 5)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _cell(image: Image.Image, cell: int) -> Image.Image:
    image = image.convert("RGB")
    if max(image.size) > cell:
        image = image.copy()
        image.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    return image


@dataclass
class GridRow:
    """One row of a scored grid: a few heading lines, the images, their scores (None: unscored)."""

    heading: Sequence[str]
    images: Sequence[Image.Image]
    scores: Sequence[float] | None = None
    highlight: bool = False  # the chosen row: its heading is red


def draw_scored_grid(rows: Sequence[GridRow], cell: int = 256, label_width: int = 120) -> Image.Image:
    """The rows one under the other, each headed by its lines, every image (shrunk to ``cell``) with its score
    drawn on as ``draw_score`` draws it. A row without images keeps its heading (a file that failed, say)."""
    if not rows:
        raise ValueError("no row to draw")
    cells = [[_cell(im, cell) for im in row.images] for row in rows]
    sizes = [im.size for row in cells for im in row] or [(cell, cell)]
    cell_w, cell_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    cell_h = max(cell_h, 16 * max(len(row.heading) for row in rows) + 8)
    gap = 2
    columns = max(1, max(len(row) for row in cells))
    grid = Image.new("RGB", (label_width + columns * (cell_w + gap), len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    for r, (row, images) in enumerate(zip(rows, cells)):
        y = r * (cell_h + gap)
        colour = (200, 30, 30) if row.highlight else (0, 0, 0)
        for line_no, line in enumerate(row.heading):
            draw.text((4, y + 4 + 16 * line_no), line, fill=colour, font=font)
        for c, image in enumerate(images):
            if row.scores is not None and c < len(row.scores):
                image = draw_score(image, row.scores[c])
            grid.paste(image, (label_width + c * (cell_w + gap), y))
    return grid
