"""The loss history as a picture: raw loss (light) and its smoothed curve (dark), drawn with PIL."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..common.charts import BOTTOM, LEFT, RIGHT, TOP, draw_axes, plotter, value_range


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing); ``weight`` 0 returns the input."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing {weight}: must be in [0, 1)")
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def draw_loss_graph(losses: Sequence[float], smoothing: float = 0.9, width: int = 800, height: int = 480,
                    title: str = "") -> Image.Image:
    """A line chart of ``losses`` per step with axes, min/max labels and the smoothed curve."""
    losses = [float(v) for v in losses if math.isfinite(float(v))]
    if not losses:
        raise ValueError("no finite loss value to draw; train first")
    left, top, bottom = LEFT, TOP, BOTTOM
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lo, hi = value_range(losses)
    plot_h = height - top - bottom
    n = len(losses)
    point = plotter(width, height, n, lo, hi)
    draw_axes(draw, font, width, lo, hi, plot_h)
    for series, colour, w in ((losses, (150, 180, 235), 1), (smooth(losses, smoothing), (20, 60, 170), 3)):
        pts = [point(i, v) for i, v in enumerate(series)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=w)
        else:
            x, y = pts[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    draw.text((left, height - bottom + 8), f"step 1 .. {n}", fill="black", font=font)
    label = title or f"loss: first {losses[0]:.4g}, last {losses[-1]:.4g}, min {min(losses):.4g}"
    draw.text((left, 8), label + f"  (smoothed {smoothing:g})", fill="black", font=font)
    return img


def draw_epoch_graph(values: Sequence[float], width: int = 480, height: int = 480, title: str = "",
                     highlight: int | None = None) -> Image.Image:
    """One value per epoch (mean validation score, say) as dots joined by a line, in the loss graph's style;
    epochs without a value (NaN) are left out and ``highlight`` (an index) is circled."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    known = [(i, float(v)) for i, v in enumerate(values) if math.isfinite(float(v))]
    draw.text((LEFT, 8), title, fill="black", font=font)
    if not known:
        draw.text((LEFT, height // 2), "no score (no aesthetic predictor)", fill="black", font=font)
        return img
    lo, hi = value_range([v for _, v in known])
    plot_h = height - TOP - BOTTOM
    point = plotter(width, height, len(values), lo, hi)
    draw_axes(draw, font, width, lo, hi, plot_h)
    pts = [point(i, v) for i, v in known]
    if len(pts) > 1:
        draw.line(pts, fill=(20, 60, 170), width=3)
    for (i, _), (x, y) in zip(known, pts):
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(20, 60, 170))
        if i == highlight:
            draw.ellipse([x - 8, y - 8, x + 8, y + 8], outline=(200, 30, 30), width=2)
        draw.text((x - 3, height - BOTTOM + 8), str(i + 1), fill="black", font=font)
    draw.text((width - RIGHT - 40, height - BOTTOM + 20), "epoch", fill="black", font=font)
    return img
