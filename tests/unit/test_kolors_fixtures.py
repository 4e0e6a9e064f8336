"""The tiny Kolors test models load back with diffusers' own Kolors classes, generate, and the reference helpers
give the pipeline's own numbers; the bad-input copies are broken the way they claim."""

from __future__ import annotations

import pickle
import pickletools
import zipfile

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from devkit import kolors_reference as ref  # noqa: E402
from devkit.kolors_models import (RECIPE_PROMPT, TINY_UNET, bad_kolors, malicious_marker,  # noqa: E402
                                   tiny_kolors, tiny_kolors_single_files)

FOLDERS = [("kolors", "fp16"), ("diffusers", "fp16")]
REAL_NEGATIVE = "模糊, 低分辨率, 变形, 扭曲, 噪点"


@pytest.fixture(scope="module", params=FOLDERS, ids=["-".join(p) for p in FOLDERS])
def pipe(request):
    return ref.load_pipeline(tiny_kolors(*request.param), torch.float32)


def test_pipeline_generates_two_steps_without_nan(pipe):
    images = pipe(prompt=RECIPE_PROMPT, negative_prompt=REAL_NEGATIVE, num_inference_steps=2, height=64, width=64,
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
    assert max(ids) < pipe.text_encoder.config.padded_vocab_size


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
    embeds, pooled = ref.encode(pipe, RECIPE_PROMPT)
    torch.testing.assert_close(pooled, out.hidden_states[-1][-1], rtol=0, atol=0)
    torch.testing.assert_close(embeds, out.hidden_states[-2].permute(1, 0, 2), rtol=0, atol=0)
    normed = pipe.text_encoder.encoder.final_layernorm(out.hidden_states[-1][-1])
    assert not torch.allclose(pooled, normed, atol=1e-3)
    torch.testing.assert_close(out.last_hidden_state[-1], normed, rtol=0, atol=0)


def test_unet_eps_matches_the_pipelines_unet_call(pipe):
    embeds, pooled = ref.encode(pipe, RECIPE_PROMPT)
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    captured = {}

    def hook(module, args, kwargs, output):
        captured.update(latent=args[0].clone(), t=args[1], eps=output[0].clone())

    handle = pipe.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, latents=latent, num_inference_steps=1, height=64,
             width=96, guidance_scale=1.0, output_type="latent")
    finally:
        handle.remove()
    eps = ref.unet_eps(pipe, captured["latent"], captured["t"], embeds, pooled, 64, 96)
    torch.testing.assert_close(eps, captured["eps"], rtol=0, atol=0)
    other = ref.unet_eps(pipe, captured["latent"], captured["t"], embeds, pooled, 96, 64)
    assert not torch.allclose(eps, other)  # the size conditioning reaches the output


def test_one_step_euler_is_the_pipelines_first_euler_step_at_sigma_max(pipe):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    saved = ref.one_step_euler(pipe, noise, RECIPE_PROMPT, 64, 64)
    # the pipeline multiplies the given latents by init_noise_sigma = sqrt(1 + sigma_max^2) ("leading" spacing)
    out = pipe(prompt=[RECIPE_PROMPT] * 2, latents=noise, timesteps=[1099], height=64, width=64, guidance_scale=1.0,
               output_type="latent").images
    assert float(pipe.scheduler.init_noise_sigma) == pytest.approx(float((1 + ref.scheduler_sigmas(pipe)[-1] ** 2) ** 0.5))
    torch.testing.assert_close(saved * pipe.vae.config.scaling_factor, out, rtol=1e-5, atol=1e-5)


