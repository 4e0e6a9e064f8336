"""Same numbers as the reference: Aesthete's Kolors MODEL and CLIP (ComfyUI's classes, loaded by our loader in the
embedded ComfyUI, in a subprocess) against diffusers' KolorsPipeline on the same tiny weights, fp32."""

from __future__ import annotations

import pytest
from harness.in_comfy import run_in_comfy
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors, wide_chatglm3_file

PROMPTS = [RECIPE_PROMPT, "a girl with blue hair on a white background, anime style", ""]


def _model_and_clip_against_the_pipeline(folder: str) -> dict:
    import torch
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import load_kolors_folder
    from devkit.kolors_reference import encode, load_pipeline, scheduler_sigmas, unet_eps

    model, clip, vae = load_kolors_folder(find_kolors_folder(folder), "fp32", "default")
    pipe = load_pipeline(folder, torch.float32)
    out = {"context": [], "pooled": [], "eps": [], "shapes": []}
    torch.manual_seed(0)
    for prompt in PROMPTS:
        cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
        ref_cond, ref_pooled = encode(pipe, prompt)
        out["shapes"].append([list(cond.shape), list(pooled.shape)])
        out["context"].append((cond - ref_cond).abs().max().item())
        out["pooled"].append((pooled - ref_pooled).abs().max().item())
        x = torch.randn(1, 4, 8, 12)
        for t in (1099, 500, 3):
            adm = model.model.encode_adm(pooled_output=pooled, width=96, height=64)
            ours = model.model.diffusion_model(x, timesteps=torch.tensor([float(t)]), context=cond, y=adm)
            ref = unet_eps(pipe, x, t, ref_cond, ref_pooled, 64, 96)
            out["eps"].append((ours - ref).abs().max().item())
    ours_sigmas = model.model.model_sampling.sigmas.float()
    ref_sigmas = scheduler_sigmas(pipe)
    out["sigmas"] = (ours_sigmas - ref_sigmas).abs().max().item() if ours_sigmas.shape == ref_sigmas.shape else -1
    out["n_sigmas"] = len(ours_sigmas)
    out["hidden"] = pipe.text_encoder.config.hidden_size
    # on the CPU (no attention flag given) the MODEL attends with PyTorch's SDPA, as the reference does
    options = model.model_options.get("transformer_options", {})
    out["sdpa_on_cpu"] = "optimized_attention_override" in options
    return out


@pytest.mark.parametrize("layout", ["kolors", "diffusers"])
def test_context_pooled_noise_prediction_and_sigmas_equal_the_reference(layout):
    result = run_in_comfy(_model_and_clip_against_the_pipeline, str(tiny_kolors(layout, "fp32")))
    hidden = result["hidden"]
    assert result["shapes"] == [[[1, 256, hidden], [1, hidden]]] * len(PROMPTS)
    assert max(result["context"]) < 1e-4, result["context"]
    assert max(result["pooled"]) < 1e-4, result["pooled"]
    assert max(result["eps"]) < 1e-4, result["eps"]
    assert result["n_sigmas"] == 1100
    assert result["sdpa_on_cpu"]
    assert 0 <= result["sigmas"] < 1e-5 * 160  # relative to sigma_max ~ 157


def _text_encoder_in_fp8_fp16_and_fp32(folder: str) -> dict:
    import torch
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_clip

    f = find_kolors_folder(folder)
    out = {}
    for name in ("fp16", "fp8_e4m3fn", "fp32"):
        clip = kolors_clip(f.text_encoder_files, f.text_encoder_config, f.tokenizer_model, name, "cpu")
        layers = clip.cond_stage_model.transformer.transformer.encoder.layers
        weight = layers[0].self_attention.query_key_value.weight
        cond, pooled = clip.encode_from_tokens(clip.tokenize(RECIPE_PROMPT), return_pooled=True)
        out[name] = {"cond": cond, "pooled": pooled, "dtype": str(weight.dtype),
                     "bytes": sum(p.numel() * p.element_size() for p in layers.parameters())}
    ref = out["fp32"]["cond"]

    def rel(name):
        return ((out[name]["cond"] - ref).norm() / ref.norm()).item()

    return {"dtype": out["fp8_e4m3fn"]["dtype"], "bytes": [out[n]["bytes"] for n in ("fp16", "fp8_e4m3fn")],
            "rel_fp8": rel("fp8_e4m3fn"), "rel_fp16": rel("fp16"),
            "finite": bool(torch.isfinite(out["fp8_e4m3fn"]["cond"]).all())}


