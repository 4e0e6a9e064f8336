"""Which files of a folder are images, how one is opened, and how images and ComfyUI's IMAGE tensors convert:
one rule for scoring, the training dataset and the folder nodes.

Every listed file either becomes an upright RGB PIL image or a skip with a reason a user can act on: empty, not an
image, truncated, too many pixels (decompression bomb), unreadable. Opening lays transparency over white, scales
16-bit and float images to 8 bits and applies the EXIF orientation. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger("aesthete")

# Pillow's own default bomb limit (about 89.5 megapixels); a folder can lower or raise it
DEFAULT_MAX_PIXELS = 89_478_485
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"})


@dataclass(frozen=True)
class OpenedImage:
    path: Path
    image: Image.Image | None  # RGB, upright; None when skipped
    reason: str = ""  # why it was skipped, or a note (animated: first frame) when it was not

    @property
    def skipped(self) -> bool:
        return self.image is None


# caption and metadata files of training datasets (kohya .txt, tag .json, DiffSynth metadata.csv)
CAPTION_SUFFIXES = frozenset({".txt", ".caption", ".json", ".csv", ".tags"})


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The files of ``folder`` to open as images, sorted: every regular file, images or not (``open_image`` turns a
    non-image into a skip with its reason, so nothing is left out silently), except hidden files and folders (dot
    names) and caption/metadata files (CAPTION_SUFFIXES)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    pattern = "**/*" if recursive else "*"
    files = [p for p in folder.glob(pattern) if p.is_file() and not any(part.startswith(".")
                                                                      for part in p.relative_to(folder).parts)]
    # a training folder's captions and tag files sit beside the images: they are not skips worth reporting
    sidecars = [p for p in files if p.suffix.lower() in CAPTION_SUFFIXES]
    if sidecars:
        log.debug("%s: %d caption/metadata file(s) not scored", folder, len(sidecars))
    return sorted(p for p in files if p.suffix.lower() not in CAPTION_SUFFIXES)


def to_rgb(image: Image.Image, background: tuple[int, int, int] | None = (255, 255, 255)) -> Image.Image:
    """RGB view of any Pillow mode. Transparent pixels are laid over ``background`` (None drops the alpha channel
    as ``Image.convert("RGB")`` does); 16/32-bit and float greyscale are scaled to 8 bits instead of clipped."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255) else 255.0
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if background is None:
            return image.convert("RGB")
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def open_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               background: tuple[int, int, int] | None = (255, 255, 255)) -> OpenedImage:
    """Open one file as an upright RGB image (EXIF orientation applied, first frame of an animation), or say why
    not. Never raises for a bad file; the reason is also logged."""
    def skip(reason: str) -> OpenedImage:
        log.warning("skipped %s: %s", path, reason)
        return OpenedImage(path, None, reason)

    try:
        if os.path.getsize(path) == 0:
            return skip("empty file (0 bytes)")
    except OSError as e:
        return skip(f"cannot read: {e.strerror or e}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:  # checked before any pixel is decoded
                    return skip(f"too many pixels ({width}x{height} > {max_pixels}): possible decompression bomb")
                note = ""
                if getattr(im, "is_animated", False):
                    note = f"animated ({getattr(im, 'n_frames', '?')} frames): first frame scored"
                    im.seek(0)
                im.load()
                upright = ImageOps.exif_transpose(im) or im
                rgb = to_rgb(upright, background)
                rgb.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return skip(f"too many pixels: possible decompression bomb ({e})")
    except UnidentifiedImageError:
        return skip("not an image (unknown format)")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return skip(f"broken or truncated image ({e})")
    if rgb.width == 0 or rgb.height == 0:
        return skip("image has no pixels")
    return OpenedImage(path, rgb, note)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """One RGB image as ComfyUI's IMAGE: [1, H, W, 3] float32 0..1 (other modes go through ``to_rgb``)."""
    return torch.from_numpy(np.asarray(to_rgb(image), dtype=np.float32) / 255.0)[None]


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """One RGB image as [H, W, 3] uint8 (a quarter of float32's memory; ``/ 255`` gives the IMAGE values)."""
    return torch.from_numpy(np.array(to_rgb(image), dtype=np.uint8))


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One image of an IMAGE batch ([H,W,C] or [1,H,W,C], 0..1) as an RGB PIL image, quantised as ComfyUI's Save
    Image does (``clip(255 * x)`` then truncation)."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}; convert them one at a time")
        image = image[0]
    return Image.fromarray(tensor_to_uint8(image)[0].permute(1, 2, 0).numpy(), "RGB")


def tensor_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """A [B,H,W,C] float batch (ComfyUI's IMAGE, 0..1) as [B,3,H,W] uint8, quantised exactly as ComfyUI saves a PNG
    (``clip(255 * x)`` then truncation), so scoring the tensor equals scoring the saved file."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected an image batch [B,H,W,C], got shape {tuple(images.shape)}")
    channels = images.shape[-1]
    if channels == 1:
        images = images.expand(-1, -1, -1, 3)
    elif channels == 4:
        images = images[..., :3]
    elif channels != 3:
        raise ValueError(f"expected 1, 3 or 4 channels in the last dimension, got shape {tuple(images.shape)}")
    return (images.detach().float().cpu() * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2).contiguous()


def finite_mask(images: torch.Tensor) -> torch.Tensor:
    """[B] bool: True where an image of a [B,H,W,C] batch has no NaN or infinity."""
    flat = images.reshape(images.shape[0], -1) if images.ndim == 4 else images.reshape(1, -1)
    return torch.isfinite(flat).all(dim=1)