def test_scheduler_sigmas_are_kolors_training_sigmas(pipe):
    sigmas = ref.scheduler_sigmas(pipe)
    assert sigmas.shape == (1100,)
    # ComfyUI's ModelSamplingDiscrete: "linear" betas = linspace(sqrt(start), sqrt(end))^2, in float64
    betas = torch.linspace(0.00085 ** 0.5, 0.014 ** 0.5, 1100, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    comfy = ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()
    torch.testing.assert_close(sigmas, comfy, rtol=1e-5, atol=1e-6)
    assert float(sigmas[-1]) == pytest.approx(29.06, abs=0.01)  # SDXL's 1000 steps to 0.012 end at 14.6
    assert float(sigmas[0]) == pytest.approx(0.02916, abs=1e-4)


def test_both_layouts_hold_the_same_weights():
    a, b = (ref.load_pipeline(tiny_kolors(layout), torch.float32) for layout in ("kolors", "diffusers"))
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"{part}.{k}")


@pytest.mark.parametrize("layout", ["kolors", "diffusers"])
def test_fp32_folders_hold_the_fp16_weights_in_full_precision(layout):
    full = ref.load_pipeline(tiny_kolors(layout, "fp32"), torch.float32)
    half = ref.load_pipeline(tiny_kolors(layout, "fp16"), torch.float32)
    assert full.unet.dtype == torch.float32
    for part in ("unet", "vae", "text_encoder"):
        sf, sh = getattr(full, part).state_dict(), getattr(half, part).state_dict()
        assert sf.keys() == sh.keys()
        for k in sf:  # fp16 rounding of the same fp32 weights, nothing else
            torch.testing.assert_close(sf[k].half().float(), sh[k], rtol=0, atol=0, msg=f"{part}.{k}")
    assert any(not torch.equal(v.half().float(), v) for v in full.unet.state_dict().values())


def test_kolors_layout_has_the_real_repository_files():
    folder = tiny_kolors("kolors", "fp16")
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == {
        "model_index.json", "scheduler/scheduler_config.json",
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/config.json", "text_encoder/pytorch_model.bin.index.json",
        "text_encoder/pytorch_model-00001-of-00002.bin", "text_encoder/pytorch_model-00002-of-00002.bin",
        "text_encoder/tokenizer.model", "text_encoder/tokenizer_config.json", "text_encoder/vocab.txt",
        "tokenizer/tokenizer.model", "tokenizer/tokenizer_config.json", "tokenizer/vocab.txt"}
    fp32 = tiny_kolors("kolors", "fp32")
    assert (fp32 / "unet" / "diffusion_pytorch_model.safetensors").exists()
    index = ref.json.loads((folder / "text_encoder" / "pytorch_model.bin.index.json").read_text())
    shard = torch.load(folder / "text_encoder" / "pytorch_model-00001-of-00002.bin", weights_only=True)
    assert all(k.startswith("transformer.") for k in index["weight_map"])
    assert set(shard) <= set(index["weight_map"]) and "transformer.rotary_pos_emb.inv_freq" in index["weight_map"]
    assert all(v.dtype == torch.float16 for v in shard.values())


