"""Small training folders for the LoRA trainer's tests: images of one solid pattern with captions in every layout
the dataset reader takes (name.txt, name.json, metadata.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def pattern_image(size: tuple[int, int] = (64, 64), seed: int = 0, period: int = 16) -> Image.Image:
    """Red/blue diagonal stripes (one pattern for the whole set) with a little per-image noise."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    stripe = ((xx + yy) // (period // 2)) % 2
    img = np.where(stripe[..., None] == 1, np.array([220, 40, 40]), np.array([30, 60, 210])).astype(np.float32)
    img += np.random.default_rng(seed).normal(0, 4, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def write_pattern_folder(folder: Path, count: int = 4, size: tuple[int, int] = (64, 64),
                         layouts: tuple[str, ...] = ("txt", "json", "csv")) -> Path:
    """``count`` pattern images in ``folder``, captioned in turn by the given layouts."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_rows = []
    for i in range(count):
        name = f"pattern_{i:02d}.png"
        pattern_image(size, seed=i).save(folder / name)
        tags = ["stripes", "red and blue", f"variant {i}"]
        layout = layouts[i % len(layouts)]
        if layout == "txt":
            (folder / name).with_suffix(".txt").write_text(", ".join(tags))
        elif layout == "json":
            (folder / name).with_suffix(".json").write_text(json.dumps(tags))
        else:
            csv_rows.append(f'{name},"{", ".join(tags)}"')
    if csv_rows:
        (folder / "metadata.csv").write_text("file_name,text\n" + "\n".join(csv_rows) + "\n")
    return folder
