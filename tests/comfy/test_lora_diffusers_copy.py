"""The diffusers/peft copy Save LoRA writes, loaded by diffusers' own KolorsPipeline.load_lora_weights on the tiny
Kolors: no missing or unexpected key, every LoRA layer injected, and the UNet's noise prediction equals ComfyUI's
model with the same LoRA (the ComfyUI file through core's loader) within 1e-4."""

from __future__ import annotations

import logging

import pytest
from devkit.graph import new_graph
from devkit.training_graphs import dataset_node, train_node
from harness.in_comfy import run_in_comfy
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors

pytestmark = pytest.mark.comfy
log = logging.getLogger("aesthete.tests")


def _patched_model_against_the_pipeline(model, folder: str, comfy_file, copy) -> dict:
    """In ComfyUI's import world: ``comfy_file`` applied by core's loader to the tiny Kolors ``model``, ``copy`` loaded
    by KolorsPipeline.load_lora_weights on the same folder; eps of both at three timesteps."""
    import logging

    import comfy.sd
    import comfy.utils
    import torch
    from devkit.kolors_reference import encode, load_pipeline, unet_eps

    lora = comfy.utils.load_torch_file(str(comfy_file), safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    patched.patch_model()
    pipe = load_pipeline(folder, torch.float32)
    cond, pooled = encode(pipe, RECIPE_PROMPT)
    x = torch.randn(1, 4, 8, 12, generator=torch.manual_seed(0))
    plain = [unet_eps(pipe, x, t, cond, pooled, 64, 96) for t in (999, 500, 3)]
    warnings = []

    class Catch(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    for name in ("diffusers", "peft"):
        logging.getLogger(name).addHandler(Catch(logging.WARNING))
    pipe.load_lora_weights(str(copy))
    injected = [n for n, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "default_0" in m.lora_A]
    out = {"eps": [], "effect": [], "warnings": warnings, "injected": len(injected),
           "layers": sum(k.endswith(".lora_up.weight") for k in lora)}
    for t, before in zip((999, 500, 3), plain):
        adm = patched.model.encode_adm(pooled_output=pooled, width=96, height=64)
        ours = patched.model.diffusion_model(x, timesteps=torch.tensor([float(t)]), context=cond, y=adm)
        ref = unet_eps(pipe, x, t, cond, pooled, 64, 96)
        out["eps"].append((ours - ref).abs().max().item())
        out["effect"].append((ref - before).abs().max().item())
    return out


def _kolors_model(folder: str):
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import load_kolors_folder

    model, clip, vae = load_kolors_folder(find_kolors_folder(folder), "fp32", "default")
    return model


def _saved_lora_against_the_pipeline(folder: str, comfy_file: str, copy: str) -> dict:
    return _patched_model_against_the_pipeline(_kolors_model(folder), folder, comfy_file, copy)


def _built_lora_against_the_pipeline(folder: str, path: str) -> dict:
    """A LoRA built on the tiny Kolors MODEL, saved with its diffusers copy, both compared; and the copy's metadata."""
    import torch
    from aesthete.lora.files import UNET_METADATA_KEY, unet_metadata
    from aesthete.training.lora_network import TARGET_PRESETS, LoraNetwork
    from aesthete.training.save import TrainedLora, save_copy, save_lora

    model = _kolors_model(folder)
    network = LoraNetwork.create(model.model.diffusion_model, 4, 4.0, TARGET_PRESETS["attention q,k,v,out"], seed=0)
    g = torch.Generator().manual_seed(1)
    for layer in network.layers:
        layer.up.weight.data = torch.randn(layer.up.weight.shape, generator=g) * 0.3
    meta = {"aesthete.base_model": type(model.model.model_config).__name__,
            UNET_METADATA_KEY: unet_metadata(model.model.model_config.unet_config)}
    lora = TrainedLora(network.comfy_state_dict(), meta)
    comfy_file = save_lora(lora, path)
    copy, copy_meta = save_copy(lora, comfy_file, "diffusers")
    return dict(_patched_model_against_the_pipeline(model, folder, comfy_file, copy),
                dropped_keys=copy_meta["aesthete.dropped_keys"])


def _check(result: dict, min_effect: float) -> None:
    assert result["injected"] == result["layers"] > 0, result
    # diffusers warns of unexpected keys and of missing LoRA keys; "no LoRA keys for ChatGLMModel" only says the
    # file has no text-encoder part, as intended
    assert not [w for w in result["warnings"] if "unexpected keys" in w or "missing keys" in w], result["warnings"]
    assert max(result["eps"]) < 1e-4, result
    assert min(result["effect"]) > min_effect, result  # the LoRA moves the prediction well beyond the tolerance
    log.info("diffusers copy vs ComfyUI: max |eps diff| %s, LoRA effect %s", result["eps"], result["effect"])


def test_diffusers_copy_of_a_built_lora_gives_comfyui_numbers(tmp_path):
    """A LoRA as Train LoRA builds it (rank 4, alpha 4, attention q, k, v, out) with large random ``up``."""
    result = run_in_comfy(_built_lora_against_the_pipeline, str(tiny_kolors("kolors", "fp32")),
                          str(tmp_path / "k.safetensors"))
    assert result["dropped_keys"] == "0"
    _check(result, 1e-2)


def test_lora_trained_in_the_server_and_saved_for_diffusers_loads_in_kolors_pipeline(comfy, comfy_server):
    """Real client: the tiny Kolors folder through AestheteKolorsLoader, Train LoRA, Save LoRA with diffusers_copy;
    the pipeline from the same folder loads the copy and predicts what ComfyUI's patched MODEL predicts."""
    from devkit.training_data import write_pattern_folder

    folder = tiny_kolors("kolors", "fp32")
    name = comfy_server.link_model("kolors", folder, "tiny-kolors-fp32-lora")
    write_pattern_folder(comfy_server.input_dir / "kolors_diffusers_pattern", count=2)
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=name, dtype="fp32", text_encoder_device="default")
    data = dataset_node(g, "kolors_diffusers_pattern")
    train = train_node(g, loader.out(0), loader.out(1), loader.out(2), data.out(0), epochs=3, learning_rate=5e-2,
                       checkpoint_name="kolors_diffusers/checkpoint")
    g.node("AestheteSaveLora", lora=train.out(1), name_prefix="kolors_diffusers/pattern", precision="fp32",
           diffsynth_copy=False, diffusers_copy=True)
    comfy.run(g.finalize(), timeout=480)
    saved = comfy_server.models_dir / "loras" / "kolors_diffusers" / "pattern_00001.safetensors"
    copy = saved.with_name("pattern_00001.diffusers.safetensors")
    assert saved.exists() and copy.exists()
    _check(run_in_comfy(_saved_lora_against_the_pipeline, str(folder), str(saved), str(copy)), 1e-4)
