"""The tiny Kolors test models load back with diffusers' own Kolors classes, generate, and the reference helpers
give the pipeline's own numbers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from harness import kolors_reference as ref  # noqa: E402
from harness.kolors_models import RECIPE_PROMPT, tiny_kolors  # noqa: E402

LAYOUTS = ["kolors", "diffusers"]


@pytest.fixture(scope="module", params=LAYOUTS)
def pipe(request):
    return ref.load_pipeline(tiny_kolors(request.param), torch.float32)


def test_pipeline_generates_two_steps_without_nan(pipe):
    images = pipe(prompt=RECIPE_PROMPT, negative_prompt="模糊, 低分辨率", num_inference_steps=2, height=64, width=64,
                  guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 3, 64, 64)
    assert torch.isfinite(images).all()
    assert images.std() > 0.01


def test_tokenizer_covers_the_recipe_prompt(pipe):
    tokens = pipe.tokenizer.tokenize(RECIPE_PROMPT)
    assert "<unk>" not in tokens
    assert "，" in tokens  # full-width punctuation kept, as ChatGLM3 does
    ids = pipe.tokenizer(RECIPE_PROMPT)["input_ids"]
    assert pipe.tokenizer.convert_ids_to_tokens(ids[:2]) == ["[gMASK]", "sop"]


def test_encode_gives_what_the_pipeline_gives(pipe):
    embeds, pooled = ref.encode(pipe, [RECIPE_PROMPT, "a cat"])
    assert embeds.shape == (2, 256, 64) and pooled.shape == (2, 64)
    own, _, own_pooled, _ = pipe.encode_prompt(RECIPE_PROMPT, do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds[:1], own, rtol=0, atol=0)
    torch.testing.assert_close(pooled[:1], own_pooled, rtol=0, atol=0)
    assert not torch.allclose(embeds[0], embeds[1])


def test_pooled_is_the_last_block_before_the_final_norm(pipe):
    tokens = pipe.tokenizer([RECIPE_PROMPT], padding="max_length", max_length=256, return_tensors="pt")
    with torch.no_grad():
        out = pipe.text_encoder(**tokens, output_hidden_states=True)
    _, pooled = ref.encode(pipe, RECIPE_PROMPT)
    torch.testing.assert_close(pooled, out.hidden_states[-1][-1], rtol=0, atol=0)
    normed = pipe.text_encoder.encoder.final_layernorm(out.hidden_states[-1][-1])
    assert not torch.allclose(pooled, normed, atol=1e-3)


def test_unet_eps_matches_the_pipelines_unet_call(pipe):
    embeds, pooled = ref.encode(pipe, RECIPE_PROMPT)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    captured = {}

    def hook(module, args, kwargs, output):
        captured.update(latent=args[0].clone(), t=args[1], eps=output[0].clone())

    handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, latents=latent, num_inference_steps=1, height=64,
             width=64, guidance_scale=1.0, output_type="latent")
    finally:
        handle.remove()
    eps = ref.unet_eps(pipe, captured["latent"], captured["t"], embeds, pooled, 64, 64)
    torch.testing.assert_close(eps, captured["eps"], rtol=0, atol=0)


def test_both_layouts_hold_the_same_weights():
    a, b = (ref.load_pipeline(tiny_kolors(layout), torch.float32) for layout in LAYOUTS)
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"{part}.{k}")
