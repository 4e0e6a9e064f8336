"""Save LoRA's copies for other tools: the DiffSynth-Studio 1.x copy loaded by DiffSynth 1.1.9's own LoRA loading
(in a child process with the reference folder .cache/reference/diffsynth first on its path, which `make test`
builds) and the diffusers/peft copy's names and peft config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from aesthete.lora import layout
from devkit.reference import run_reference
from aesthete.training.save import TrainedLora, save_copy, save_lora

ROOT = Path(__file__).resolve().parents[2]
RANK, ALPHA = 16, 4.0  # the recipe's
# attention blocks of Kolors (SDXL layout) at each width: level 1 (640), level 2 (1280), middle, both up levels
BLOCKS = {"input_blocks.4.1.transformer_blocks.1": 640, "input_blocks.8.1.transformer_blocks.9": 1280,
          "middle_block.1.transformer_blocks.0": 1280, "output_blocks.2.1.transformer_blocks.5": 1280,
          "output_blocks.3.1.transformer_blocks.0": 640}


def kolors_lora() -> TrainedLora:
    """A rank-16, alpha-4 LoRA in ComfyUI's format on to_q, to_k, to_v, to_out of both attentions of BLOCKS, at
    the real Kolors shapes (context 2048 wide), random up and down."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for block, width in BLOCKS.items():
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                fan_in = 2048 if attn == "attn2" and proj in ("to_k", "to_v") else width
                key = f"diffusion_model.{block}.{attn}.{proj}"
                tensors[f"{key}.lora_up.weight"] = torch.randn(width, RANK, generator=g) * 0.1
                tensors[f"{key}.lora_down.weight"] = torch.randn(RANK, fan_in, generator=g) * 0.1
                tensors[f"{key}.alpha"] = torch.tensor(ALPHA)
    return TrainedLora(tensors, {"aesthete.base_model": "KolorsModelConfig", "aesthete.rank": str(RANK)})


def comfy_updates(lora: TrainedLora) -> dict[str, torch.Tensor]:
    """{ldm module: the weight change ComfyUI applies at strength 1}: alpha / rank * up @ down."""
    out = {}
    for key, up in lora.tensors.items():
        if key.endswith(".lora_up.weight"):
            module = key.removesuffix(".lora_up.weight")
            down = lora.tensors[f"{module}.lora_down.weight"]
            out[module.removeprefix("diffusion_model.")] = float(lora.tensors[f"{module}.alpha"]) / RANK * up @ down
    return out


def test_diffusers_copy_names_every_layer_for_peft_with_rank_and_alpha(tmp_path):
    lora = kolors_lora()
    path, meta = save_copy(lora, save_lora(lora, tmp_path / "k.safetensors"), "diffusers")
    assert path.name == "k.diffusers.safetensors"
    tensors = load_file(str(path))
    names = layout.diffusers_names("sdxl")
    expected = {f"unet.{names[m]}.lora_{ab}.weight" for m in comfy_updates(lora) for ab in "AB"}
    assert set(tensors) == expected
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
    assert config["unet.r"] == RANK and config["unet.lora_alpha"] == ALPHA
    assert len(config["unet.target_modules"]) == len(expected) // 2
    assert meta["aesthete.dropped_keys"] == "0"


def test_diffsynth_copy_is_loaded_by_diffsynth_1_1_9_with_our_weights(tmp_path):
    """DiffSynth's ModelManager.load_lora (GeneralLoRAFromPeft) takes every tensor of the copy and, at
    lora_alpha = 4 / rank (the scale its own alpha-4 training used), computes exactly ComfyUI's update."""
    lora = kolors_lora()
    path, _ = save_copy(lora, save_lora(lora, tmp_path / "k.safetensors"), "diffsynth")
    lora_alpha = ALPHA / RANK
    result = run_reference("diffsynth", ROOT / "scripts" / "check_diffsynth_lora.py", str(path), str(lora_alpha))
    ours = comfy_updates(lora)
    assert result["loaded_by"] == "GeneralLoRAFromPeft"
    assert result["missing_modules"] == [] and result["lora_tensors"] == 2 * len(ours)
    assert len(result["updated"]) == len(ours) == result["nonzero"]
    theirs = load_file(str(path) + ".diffsynth-result")
    to_diffsynth = layout.name_tables("sdxl")["ldm_to_diffsynth"]
    worst = max((theirs[f"{to_diffsynth[m]}.weight"] - d).abs().max().item() / d.abs().max().item()
                for m, d in ours.items())
    assert worst < 1e-5, worst
