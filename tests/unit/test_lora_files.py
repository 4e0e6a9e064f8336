"""Reading LoRA files: pickles only through weights_only, Lightning checkpoints, DiffSynth's own file, atomic writes."""

from __future__ import annotations

import json
import pathlib
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from aesthete.lora.convert import convert_lora
from aesthete.lora.files import LoraFileError, read_lora_file, write_safetensors
from aesthete.lora.formats import parse_lora

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth"


class RunsCode:
    """Unpickling this calls Path.touch(marker): what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_malicious_pickle_does_not_run(tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"x.lora_up.weight": torch.zeros(2, 2)}, "payload": RunsCode(marker)}, evil)
    # the payload is real: plain unpickling runs it (then we remove its trace)
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(LoraFileError, match="refused to unpickle"):
        read_lora_file(evil)
    assert not marker.exists()


def test_malicious_legacy_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:  # a bare pickle, not torch's zip container
        pickle.dump({"a": RunsCode(marker)}, f)
    with pytest.raises(LoraFileError):
        read_lora_file(evil)
    assert not marker.exists()


def test_lightning_checkpoint_is_unwrapped(tmp_path):
    path = tmp_path / "trained.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.6.0",
                "state_dict": {"blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight": torch.ones(4, 640)}},
               path)
    tensors, meta = read_lora_file(path)
    assert list(tensors) == ["blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight"] and meta == {}


def test_diffsynth_written_checkpoint_reads_and_converts():
    # written by DiffSynth 1.1.9's own trainer code (scripts/make_diffsynth_fixtures.py)
    info = json.loads((FIXTURES / "tiny_sd_lora.json").read_text())
    tensors, _ = read_lora_file(FIXTURES / "tiny_sd_lora.ckpt")
    assert {k: list(v.shape) for k, v in tensors.items()} == info["keys"]
    parsed = parse_lora(tensors)
    assert parsed.format == "diffsynth" and parsed.base == "sd15" and not parsed.unplaced
    assert {layer.target for layer in parsed.layers} == {
        f"diffusion_model.input_blocks.1.1.transformer_blocks.0.{a}.{p}"
        for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")}
    # two steps of training moved lora_B away from peft's zero init
    assert all(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k)


def test_diffsynth_written_kolors_checkpoint_places_on_sdxl():
    tensors, _ = read_lora_file(FIXTURES / "tiny_kolors_lora.ckpt")
    parsed = parse_lora(tensors)
    assert parsed.format == "diffsynth" and parsed.base == "sdxl" and not parsed.unplaced
    assert {layer.target for layer in parsed.layers} == {
        f"diffusion_model.input_blocks.4.1.transformer_blocks.{t}.{a}.{p}"
        for t in (0, 1) for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_safetensors_roundtrip_with_metadata_atomic(tmp_path):
    sd = {"diffusion_model.out.2.lora_up.weight": torch.randn(4, 2, 1, 1),
          "diffusion_model.out.2.lora_down.weight": torch.randn(2, 320, 3, 3)}
    tensors, meta = convert_lora(sd, "comfyui", base="sdxl")
    out = write_safetensors(tmp_path / "sub" / "x.safetensors", tensors, meta)
    assert [p.name for p in out.parent.iterdir()] == ["x.safetensors"]  # no temp file left behind
    read, read_meta = read_lora_file(out)
    assert set(read) == set(tensors) and read_meta == meta
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["aesthete.format"] == "comfyui"


def test_unreadable_files_name_the_problem(tmp_path):
    with pytest.raises(LoraFileError, match="no such file"):
        read_lora_file(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(LoraFileError, match="not a readable safetensors"):
        read_lora_file(bad)
    odd = tmp_path / "x.gguf"
    odd.write_bytes(b"0")
    with pytest.raises(LoraFileError, match="unsupported extension"):
        read_lora_file(odd)
    empty = tmp_path / "empty.ckpt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(LoraFileError, match="no tensors"):
        read_lora_file(empty)
