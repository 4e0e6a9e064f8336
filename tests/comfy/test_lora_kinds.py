"""Every kind of LoRA file core ComfyUI loads, applied by Load LoRA (any format) and by core LoraLoader on the same
file: the weights each MODEL (and CLIP) is sampled with must be equal, bit for bit.

Files are built from the names ComfyUI's own key map understands (kohya's ``lora_unet_`` + the model's ldm or
diffusers module names, ``lora_te_`` for CLIP-L) and the tensor names its weight adapters read
(comfy/weight_adapter: lora_up/lora_down/lora_mid/alpha, dora_scale, hada_*, lokr_*, diff/diff_b). Ranks and
alphas vary per layer. The weights are compared inside the server by a test-only node
(harness/comfy_test_nodes) that runs ComfyUI's own calculate_weight for every patched weight of both models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from devkit.build_models import SMALL_SDXL_CONFIG, small_sd15_unet_config
from devkit.factories import small_sdxl_unet
from harness.lora_models import CONV_KINDS, KINDS, comfy_lora_key_names, lycoris_layer
from safetensors import safe_open
from safetensors.torch import save_file

from aesthete.lora import layout

CHECKPOINT_UNET = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model.encoder.layers."
LABELS = {"lora": "kohya LoRA", "locon": "kohya LoCon", "locon-tucker": "kohya LoCon (Tucker)",
          "loha": "kohya LoHa", "lokr": "kohya LoKr", "dora": "kohya DoRA", "diff": "kohya full diff"}


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.fixture(scope="module")
def bases(comfy_server, sd15_ckpt):
    """{base: (loader node, its inputs, {kohya name: weight name}, weight shapes)} for the two test models."""
    from devkit.factories import small_sd15_checkpoint

    sdxl_path = small_sdxl_unet()
    sdxl_name = comfy_server.link_model("diffusion_models", sdxl_path, "aesthete-test-sdxl-small.safetensors")
    return {
        "sd15": ("CheckpointLoaderSimple", {"ckpt_name": sd15_ckpt},
                 comfy_lora_key_names(small_sd15_unet_config(), CHECKPOINT_UNET), _shapes(small_sd15_checkpoint())),
        "sdxl": ("UNETLoader", {"unet_name": sdxl_name, "weight_dtype": "default"},
                 comfy_lora_key_names(SMALL_SDXL_CONFIG), _shapes(sdxl_path)),
    }


def _eligible(kind: str, shape: tuple[int, ...]) -> bool:
    conv3 = len(shape) == 4 and shape[2:] != (1, 1)
    if kind in CONV_KINDS:
        return conv3  # LoRA on a 3x3 convolution is what makes a LoCon
    if kind == "lora":
        return len(shape) == 2 or (len(shape) == 4 and not conv3)
    return len(shape) in (2, 4)


def _unet_layers(kind: str, names: dict[str, str], shapes: dict) -> list[tuple[str, str]]:
    """(kohya name, weight name) for a spread of the UNet's layers of the kind's shapes; one name per weight,
    alternating kohya's ldm and diffusers spellings (the diffusers ones only ComfyUI's key map of this very
    model's layout places right)."""
    by_weight: dict[str, list[str]] = {}
    for name, weight in sorted(names.items()):
        if weight in shapes and _eligible(kind, shapes[weight]):
            by_weight.setdefault(weight, []).append(name)
    items = sorted(by_weight.items())
    chosen = items[1::max(1, len(items) // 12)]
    return [(spellings[i % len(spellings)], weight) for i, (weight, spellings) in enumerate(chosen)]


def _clip_layers(shapes: dict) -> list[tuple[str, str]]:
    layers = []
    for block in (0, 5, 11):
        for module, kohya in (("self_attn.q_proj", "self_attn_q_proj"), ("self_attn.out_proj", "self_attn_out_proj"),
                              ("mlp.fc1", "mlp_fc1"), ("mlp.fc2", "mlp_fc2")):
            weight = f"{CLIP_PREFIX}{block}.{module}.weight"
            assert weight in shapes, weight
            layers.append((f"lora_te_text_model_encoder_layers_{block}_{kohya}", weight))
    return layers


def _build_file(kind: str, layers: list[tuple[str, str]], shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (name, weight) in enumerate(layers):
        rank, alpha = (4, 2.0) if i % 2 else (8, 12.0)
        bias = shapes.get(weight[:-len(".weight")] + ".bias")
        for suffix, tensor in lycoris_layer(kind, shapes[weight], rank, alpha, g,
                                            bias=bias[0] if bias else None).items():
            sd[f"{name}.{suffix}"] = tensor
    return sd


@pytest.mark.parametrize("base", ["sd15", "sdxl"])
@pytest.mark.parametrize("kind", KINDS)
def test_kind_applies_as_core_does(comfy, comfy_server, bases, kind, base):
    loader, loader_inputs, names, shapes = bases[base]
    unet_layers = _unet_layers(kind, names, shapes)
    with_clip = base == "sd15" and kind not in CONV_KINDS
    clip_layers = _clip_layers(shapes) if with_clip else []
    assert len(unet_layers) >= 8
    if base == "sd15":  # the small SD1.5 UNet is laid out differently from standard SD1.5 (one res block per level)
        standard = layout.standard_key_map("sd15")
        moved = [n for n, weight in unet_layers if n in standard and "model." + standard[n] != weight]
        assert moved, "no layer whose kohya name a fixed SD1.5 table would put on another module"
    sd = _build_file(kind, unet_layers + clip_layers, shapes, seed=KINDS.index(kind))
    name = f"aesthete-kind-{kind}-{base}.safetensors"
    loras = comfy_server.models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(loras / name))

    graph = {"1": {"class_type": loader, "inputs": loader_inputs}}
    clip = ["1", 1] if base == "sd15" else None
    for n, strength in ((10, 1.0), (20, 0.6)):
        ours = {"model": ["1", 0], "lora_name": name, "strength_model": strength, "strength_clip": strength,
                "alpha": 4.0}
        core = {"model": ["1", 0], "lora_name": name, "strength_model": strength}
        if with_clip:
            ours["clip"] = clip
            core.update(clip=clip, strength_clip=strength)
        graph[f"{n}"] = {"class_type": "AestheteLoraLoader", "inputs": ours}
        graph[f"{n + 1}"] = {"class_type": "LoraLoader" if with_clip else "LoraLoaderModelOnly", "inputs": core}
        compare = {"model_a": [f"{n}", 0], "model_b": [f"{n + 1}", 0]}
        if with_clip:
            compare.update(clip_a=[f"{n}", 1], clip_b=[f"{n + 1}", 1])
        graph[f"{n + 2}"] = {"class_type": "TestOnlyCompareWeights", "inputs": compare}
        graph[f"{n + 3}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"{n}", 2]}}

    log_before = len(comfy_server.log_text())
    result = comfy.run(graph, timeout=600)
    log = comfy_server.log_text()[log_before:]
    assert "lora key not loaded" not in log and "ERROR" not in log and "NOT LOADED" not in log, log[-2000:]

    def bias_patches(prefix):  # a diff_b patches the layer's bias beside its weight
        return sum(k.startswith(prefix) and k.endswith(".diff_b") for k in sd)

    parts = {"unet": len(unet_layers) + bias_patches("lora_unet")}
    if with_clip:
        parts["clip"] = len(clip_layers) + bias_patches("lora_te")
    for n in (10, 20):
        report = result.node_output(f"{n + 3}")["text"][0]
        assert f"Applied {len(sd)} of {len(sd)} tensors: {len(unet_layers)} UNet layers, {len(clip_layers)} " \
               f"text-encoder layers" in report, report
        assert f"{LABELS[kind]} {len(unet_layers) + len(clip_layers)}" in report, report
        compared = json.loads(result.node_output(f"{n + 2}")["text"][0])
        for part, patched in parts.items():
            c = compared[part]
            assert c["patched"] == patched and not c["only_a"] and not c["only_b"], (part, c)
            assert not c["unequal"], (part, c["unequal"][:3], c["max_abs_diff"])
            assert c["max_change"] > 1e-4 and not c["unchanged"], (part, c)
    (loras / name).unlink()
