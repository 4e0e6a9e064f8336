"""AestheteLoraLoader in a real ComfyUI server.

Numbers: a small SDXL-architecture UNet (full SDXL block layout, 320 channels everywhere; see
devkit/build_models.py) loaded with core UNETLoader, eight LoRA files of different formats, one test case each
(among them a DiffSynth 1.x Kolors-layout checkpoint with all 1,120 tensors, and a Kolors-named checkpoint
written by DiffSynth's own trainer code), the patched weights written by a test-only node as ComfyUI computes them
(harness/comfy_test_nodes), and every targeted weight compared with W + strength * alpha/rank * B @ A. The same
file, converted by the command line and applied with core LoraLoaderModelOnly, must give the same weights, and
ComfyUI must log no `lora key not loaded`. The file names of each format come from outside this pack: ComfyUI's
unet_to_diffusers and DiffSynth's own converter table.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from pathlib import Path

import pytest
import torch
from devkit.client import ExecutionError
from devkit.factories import small_sdxl_unet
from harness.lora_models import comfy_diffusers_names
from safetensors import safe_open
from safetensors.torch import save_file

from aesthete.cli import main as aesthete_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth"
PREFIX = "diffusion_model."


@pytest.fixture(scope="module")
def sdxl_unet(comfy_server) -> tuple[str, Path]:
    path = small_sdxl_unet()
    return comfy_server.link_model("diffusion_models", path, "aesthete-test-sdxl-small.safetensors"), path


def _kohya(name: str) -> str:
    return name.replace(".", "_")


def _processor(diffusers: str) -> str:
    return "unet." + diffusers.replace(".to_", ".processor.to_").removesuffix(".0")


# format -> (up key, down key, alpha key or None) for (ldm, diffusers, diffsynth) module names
FORMATS = {
    "comfyui": lambda m, d, s: (f"diffusion_model.{m}.lora_up.weight", f"diffusion_model.{m}.lora_down.weight",
                                f"diffusion_model.{m}.alpha"),
    "kohya": lambda m, d, s: (f"lora_unet_{_kohya(m)}.lora_up.weight", f"lora_unet_{_kohya(m)}.lora_down.weight",
                              f"lora_unet_{_kohya(m)}.alpha"),
    "kohya-diffusers": lambda m, d, s: (f"lora_unet_{_kohya(d)}.lora_up.weight",
                                        f"lora_unet_{_kohya(d)}.lora_down.weight", f"lora_unet_{_kohya(d)}.alpha"),
    "diffsynth2-peft": lambda m, d, s: (f"{d}.lora_B.weight", f"{d}.lora_A.weight", None),
    "peft-default": lambda m, d, s: (f"base_model.model.{d}.lora_B.default.weight",
                                     f"base_model.model.{d}.lora_A.default.weight", None),
    "diffusers-processor": lambda m, d, s: (f"{_processor(d)}_lora.up.weight", f"{_processor(d)}_lora.down.weight",
                                            None),
    "diffsynth": lambda m, d, s: (f"{s}.lora_B.default.weight", f"{s}.lora_A.default.weight", None),
}
# (format, rank, strength, stored alpha or None, the node's alpha input, file suffix)
CASES = [
    ("comfyui", 4, 0.8, 2.0, 4.0, ".safetensors"),
    ("kohya", 8, -0.6, 8.0, 4.0, ".safetensors"),
    ("kohya-diffusers", 4, 1.3, 1.0, 4.0, ".safetensors"),
    ("diffsynth2-peft", 8, 0.5, None, 4.0, ".safetensors"),
    ("peft-default", 4, 1.0, None, 0.0, ".bin"),
    ("diffusers-processor", 4, 0.9, None, 8.0, ".pt"),
    ("diffsynth", 4, 1.1, None, 4.0, ".ckpt"),
    ("diffsynth-trained", 4, 0.7, None, 4.0, ".ckpt"),  # written by DiffSynth's own trainer code
]


def _modules(shapes: dict[str, tuple], diffusers: dict[str, str], diffsynth: dict[str, str]):
    """Every LoRA-able UNet module with its three names: linear layers of the transformer blocks and attention
    projections, resnet convolutions, samplers, embeddings."""
    rows = []
    for key, shape in shapes.items():
        if not key.endswith(".weight") or len(shape) not in (2, 4):
            continue
        m = key[:-len(".weight")]  # the UNet-only file has no prefix
        if m in diffusers and m + ".weight" in diffsynth:
            rows.append((m, diffusers[m], diffsynth[m + ".weight"].removesuffix(".weight"), shape))
    return sorted(rows)


def _make_lora(fmt, rank, alpha, modules, seed) -> tuple[dict, dict]:
    """(state dict in ``fmt``, {ldm module: (up, down)})."""
    g = torch.Generator().manual_seed(seed)
    sd, mats = {}, {}
    for m, d, s, shape in modules:
        out_dim, in_shape = shape[0], shape[1:]
        up = torch.randn(out_dim, rank, *([1] * (len(shape) - 2)), generator=g) * 0.05
        down = torch.randn(rank, *in_shape, generator=g) * 0.05
        up_key, down_key, alpha_key = FORMATS[fmt](m, d, s)
        sd[up_key], sd[down_key] = up, down
        if alpha is not None:
            sd[alpha_key] = torch.tensor(alpha)
        mats[m] = (up, down)
    return sd, mats


def _write(path: Path, sd: dict) -> None:
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)


def _read(path: Path, keys) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in keys}


@pytest.fixture(scope="module")
def sdxl_modules(sdxl_unet):
    """(weight shapes of the small SDXL UNet, its LoRA-able modules with their three names, DiffSynth's names)"""
    _, unet_path = sdxl_unet
    with safe_open(str(unet_path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    diffsynth = json.loads((FIXTURES / "unet_names.json").read_text())["sdxl"]
    modules = _modules(shapes, comfy_diffusers_names(), diffsynth)
    assert len([row for row in modules if ".attn" in row[0] and ".to_" in row[0]]) == 560 and len(modules) > 700
    return shapes, modules, diffsynth


def _case_file(case, i: int, modules, diffsynth, loras: Path) -> tuple[str, dict, int]:
    """Writes the LoRA file of ``case`` to ``loras``; returns (file name, {ldm module: (up, down)}, rank)."""
    fmt, rank, _strength, stored_alpha, _node_alpha, suffix = case
    name = f"aesthete-{fmt}{suffix}"
    if fmt == "diffsynth-trained":
        sd = torch.load(FIXTURES / "tiny_kolors_lora.ckpt", weights_only=True)
        to_ldm = {v.removesuffix(".weight"): k.removesuffix(".weight") for k, v in diffsynth.items()}
        mats = {to_ldm[k.split(".lora_B.")[0]]: (v, sd[k.replace(".lora_B.", ".lora_A.")])
                for k, v in sd.items() if ".lora_B." in k}
        assert len(mats) == 16
        shutil.copyfile(FIXTURES / "tiny_kolors_lora.ckpt", loras / name)  # DiffSynth's bytes, as written
        return name, mats, rank
    if fmt == "diffsynth":
        # the complete DiffSynth 1.x Kolors key list, shapes of this small UNet
        kolors = json.loads((FIXTURES / "kolors_lora_keys.json").read_text())["keys"]
        wanted = {k.split(".lora_")[0] for k in kolors}
        chosen = [row for row in modules if row[2] in wanted]
        assert len(chosen) == 560
        rank = 16
    elif fmt == "diffusers-processor":
        chosen = [row for row in modules if ".attn" in row[0] and ".to_" in row[0]][i::40]
    else:  # a spread of every kind of layer: convolutions, embeddings, projections, feed-forwards
        chosen = modules[i::29]
    sd, mats = _make_lora(fmt, rank, stored_alpha, chosen, seed=i)
    if fmt == "diffsynth":
        assert set(sd) == set(kolors)
    _write(loras / name, sd)
    return name, mats, rank


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_format_patches_exact_weights_and_matches_core(comfy, comfy_server, sdxl_unet, sdxl_modules, case):
    unet_name, unet_path = sdxl_unet
    shapes, modules, diffsynth = sdxl_modules
    fmt, _, strength, stored_alpha, node_alpha, _ = case
    loras = comfy_server.models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    name, mats, rank = _case_file(case, CASES.index(case), modules, diffsynth, loras)
    alpha = stored_alpha if stored_alpha is not None else (node_alpha if node_alpha > 0 else rank)
    expected = {m: strength * alpha / rank * (up.double().flatten(1) @ down.double().flatten(1))
                for m, (up, down) in mats.items()}
    converted = f"converted-{fmt}.safetensors"
    assert aesthete_cli(["convert-lora", str(loras / name), str(loras / converted), "--alpha", str(node_alpha)]) == 0

    graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
             "2": {"class_type": "AestheteLoraLoader", "inputs": {
                 "model": ["1", 0], "lora_name": name, "strength_model": strength, "strength_clip": 1.0,
                 "alpha": node_alpha}},
             "3": {"class_type": "LoraLoaderModelOnly", "inputs": {
                 "model": ["1", 0], "lora_name": converted, "strength_model": strength}},
             "4": {"class_type": "TestOnlySavePatchedWeights", "inputs": {"model": ["2", 0], "name": f"ours-{fmt}"}},
             "5": {"class_type": "TestOnlySavePatchedWeights", "inputs": {"model": ["3", 0], "name": f"core-{fmt}"}},
             "6": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}
    log_before = len(comfy_server.log_text())
    result = comfy.run(graph, timeout=600)
    log = comfy_server.log_text()[log_before:]
    assert "lora key not loaded" not in log and "NOT LOADED" not in log

    report = result.node_output("6")["text"][0]
    assert "Not placed" not in report, report
    if fmt == "diffsynth":
        assert "DiffSynth-Studio 1.x" in report and "Applied 1120 of 1120 tensors: 560 UNet layers" in report
    if fmt == "diffsynth-trained":
        assert "Applied 32 of 32 tensors: 16 UNet layers" in report and "alpha 4 (the file stores none)" in report

    saved_ours = comfy_server.output_dir / f"ours-{fmt}.safetensors"
    saved_core = comfy_server.output_dir / f"core-{fmt}.safetensors"
    weight_keys = [PREFIX + m + ".weight" for m in expected]
    with safe_open(str(saved_ours), framework="pt") as f:
        assert set(f.keys()) == set(weight_keys)  # nothing else of the model is patched
    original = _read(unet_path, [k[len(PREFIX):] for k in weight_keys])
    patched, patched_core = _read(saved_ours, weight_keys), _read(saved_core, weight_keys)
    for key in weight_keys:
        m = key[len(PREFIX):-len(".weight")]
        want = original[m + ".weight"].double() + expected[m].reshape(shapes[m + ".weight"])
        got = patched[key]
        assert got.dtype == torch.float32, key
        err = (got.double() - want).abs().max().item()
        scale = want.abs().max().item()
        assert err <= 4e-7 * scale + 1e-7, f"{key}: off by {err:g} (scale {scale:g})"
        assert torch.equal(got, patched_core[key]) or torch.allclose(got, patched_core[key], rtol=0, atol=1e-6), key
    for path in (saved_ours, saved_core, loras / name, loras / converted):
        path.unlink()


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_bad_files_are_clear_errors(comfy, comfy_server, sdxl_unet, tmp_path):
    unet_name, _ = sdxl_unet
    loras = comfy_server.models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "pwned"
    torch.save({"w": RunsCode(marker)}, loras / "aesthete-evil.ckpt")
    torch.save({"transformer.single_blocks.0.linear1.lora_A.weight": torch.zeros(4, 8),
                "transformer.single_blocks.0.linear1.lora_B.weight": torch.zeros(8, 4)},
               loras / "aesthete-flux.pt")
    # peft's DoRA magnitude: no ComfyUI adapter reads it, and the layer must not be applied without it
    d = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{d}.lora_A.weight": torch.zeros(4, 320), f"{d}.lora_B.weight": torch.zeros(320, 4),
               f"{d}.lora_magnitude_vector.weight": torch.ones(320)}, str(loras / "aesthete-peft-dora.safetensors"))
    for name, message in (("aesthete-evil.ckpt", "refused to unpickle"), ("aesthete-flux.pt", "none of its 2 tensors"),
                          ("aesthete-peft-dora.safetensors", "lora_magnitude_vector.weight .*has no use for it")):
        graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
                 "2": {"class_type": "AestheteLoraLoader", "inputs": {
                     "model": ["1", 0], "lora_name": name, "strength_model": 1.0, "strength_clip": 1.0, "alpha": 4.0}},
                 "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}
        with pytest.raises(ExecutionError, match=message):
            comfy.run(graph, timeout=300)
    assert not marker.exists()


