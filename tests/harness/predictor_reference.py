"""The LAION aesthetic predictor's reference: the issue's code (its processor per image, ``predictor(**inputs).logits``)
from simple-aesthetics-predictor, and the images the number and speed tests score with it and with the pack."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

# not 224, not square, one smaller than the crop, one portrait
SIZES = [(300, 200), (97, 131), (512, 512), (640, 360), (20, 50)]


def random_images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for w, h in SIZES:  # smooth gradients plus noise: closer to photos than pure noise
        x = np.linspace(0, 1, w)[None, :, None]
        y = np.linspace(0, 1, h)[:, None, None]
        base = np.concatenate([x * np.ones((h, 1, 1)), y * np.ones((1, w, 1)), (x * y)], axis=2)
        arr = np.clip(base * 200 + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(arr))
    return images


def reference_scores(folder, images) -> list[float]:
    """The issue's reference code, image by image."""
    from aesthetics_predictor import AestheticsPredictorV1, AestheticsPredictorV2Linear, AestheticsPredictorV2ReLU
    from transformers import CLIPImageProcessor

    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    cls = {c.__name__: c for c in (AestheticsPredictorV1, AestheticsPredictorV2Linear, AestheticsPredictorV2ReLU)}[arch]
    predictor = cls.from_pretrained(str(folder))
    processor = CLIPImageProcessor.from_pretrained(str(folder))
    out = []
    for image in images:
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            out.append(predictor(**inputs).logits.tolist()[0][0])
    return out


# the speed tests' images: pure noise of awkward sizes (not 224, not square, smaller than the crop)
NOISE_SIZES = [(300, 200), (97, 131), (224, 224), (20, 50), (64, 64)]


def noise_images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in NOISE_SIZES]
