"""Small line charts drawn with PIL (the loss graph, scores per epoch or per file): the plot area, its axes and
the mapping of values to pixels, and a chart of several named lines."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 36  # the plot's margins: value labels left, title above, x label below


def value_range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:  # a flat line still needs a scale
        lo, hi = lo - 0.5 * abs(lo) - 1e-6, hi + 0.5 * abs(hi) + 1e-6
    return lo, hi


def draw_axes(draw: ImageDraw.ImageDraw, font, width: int, lo: float, hi: float, plot_h: int) -> None:
    """Horizontal grid lines with their values, and the two axes."""
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = TOP + plot_h * frac
        draw.line([(LEFT, y), (width - RIGHT, y)], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{hi - (hi - lo) * frac:.4g}", fill="black", font=font)
    draw.line([(LEFT, TOP), (LEFT, TOP + plot_h), (width - RIGHT, TOP + plot_h)], fill="black", width=2)


def plotter(width: int, height: int, n: int, lo: float, hi: float):
    """Image coordinates of point ``i`` (of ``n``) with value ``v`` inside the plot area, ``lo``..``hi`` top to bottom."""
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def point(i: int, v: float) -> tuple[float, float]:
        x = LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)
        return x, TOP + plot_h * (1 - (v - lo) / (hi - lo))

    return point



# distinguishable line colours (the first is the loss graph's dark blue)
COLOURS = ((20, 60, 170), (200, 90, 20), (30, 140, 60), (150, 40, 160), (120, 120, 120), (0, 150, 170))


def draw_lines_graph(series: dict[str, Sequence[float]], labels: Sequence[str], title: str = "", width: int = 720,
                     height: int = 400, highlight: tuple[str, int] | None = None) -> Image.Image:
    """Named lines over the same points (``labels`` on the x axis), each with its dots and its name in a legend;
    NaN values are left out and ``highlight`` (line name, point index) is circled in red."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((LEFT, 8), title, fill="black", font=font)
    known = [float(v) for values in series.values() for v in values if math.isfinite(float(v))]
    if not known:
        draw.text((LEFT, height // 2), "no score to draw (no judge, or every row failed)", fill="black", font=font)
        return img
    lo, hi = value_range(known)
    draw_axes(draw, font, width, lo, hi, height - TOP - BOTTOM)
    point = plotter(width, height, len(labels), lo, hi)
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        pts = [(i, point(i, float(v))) for i, v in enumerate(values) if math.isfinite(float(v))]
        if len(pts) > 1:
            draw.line([p for _, p in pts], fill=colour, width=3)
        for i, (x, y) in pts:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            if highlight == (name, i):
                draw.ellipse([x - 9, y - 9, x + 9, y + 9], outline=(200, 30, 30), width=2)
        draw.text((width - RIGHT - 150, TOP + 4 + 14 * n), f"- {name}", fill=colour, font=font)
    for i, label in enumerate(labels):
        x, _ = point(i, lo)
        draw.text((x - 3 * len(label), height - BOTTOM + 8), label, fill="black", font=font)
    return img