def test_text_encoder_layers_go_to_clip_and_are_reported_without_it(comfy, comfy_server, sd15_ckpt):
    loras = comfy_server.models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    sd = {}
    for layer in (0, 11):  # kohya text-encoder names, placed by ComfyUI's own CLIP key map
        name = f"lora_te_text_model_encoder_layers_{layer}_self_attn_q_proj"
        sd[f"{name}.lora_up.weight"] = torch.randn(768, 4, generator=g)
        sd[f"{name}.lora_down.weight"] = torch.randn(4, 768, generator=g)
        sd[f"{name}.alpha"] = torch.tensor(4.0)
    unet = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    sd[f"{unet}.lora_up.weight"] = torch.randn(320, 4, generator=g)
    sd[f"{unet}.lora_down.weight"] = torch.randn(4, 320, generator=g)
    save_file(sd, str(loras / "aesthete-kohya-te.safetensors"))
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_ckpt}}}
    for n, clip in ((2, {"clip": ["1", 1]}), (4, {})):
        graph[f"{n}"] = {"class_type": "AestheteLoraLoader", "inputs": {
            "model": ["1", 0], "lora_name": "aesthete-kohya-te.safetensors", "strength_model": 1.0,
            "strength_clip": 0.5, "alpha": 4.0, **clip}}
        graph[f"{n + 1}"] = {"class_type": "PreviewAny", "inputs": {"source": [f"{n}", 2]}}
    result = comfy.run(graph, timeout=300)
    with_clip, without = result.node_output("3")["text"][0], result.node_output("5")["text"][0]
    assert "kohya" in with_clip and "Applied 8 of 8 tensors: 1 UNet layers, 2 text-encoder layers" in with_clip
    assert "Applied 2 of 8 tensors: 1 UNet layers, 0 text-encoder layers" in without
    assert "Not placed: 6 tensors" in without and "no CLIP is connected" in without
