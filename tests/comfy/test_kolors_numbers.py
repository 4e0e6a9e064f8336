"""Same numbers as the reference: Aesthete's Kolors MODEL and CLIP (ComfyUI's classes, loaded by our loader in the
embedded ComfyUI, in a subprocess) against diffusers' KolorsPipeline on the same tiny weights, fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.in_comfy import run_in_comfy
from harness.kolors_models import RECIPE_PROMPT, tiny_kolors

TESTS = Path(__file__).resolve().parents[1]
PROMPTS = [RECIPE_PROMPT, "a girl with blue hair on a white background, anime style", ""]


@pytest.mark.parametrize("layout", ["kolors", "diffusers"])
def test_context_pooled_noise_prediction_and_sigmas_equal_the_reference(layout):
    folder = tiny_kolors(layout, "fp32")
    result = run_in_comfy(f"""
        import sys, torch
        sys.path.insert(0, {str(TESTS)!r})
        from harness.kolors_reference import encode, load_pipeline, scheduler_sigmas, unet_eps
        from aesthete.kolors.folder import find_kolors_folder
        from aesthete.nodes.kolors_model import load_kolors_folder

        folder = {str(folder)!r}
        model, clip, vae = load_kolors_folder(find_kolors_folder(folder), "fp32", "default")
        pipe = load_pipeline(folder, torch.float32)
        out = {{"context": [], "pooled": [], "eps": [], "shapes": []}}
        torch.manual_seed(0)
        for prompt in {PROMPTS!r}:
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
        options = model.model_options.get("transformer_options", {{}})
        out["sdpa_on_cpu"] = "optimized_attention_override" in options
        answer(out)
    """)
    hidden = result["hidden"]
    assert result["shapes"] == [[[1, 256, hidden], [1, hidden]]] * len(PROMPTS)
    assert max(result["context"]) < 1e-4, result["context"]
    assert max(result["pooled"]) < 1e-4, result["pooled"]
    assert max(result["eps"]) < 1e-4, result["eps"]
    assert result["n_sigmas"] == 1100
    assert result["sdpa_on_cpu"]
    assert 0 <= result["sigmas"] < 1e-5 * 160  # relative to sigma_max ~ 157
