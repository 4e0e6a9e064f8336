"""`aesthete convert-lora` end to end on files: DiffSynth's own checkpoint in, safetensors with metadata out."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from aesthete.cli import main
from aesthete.lora.files import read_lora_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth"


def test_convert_diffsynth_ckpt_to_comfyui(tmp_path):
    out = tmp_path / "tiny.safetensors"
    assert main(["convert-lora", str(FIXTURES / "tiny_sd_lora.ckpt"), str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["aesthete.format"] == "comfyui" and meta["aesthete.source_format"] == "diffsynth"
    assert meta["aesthete.base"] == "sd15" and meta["aesthete.rank"] == "4" and meta["aesthete.alpha"] == "4"
    assert meta["aesthete.source_file"] == "tiny_sd_lora.ckpt"
    assert len(keys) == 8 * 3 and all(k.startswith("diffusion_model.input_blocks.1.1.") for k in keys)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]


def test_convert_back_to_diffsynth_with_alpha(tmp_path):
    comfy = tmp_path / "c.safetensors"
    back = tmp_path / "d.safetensors"
    assert main(["convert-lora", str(FIXTURES / "tiny_sd_lora.ckpt"), str(comfy), "--alpha", "8"]) == 0
    assert main(["convert-lora", str(comfy), str(back), "--to", "diffsynth", "--alpha", "8", "--base", "sd15"]) == 0
    original, _ = read_lora_file(FIXTURES / "tiny_sd_lora.ckpt")
    result, meta = read_lora_file(back)
    assert set(result) == set(original) and meta["aesthete.format"] == "diffsynth"
    for key, value in original.items():
        torch.testing.assert_close(result[key], value)


def test_errors_exit_nonzero(tmp_path, caplog):
    assert main(["convert-lora", str(tmp_path / "missing.ckpt"), str(tmp_path / "o.safetensors")]) == 1
    assert "no such file" in caplog.text
    assert main(["convert-lora", str(FIXTURES / "tiny_sd_lora.ckpt"), str(tmp_path / "o.ckpt")]) == 2
    flux = tmp_path / "flux.safetensors"
    from safetensors.torch import save_file
    save_file({"transformer.single_blocks.0.linear1.lora_A.weight": torch.zeros(4, 8)}, str(flux))
    assert main(["convert-lora", str(flux), str(tmp_path / "o.safetensors")]) == 1
    assert "none of the 1 tensors" in caplog.text
    assert not (tmp_path / "o.safetensors").exists()


def test_lycoris_file_is_already_loadable_and_not_copied(tmp_path, caplog):
    from harness.lora_models import lycoris_layer
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {f"lora_unet_input_blocks_1_1_proj_in.{k}": v
          for k, v in lycoris_layer("loha", (320, 320, 1, 1), 4, 2.0, g).items()}
    path = tmp_path / "loha.safetensors"
    save_file(sd, str(path))
    out = tmp_path / "o.safetensors"
    assert main(["convert-lora", str(path), str(out)]) == 3
    assert "already in a format ComfyUI loads as it is (kohya LoHa (1 layers))" in caplog.text
    assert main(["convert-lora", str(path), str(out), "--to", "diffsynth"]) == 1
    assert "kohya LoHa layer" in caplog.text and "cannot carry" in caplog.text
    assert not out.exists()
