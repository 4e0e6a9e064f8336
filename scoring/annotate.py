"""Keeping a score with its image: in the file name, in PNG text metadata, or drawn on a preview."""

from __future__ import annotations

import math
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
