"""CLIP-style preprocessing written once for every scorer, equal to what the publishers' code computed: PIL bicubic
resize of the shortest edge, centre crop, scale to 0..1, normalise.

Not transformers' ``CLIPImageProcessor``: from transformers 5 on it resizes with torch instead of PIL, which moves
pixel values by up to a few 1e-2 against transformers 4 (what PickScore, MPS and DiffSynth were run with), enough to
move a score by 1e-3 of its spread. The crop offset is rounded down as transformers 4 does (``floor``) or to the
nearest as torchvision's CenterCrop does (open_clip's preprocessing: ``round``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    size: int  # the shortest edge after resizing
    crop: int  # the square taken from the middle
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resample: int = Image.Resampling.BICUBIC
    crop_rounding: str = "floor"  # "floor" (transformers 4) or "round" (torchvision)

    @classmethod
    def from_folder(cls, folder: Path) -> Preprocess:
        """From a transformers ``preprocessor_config.json`` (or ``processor_config.json``'s image processor)."""
        folder = Path(folder)
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            path = folder / "processor_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config = config.get("image_processor", config)
        size = config.get("size", 224)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = config.get("crop_size", size)
        crop = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
        return cls(int(size), int(crop), tuple(config.get("image_mean", OPENAI_MEAN)),
                   tuple(config.get("image_std", OPENAI_STD)), int(config.get("resample", 3)))

    def one(self, image: Image.Image | torch.Tensor) -> np.ndarray:
        if isinstance(image, torch.Tensor):  # [3,H,W] uint8
            image = Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
        elif image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = int(self.size * long / short)
        new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=self.resample)
        rounding = (lambda x: int(round(x / 2.0))) if self.crop_rounding == "round" else (lambda x: x // 2)
        top, left = rounding(new_h - self.crop), rounding(new_w - self.crop)
        if top < 0 or left < 0:
            raise ValueError(f"image of {w}x{h} resized to {new_w}x{new_h} is smaller than the {self.crop} px crop")
        pixels = np.asarray(image)[top:top + self.crop, left:left + self.crop]
        return pixels

    def __call__(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """[B,3,crop,crop] float32 pixel values."""
        batch = torch.from_numpy(np.stack([self.one(im) for im in images])).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (batch - mean) / std


@dataclass(frozen=True)
class Letterbox:
    """open_clip's preprocessing as HPSv2 and DiffSynth run it (``light_augmentation``: ``ResizeMaxSize``): the
    image as 0..1 floats, its longest side resized to ``size`` (bicubic on the tensor, antialiased, as torchvision
    resizes a tensor), the rest padded with 0 around it (centred), then normalised."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def one(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):  # [3,H,W] uint8
            pixels = image.float() / 255.0
        else:
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
        h, w = pixels.shape[1:]
        scale = self.size / float(max(h, w))
        if scale != 1.0:
            new_h, new_w = round(h * scale), round(w * scale)
            pixels = torch.nn.functional.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic",
                                                     align_corners=False, antialias=True)[0]
        pad_h, pad_w = self.size - pixels.shape[1], self.size - pixels.shape[2]
        pixels = torch.nn.functional.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std

    def __call__(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.one(im) for im in images])


@dataclass(frozen=True)
class Squash:
    """SigLIP's preprocessing as transformers 4 ran it: the whole image resized to ``size`` x ``size`` (PIL bicubic,
    the aspect ratio not kept), scaled to 0..1, normalised."""

    size: int = 384
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_folder(cls, folder: Path) -> Squash:
        config = json.loads((Path(folder) / "preprocessor_config.json").read_text(encoding="utf-8"))
        size = config.get("size", 384)
        size = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else size
        return cls(int(size), tuple(config.get("image_mean", (0.5,) * 3)), tuple(config.get("image_std", (0.5,) * 3)),
                   int(config.get("resample", 3)))

    def __call__(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        arrays = []
        for image in images:
            if isinstance(image, torch.Tensor):
                image = Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")
            elif image.mode != "RGB":
                image = image.convert("RGB")
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), resample=self.resample)
            arrays.append(np.asarray(image))
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        return (batch - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
