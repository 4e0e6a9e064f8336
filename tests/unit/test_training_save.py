"""Saving a trained LoRA (atomic, inside its folder, metadata, DiffSynth copy) and the loss graph. No ComfyUI."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from aesthete.common.paths import OutsideRootError, path_inside
from aesthete.training.loss_graph import draw_loss_graph, smooth
from aesthete.lora.files import numbered_path
from aesthete.training.save import TrainedLora, build_metadata, read_lora, save_copy, save_lora

SD15_KEY = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"


def lora(rank: int = 4, dim: int = 320) -> TrainedLora:
    torch.manual_seed(0)
    tensors = {f"{SD15_KEY}.lora_up.weight": torch.randn(dim, rank),
               f"{SD15_KEY}.lora_down.weight": torch.randn(rank, dim),
               f"{SD15_KEY}.alpha": torch.tensor(4.0)}
    meta = build_metadata(base_model="SD15", rank=rank, alpha=4.0, epochs=5, steps=20, dataset_size=4,
                          settings={"learning_rate": 1e-4}, targets=["to_q"])
    return TrainedLora(tensors, meta)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/abs/x", "", "  "])
def test_names_never_leave_the_folder(tmp_path, name):
    with pytest.raises(OutsideRootError):
        path_inside(tmp_path / "loras", name, what="save name")


def test_numbered_names_and_atomic_round_trip(tmp_path):
    root = tmp_path / "loras"
    first = numbered_path(root, "styles/mine")
    assert first == (root / "styles" / "mine_00001.safetensors").resolve()
    save_lora(lora(), first)
    assert numbered_path(root, "styles/mine").name == "mine_00002.safetensors"
    assert [p.name for p in first.parent.iterdir()] == ["mine_00001.safetensors"]  # no temporary file left
    back = read_lora(first)
    assert back.rank == 4 and set(back.tensors) == set(lora().tensors)
    assert back.metadata["aesthete.rank"] == "4" and back.metadata["ss_network_alpha"] == "4"
    assert json.loads(back.metadata["aesthete.settings"]) == {"learning_rate": 1e-4}
    half = save_lora(lora(), root / "half.safetensors", torch.float16)
    assert read_lora(half).tensors[f"{SD15_KEY}.lora_up.weight"].dtype == torch.float16


def test_diffsynth_copy_keeps_the_update(tmp_path):
    path, meta = save_copy(lora(), save_lora(lora(), tmp_path / "x.safetensors"), "diffsynth")
    assert path.name == "x.diffsynth.safetensors"
    back = read_lora(path)
    assert meta["aesthete.format"] == "diffsynth" and meta.get("aesthete.dropped_keys", "0") == "0"
    a = next(v for k, v in back.tensors.items() if "lora_A" in k)
    b = next(v for k, v in back.tensors.items() if "lora_B" in k)
    src = lora().tensors
    # DiffSynth loads with peft lora_alpha 4 (scale alpha/rank = 1 here): the same update as ComfyUI's file
    torch.testing.assert_close(b.float() @ a.float(), src[f"{SD15_KEY}.lora_up.weight"]
                               @ src[f"{SD15_KEY}.lora_down.weight"], rtol=1e-4, atol=1e-4)


def test_loss_graph_and_smoothing():
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected
    s = smooth([4.0, 0.0, 0.0, 0.0], 0.5)
    assert s[0] == 4.0 and s[-1] < s[1] < s[0]
    img = draw_loss_graph([1.0, 0.8, 0.9, 0.5, 0.4], smoothing=0.5, width=320, height=200)
    assert isinstance(img, Image.Image) and img.size == (320, 200)
    assert len(img.getcolors(maxcolors=4096)) > 3  # axes, raw and smoothed curves were drawn
    assert draw_loss_graph([0.5]).size == (800, 480)  # one step and flat lines still draw
    with pytest.raises(ValueError, match="no finite loss"):
        draw_loss_graph([float("nan")])
