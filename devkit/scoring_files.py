"""Image files for the scoring tests: good ones in every awkward mode, and bad ones of every kind."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(w: int, h: int, seed: int = 0) -> np.ndarray:
    """uint8 [h,w,3]: gradients plus noise, so that different images score differently."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = np.concatenate([x * np.ones((h, 1, 1)), y * np.ones((1, w, 1)), x * y], axis=2)
    return np.clip(base * 200 + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def exif_rotated_jpeg(path: Path, seed: int = 3) -> Image.Image:
    """A landscape JPEG stored with EXIF orientation 6 (displayed rotated 90 degrees clockwise): returns the upright
    image a viewer shows."""
    stored = Image.fromarray(photo_like(80, 48, seed))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(path) as im:
        decoded = im.convert("RGB")
    return decoded.transpose(Image.Transpose.ROTATE_270)


def write_mixed_folder(folder: Path) -> dict[str, str]:
    """A folder of good images in every mode and bad files. Returns file name -> "scored" or the start of the skip
    reason the scorer must give."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    def good(name: str, image: Image.Image, **save) -> None:
        image.save(folder / name, **save)
        expected[name] = "scored"

    good("a_rgb.png", Image.fromarray(photo_like(90, 60, 1)))
    rgba = Image.fromarray(photo_like(64, 64, 2)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 64)))
    good("b_rgba.png", rgba)
    good("c_la.png", Image.fromarray(photo_like(50, 70, 3)).convert("LA"))
    good("d_palette.gif", Image.fromarray(photo_like(40, 40, 4)).convert("P"))
    good("e_cmyk.jpg", Image.fromarray(photo_like(60, 40, 5)).convert("CMYK"))
    sixteen = (np.linspace(0, 65535, 48 * 32).reshape(32, 48)).astype(np.uint16)
    good("f_16bit.png", Image.fromarray(sixteen))  # Pillow picks I;16
    exif_rotated_jpeg(folder / "g_exif_rotated.jpg")
    expected["g_exif_rotated.jpg"] = "scored"
    frames = [Image.fromarray(photo_like(32, 32, s)).convert("P") for s in (6, 7, 8)]
    frames[0].save(folder / "h_animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expected["h_animated.gif"] = "scored"

    (folder / "x_empty.png").write_bytes(b"")
    expected["x_empty.png"] = "empty file"
    (folder / "x_notes.pdf").write_text("not an image")
    expected["x_notes.pdf"] = "not an image"
    # a training folder's caption files are neither scored nor reported as skips
    (folder / "a_rgb.txt").write_text("1girl, blue hair")
    (folder / "metadata.csv").write_text("file_name,text\na_rgb.png,1girl\n")
    buf = io.BytesIO()
    Image.fromarray(photo_like(120, 120, 9)).save(buf, "PNG")
    (folder / "x_truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["x_truncated.png"] = "broken or truncated"
    (folder / "x_garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    expected["x_garbage.jpg"] = "not an image"
    # 12000 x 12000 one-bit pixels compress to a few kilobytes: a decompression bomb
    Image.new("1", (12000, 12000)).save(folder / "x_bomb.png", optimize=True)
    expected["x_bomb.png"] = "too many pixels"
    return expected
