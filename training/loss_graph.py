"""The loss history as a picture: raw loss (light) and its smoothed curve (dark), drawn with PIL."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


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
    left, right, top, bottom = 64, 16, 28, 36
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lo, hi = min(losses), max(losses)
    if hi - lo < 1e-12:  # a flat line still needs a scale
        lo, hi = lo - 0.5 * abs(lo) - 1e-6, hi + 0.5 * abs(hi) + 1e-6
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(losses)

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)
        return x, top + plot_h * (1 - (v - lo) / (hi - lo))

    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):  # grid with values
        y = top + plot_h * frac
        draw.line([(left, y), (width - right, y)], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{hi - (hi - lo) * frac:.4g}", fill="black", font=font)
    draw.line([(left, top), (left, top + plot_h), (width - right, top + plot_h)], fill="black", width=2)
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
