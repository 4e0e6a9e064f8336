"""The pack's one rule for each small job (``aesthete.common``), and that scoring, the training dataset, the composer
and the predictor loader keep it alike: which files are images, how one is opened, how a caption is split, which
folders hold a predictor, which names stay inside their folder, atomic writes. No ComfyUI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aesthete.common import files as common_files
from aesthete.common.files import write_atomic, write_safetensors
from aesthete.common.images import list_images, open_image, pil_to_tensor, tensor_to_pil
from aesthete.common.paths import OutsideRootError, path_inside
from aesthete.common.tags import split_tags
from aesthete.prompts import composer
from aesthete.scoring import registry
from aesthete.common import captions as caption_files
from aesthete.training import captions
from aesthete.training.dataset import load_dataset
from devkit.training_data import pattern_image


# --- which files are images, how one is opened -------------------------------------------------------------------

def test_dataset_reads_gif_tiff_and_jfif_like_score_folder(tmp_path):
    for name, fmt in (("a.gif", "GIF"), ("b.tif", "TIFF"), ("c.tiff", "TIFF"), ("d.jfif", "JPEG")):
        pattern_image().save(tmp_path / name, format=fmt)
        (tmp_path / name).with_suffix(".txt").write_text("stripes")
    ds = load_dataset(tmp_path, resolution=64)
    assert sorted(img.path.name for img in ds.images) == ["a.gif", "b.tif", "c.tiff", "d.jfif"]
    assert [p.name for p in list_images(tmp_path)] == ["a.gif", "b.tif", "c.tiff", "d.jfif"]


def test_dataset_lists_a_non_image_as_skipped_with_its_reason(tmp_path):
    pattern_image().save(tmp_path / "a.png")
    (tmp_path / "notes.md").write_text("not a picture")
    ds = load_dataset(tmp_path, resolution=64)
    assert ds.skipped == [("notes.md", "not an image (unknown format)")]


def test_decompression_bomb_in_a_training_folder_is_a_skip_not_a_traceback(tmp_path, monkeypatch):
    pattern_image().save(tmp_path / "a.png")
    Image.new("RGB", (200, 200)).save(tmp_path / "bomb.png")
    # Pillow raises DecompressionBombError (not an OSError) above twice its limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    ds = load_dataset(tmp_path, resolution=64)
    assert [img.path.name for img in ds.images] == ["a.png"]
    assert ds.skipped[0][0] == "bomb.png" and "decompression bomb" in ds.skipped[0][1]


def test_dataset_lays_transparency_over_white_as_scoring_does(tmp_path):
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    ds = load_dataset(tmp_path, resolution=64, crop_mode="center crop")
    assert ds.images[0].image[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(open_image(tmp_path / "clear.png").image)[0, 0].tolist() == [255, 255, 255]


def test_dataset_scales_16_bit_images_as_scoring_does(tmp_path):
    Image.fromarray(np.full((64, 64), 32896, dtype=np.uint16)).save(tmp_path / "grey16.png")
    ds = load_dataset(tmp_path, resolution=64, crop_mode="center crop")
    assert ds.images[0].image[0, 0].tolist() == [128, 128, 128]  # scaled, not clipped to white


def test_the_aesthetic_filter_sees_the_pixels_score_folder_sees(tmp_path):
    Image.new("LA", (64, 64), (0, 0)).save(tmp_path / "clear.png")
    seen = []

    def score(images, captions):  # the filter's scorer: the images and their captions (prompts)
        seen.extend(np.asarray(im).copy() for im in images)
        return [9.0] * len(images)

    load_dataset(tmp_path, resolution=64, score=score, min_score=1.0)
    assert np.array_equal(seen[0], np.asarray(open_image(tmp_path / "clear.png").image))


def test_tensor_and_pil_convert_once_and_round_trip():
    image = pattern_image()
    tensor = pil_to_tensor(image)
    assert tensor.shape == (1, image.height, image.width, 3) and tensor.dtype == torch.float32
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)), np.asarray(image))
    # quantised as ComfyUI's Save Image: clip(255 * x) then truncation
    assert np.asarray(tensor_to_pil(torch.full((2, 2, 3), 0.999)))[0, 0].tolist() == [254, 254, 254]


# --- how a caption is split into tags ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, tags", [
    ("red，方块", ["red", "方块"]),
    ("ganyu (genshin impact, cosplay), smile", ["ganyu (genshin impact, cosplay)", "smile"]),
    ("1girl,\nsolo ,  ", ["1girl", "solo"]),
])
def test_training_captions_split_tags_as_the_composer_does(tmp_path, text, tags):
    assert split_tags(text) == tags
    assert composer.split_tags is split_tags and caption_files.split_tags is split_tags
    pattern_image().save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    assert caption_files.find_caption(tmp_path / "a.png", {}) == (tags, "txt")


def test_keep_first_tag_keeps_a_chinese_tag_not_the_whole_caption(tmp_path):
    pattern_image().save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("红发，微笑，户外", encoding="utf-8")
    recipe = captions.CaptionRecipe(keep_first_tags=1, shuffle_tags=True)
    ds = load_dataset(tmp_path, resolution=64, recipe=recipe)
    assert ds.images[0].tags == ["红发", "微笑", "户外"]


# --- which folders hold a predictor -----------------------------------------------------------------------------

@pytest.mark.parametrize("processor_file", ["preprocessor_config.json", "processor_config.json"])
def test_a_transformers_5_processor_folder_is_a_predictor(tmp_path, processor_file):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not registry.is_predictor_folder(tmp_path)
    (tmp_path / processor_file).write_text(json.dumps({"image_processor": {}}))
    assert registry.is_predictor_folder(tmp_path)


# --- which names may leave their folder -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "  ", ".", "../x", "a/../../x", "/etc", "..", "x\x00"])
def test_names_that_are_empty_or_leave_the_root_are_refused(tmp_path, name):
    with pytest.raises(OutsideRootError):
        path_inside(tmp_path, name, what="folder")


def test_names_inside_the_root(tmp_path):
    assert path_inside(tmp_path, " styles/mine ") == tmp_path / "styles" / "mine"
    assert path_inside(tmp_path, "a/../b") == tmp_path / "b"
    assert path_inside(tmp_path, str(tmp_path / "c")) == tmp_path / "c"  # absolute, but inside


def test_a_symlink_placed_inside_the_root_is_followed(tmp_path):
    store, root = tmp_path / "store", tmp_path / "models"
    store.mkdir()
    root.mkdir()
    os.symlink(store, root / "shared")
    assert path_inside(root, "shared/model") == root / "shared" / "model"


def test_allow_outside_accepts_any_name_but_the_empty_one(tmp_path):
    assert path_inside(tmp_path / "input", "../elsewhere", allow_outside=True) == tmp_path / "elsewhere"
    with pytest.raises(OutsideRootError):
        path_inside(tmp_path, "", allow_outside=True)


def test_the_error_names_the_input_the_root_and_what_to_do(tmp_path):
    with pytest.raises(OutsideRootError, match=r"folder '\.\./x' leads outside ComfyUI's input directory .*, or turn"):
        path_inside(tmp_path, "../x", what="folder", where="ComfyUI's input directory", hint="turn on the switch")


# --- writing files --------------------------------------------------------------------------------------------

def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = write_atomic(tmp_path / "sub" / "a.txt", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, broken)
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["a.txt"]
    assert write_atomic(path, b"\x00new").read_bytes() == b"\x00new"


def test_write_safetensors_stores_metadata_as_strings(tmp_path, monkeypatch):
    from safetensors import safe_open

    path = write_safetensors(tmp_path / "x.safetensors", {"w": torch.ones(2, 2).t()}, {"a": "b", "n": 3})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"a": "b", "n": "3"} and f.get_tensor("w").tolist() == [[1, 1], [1, 1]]
    monkeypatch.setattr(common_files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_safetensors(tmp_path / "y.safetensors", {"w": torch.ones(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]


def test_a_transformers_5_processor_folder_loads_with_its_own_preprocessing(tmp_path):
    """processor_config.json holds the image processor nested; it is read, not replaced by CLIP's defaults."""
    import shutil

    from aesthete.scoring.predictor import load_predictor
    from devkit.factories import aesthetic_predictor

    original = aesthetic_predictor("tiny")
    settings = {**json.loads((original / "preprocessor_config.json").read_text()),
                "image_mean": [0.2, 0.3, 0.4], "image_std": [0.9, 0.8, 0.7]}  # not CLIP's defaults
    v4, v5 = tmp_path / "v4", tmp_path / "v5"
    for folder in (v4, v5):
        shutil.copytree(original, folder)
        (folder / "preprocessor_config.json").unlink()
    (v4 / "preprocessor_config.json").write_text(json.dumps(settings))
    (v5 / "processor_config.json").write_text(json.dumps({"image_processor": settings,
                                                          "processor_class": "CLIPProcessor"}))
    images = [pattern_image(), pattern_image((50, 80), seed=1)]
    expected = load_predictor(v4, "cpu", "fp32").score_images(images)
    assert expected != pytest.approx(load_predictor(original, "cpu", "fp32").score_images(images), abs=1e-4)
    assert load_predictor(v5, "cpu", "fp32").score_images(images) == pytest.approx(expected, abs=1e-6)