def test_fp8_text_encoder_halves_the_weights_and_stays_close():
    """ChatGLM3 stored in fp8 (weight-only; ComfyUI's manual_cast ops compute in fp32 on the CPU): the weights take
    half the bytes of fp16, and the context moves by a few percent (measured on the tiny random model; see the
    docs/kolors.md for the figure)."""
    result = run_in_comfy(_text_encoder_in_fp8_fp16_and_fp32, str(tiny_kolors("kolors", "fp16")))
    assert result["dtype"] == "torch.float8_e4m3fn" and result["finite"]
    fp16_bytes, fp8_bytes = result["bytes"]
    assert fp8_bytes * 2 <= fp16_bytes * 1.01
    assert result["rel_fp16"] < result["rel_fp8"] < 0.1


def _resident_rise_while_loading_the_text_encoder(chatglm3: str, tokenizer: str) -> dict:
    import math
    from pathlib import Path

    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import chatglm_config_for_file
    from aesthete.nodes.kolors_model import kolors_clip
    from aesthete.training.memory import reset_resident_peak, resident_now, resident_peak
    from safetensors import safe_open

    path = Path(chatglm3)
    with safe_open(str(path), "pt") as f:
        sizes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    weights = LazyWeights([path])
    config = chatglm_config_for_file(path, weights)
    reset_resident_peak()
    before = resident_now()
    clip = kolors_clip([path], config, Path(tokenizer), "fp32", "cpu", state_dict=weights)
    rise = resident_peak() - before
    model = sum(p.numel() * p.element_size() for p in clip.cond_stage_model.parameters())
    return {"rise": rise, "model": model, "file": path.stat().st_size,
            "largest": max(math.prod(s) for s in sizes.values()) * 2}


def test_the_text_encoder_file_is_read_one_tensor_at_a_time():
    """Loading chatglm3-fp16.safetensors in fp32 holds the model and one file tensor at a time, never the whole file
    beside the model (the fp16 file is half the fp32 model again, for the real ChatGLM3 12.5 GB more), and never
    reads the LM head Kolors does not use. Measured in a fresh process: the peak resident memory's rise while the
    node's loading runs."""
    files = wide_chatglm3_file()
    result = run_in_comfy(_resident_rise_while_loading_the_text_encoder, str(files["chatglm3"]),
                          str(files["tokenizer"]))
    assert result["rise"] < result["model"] + result["largest"] + 64 * 2 ** 20, result
    assert result["rise"] < result["model"] + result["file"] * 0.7, result  # the old way: model + whole file


def _vae_decode_against_the_pipeline(folder: str) -> dict:
    import torch
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_vae
    from devkit.kolors_reference import load_pipeline

    f = find_kolors_folder(folder, prefer_fp16=False)
    vae = kolors_vae(f.vae_files, f.vae_config)
    pipe = load_pipeline(folder, torch.float32)
    latent = torch.randn(1, 4, 8, 12, generator=torch.manual_seed(5))
    ours = vae.decode(latent)
    with torch.no_grad():
        ref = ((pipe.vae.decode(latent).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return {"shape": list(ours.shape), "diff": (ours.float() - ref).abs().max().item()}


def test_vae_decode_equals_the_reference():
    """ComfyUI's VAE class, configured by our loader from vae/config.json, decodes as diffusers' AutoencoderKL does."""
    result = run_in_comfy(_vae_decode_against_the_pipeline, str(tiny_kolors("kolors", "fp32")))
    assert result["shape"] == [1, 64, 96, 3]
    assert result["diff"] < 1e-4, result["diff"]