def test_tiny_unet_has_the_real_kolors_structure():
    real = ref.fixture_config("unet_config.json")
    for key in ("encoder_hid_dim_type", "addition_embed_type", "addition_time_embed_dim", "use_linear_projection",
                "in_channels", "out_channels", "mid_block_type", "layers_per_block"):
        assert TINY_UNET[key] == real[key], key
    # two levels instead of three, of the same kinds: no attention on the first level, cross-attention below it
    assert list(TINY_UNET["down_block_types"]) == real["down_block_types"][:1] + real["down_block_types"][-1:]
    assert list(TINY_UNET["up_block_types"]) == real["up_block_types"][:1] + real["up_block_types"][-1:]
    # one head width on every level, as ComfyUI's UNetModel (num_head_channels) and the real model (64) have
    widths = {c // h for c, h in zip(TINY_UNET["block_out_channels"], TINY_UNET["attention_head_dim"])}
    assert len(widths) == 1
    assert {c // h for c, h in zip(real["block_out_channels"], real["attention_head_dim"])} == {64}
    # the encoder_hid_proj / add_embedding widths follow the text encoder's hidden size, as 4096 / 5632 do
    assert real["projection_class_embeddings_input_dim"] == real["encoder_hid_dim"] + 6 * 256


def test_real_kolors_unet_and_chatglm3_key_lists():
    unet = ref.real_kolors_unet_keys()
    assert unet["encoder_hid_proj.weight"] == (2048, 4096)
    assert unet["add_embedding.linear_1.weight"] == (1280, 5632)
    assert sum(torch.Size(s).numel() for s in unet.values()) == pytest.approx(2.58e9, rel=0.01)
    tiny = torch.load(tiny_kolors("kolors", "fp16") / "text_encoder" / "pytorch_model-00002-of-00002.bin",
                      weights_only=True)
    chatglm = ref.real_chatglm3_keys()
    assert set(tiny) <= set(chatglm)  # the tiny shards use the real checkpoint's key names
    assert chatglm["transformer.encoder.layers.0.self_attention.query_key_value.weight"] == (4096 + 2 * 2 * 128, 4096)
    assert sum(torch.Size(s).numel() for s in chatglm.values()) == pytest.approx(6.24e9, rel=0.01)


def test_single_files_load_as_the_wrappers_load_them():
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel
    from diffusers.pipelines.kolors.tokenizer import ChatGLMTokenizer
    from safetensors.torch import load_file

    files = tiny_kolors_single_files()
    pipe = ref.load_pipeline(tiny_kolors("kolors", "fp16"), torch.float32)
    # ChatGLM3: a strict load_state_dict into ChatGLMModel, no "transformer." prefix, config and tokenizer beside
    config = ChatGLMConfig(**ref.json.loads(files["text_encoder_config"].read_text()))
    encoder = ChatGLMModel(config)
    encoder.load_state_dict(load_file(files["chatglm3"]), strict=True)
    pipe.text_encoder = encoder.float().eval()
    pipe.tokenizer = ChatGLMTokenizer.from_pretrained(files["tokenizer"])
    embeds, pooled = ref.encode(pipe, RECIPE_PROMPT)
    expected = ref.encode(ref.load_pipeline(tiny_kolors("kolors", "fp16"), torch.float32), RECIPE_PROMPT)
    torch.testing.assert_close((embeds, pooled), expected, rtol=0, atol=0)
    # the UNet file: the repository's diffusers keys, strict
    unet = UNet2DConditionModel.from_config(pipe.unet.config)
    unet.load_state_dict(load_file(files["unet"]), strict=True)
    assert load_file(files["vae"]).keys() == pipe.vae.state_dict().keys()


def test_truncated_shard_fails_to_load():
    shard = bad_kolors("truncated-shard") / "text_encoder" / "pytorch_model-00002-of-00002.bin"
    with pytest.raises(Exception):
        torch.load(shard, weights_only=True)


def test_missing_parts_are_missing():
    assert not (bad_kolors("no-text-encoder") / "text_encoder").exists()
    assert (bad_kolors("no-text-encoder") / "unet" / "config.json").exists()
    folder = bad_kolors("no-tokenizer")
    assert not list(folder.rglob("tokenizer.model")) and not list(folder.rglob("vocab.txt"))
    assert (folder / "text_encoder" / "tokenizer_config.json").exists()


def _pickled_globals(shard) -> tuple[set[str], list[str]]:
    """The globals a torch.save file's pickle would import and the strings it holds, read without unpickling."""
    with zipfile.ZipFile(shard) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        elif opcode.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
    return found, strings


def test_malicious_shard_is_refused_by_a_weights_only_load_without_running_code():
    folder = bad_kolors("malicious-shard")
    shard = folder / "text_encoder" / "pytorch_model-00001-of-00002.bin"
    found, strings = _pickled_globals(shard)
    # the payload is there: getattr(pathlib.Path, "touch")(marker), as pickle protocol 2 writes Path.touch
    assert {"pathlib.Path", "__builtin__.getattr"} <= found and "touch" in strings
    assert "MALICIOUS_CODE_RAN" in strings  # PosixPath pickles as its parts
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(shard, weights_only=True)
    assert not malicious_marker(folder).exists()