def test_the_command_line_uses_the_models_folder_of_the_comfyui_the_pack_is_in(tmp_path):
    """A 1.7 GB predictor is never fetched twice: `aesthete score` looks where the nodes look."""
    from aesthete.common.paths import models_root

    comfy = tmp_path / "ComfyUI"
    pack = comfy / "custom_nodes" / "comfyui-aesthete"
    pack.mkdir(parents=True)
    (comfy / "models").mkdir()
    assert models_root(pack, environ={}) == comfy / "models"  # installed in custom_nodes/
    checkout = tmp_path / "checkout"
    (checkout / ".comfyui" / "base" / "models").mkdir(parents=True)
    assert models_root(checkout, environ={}) == checkout / ".comfyui" / "base" / "models"  # `make run`'s ComfyUI
    assert models_root(tmp_path / "elsewhere", environ={}) == Path("models")
    assert models_root(pack, environ={"AESTHETE_MODELS_DIR": "/srv/models"}) == Path("/srv/models")


def test_a_safetensors_file_read_in_another_precision_is_the_file_cast_tensor_by_tensor(tmp_path):
    """The scorers read fp16 files as fp32 this way (one tensor at a time, never the whole file beside its cast copy):
    floating tensors cast exactly, integer ones kept, the file's own precision mapped as it is, a truncated file named."""
    from safetensors.torch import load_file, save_file

    from aesthete.common.tensors import TensorFileError, read_safetensors

    gen = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(7, 5, generator=gen).half(), "b": torch.randn(5, generator=gen).bfloat16(),
             "ids": torch.arange(6).view(2, 3), "empty": torch.zeros(0, 4, dtype=torch.float16),
             "big": torch.randn(64, 33, generator=gen).half()}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    cast = read_safetensors(path, "advice", torch.float32)
    assert set(cast) == set(state)
    for key, tensor in state.items():
        want = tensor.float() if tensor.is_floating_point() else tensor
        assert cast[key].dtype == want.dtype and torch.equal(cast[key], want), key
    assert len({cast[k].data_ptr() for k in ("w", "b", "big")}) == 3  # each its own storage, not the read buffer
    same = read_safetensors(path, "advice", torch.float16)  # bf16 "b" differs: cast as well
    assert same["w"].dtype == torch.float16 and torch.equal(same["w"], state["w"])
    assert same["b"].dtype == torch.float16 and torch.equal(same["b"], state["b"].half())
    plain = read_safetensors(path, "advice")
    assert all(torch.equal(plain[k], v) and plain[k].dtype == v.dtype for k, v in load_file(str(path)).items())
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(TensorFileError, match="m.safetensors.*advice"):
        read_safetensors(path, "advice", torch.float32)
