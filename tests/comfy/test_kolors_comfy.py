"""Kolors in a real ComfyUI server: the tiny Kolors folders (both layouts) load through AestheteKolorsLoader and
generate through core nodes from a Chinese prompt; a one-step KSampler latent written by core SaveLatent equals
diffusers' KolorsPipeline computed from the same noise; the outputs are scored and ranked by Aesthete's nodes; a
DiffSynth-Studio 1.x Kolors LoRA goes onto the Kolors MODEL with every tensor placed and exact weights."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from devkit.graph import new_graph
from devkit.training_graphs import dataset_node, train_node
from harness.kolors_graphs import kolors_loader, one_step_latent, saved_latent
from devkit.kolors_models import RECIPE_PROMPT, small_kolors, tiny_kolors
from harness.lora_models import comfy_diffusers_names
from PIL import Image
from safetensors import safe_open

pytestmark = pytest.mark.comfy

NEGATIVE = "低质量，模糊"
DIFFSYNTH = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth"


@pytest.fixture(scope="module")
def kolors_folders(comfy_server) -> dict[str, str]:
    """Names the Kolors Loader lists for the tiny Kolors in the repository layout and in the diffusers layout."""
    return {"kolors": comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors"),
            "diffusers": "diffusers/" + comfy_server.link_model("diffusers", tiny_kolors("diffusers", "fp32"),
                                                                 "tiny-kolors-diffusers")}


def sample_graph(folder: str, prompt: str, seed: int = 3, steps: int = 2, cfg: float = 4.0, batch: int = 2,
                 predictor: str | None = None, prefix: str = "kolors"):
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=folder, dtype="auto", text_encoder_device="default")
    positive = g.node("CLIPTextEncode", text=prompt, clip=loader.out(1))
    negative = g.node("CLIPTextEncode", text=NEGATIVE, clip=loader.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=batch)
    sampler = g.node("KSampler", model=loader.out(0), positive=positive.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    decode = g.node("VAEDecode", samples=sampler.out(0), vae=loader.out(2))
    save = g.node("SaveImage", images=decode.out(0), filename_prefix=prefix)
    nodes = {"save": save, "sampler": sampler}
    if predictor is not None:
        p = g.node("AesthetePredictorLoader", model=predictor, device="auto", dtype="auto")
        score = g.node("AestheteScore", predictor=p.out(0), images=decode.out(0), batch_size=2)
        rank = g.node("AestheteRank", images=decode.out(0), scores=score.out(0), top_k=1, min_score=0.0)
        nodes["best"] = g.node("SaveImage", images=rank.out(0), filename_prefix=f"{prefix}-best")
        nodes["score"] = score
    return g, nodes


def images_of(comfy, result, node) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float32)
            for b in comfy.output_images(result, node.id)]


@pytest.mark.parametrize("layout", ["kolors", "diffusers"])
def test_kolors_folder_generates_scores_and_ranks_from_a_chinese_prompt(comfy, kolors_folders, tiny_predictor,
                                                                        layout):
    g, nodes = sample_graph(kolors_folders[layout], RECIPE_PROMPT, predictor=tiny_predictor, prefix=f"k-{layout}")
    result = comfy.run(g.finalize())
    images = images_of(comfy, result, nodes["save"])
    assert len(images) == 2 and images[0].shape == (64, 64, 3)
    assert all(np.isfinite(im).all() and im.std() > 1.0 for im in images)  # an image, not a flat colour
    best = images_of(comfy, result, nodes["best"])
    assert len(best) == 1 and any(np.array_equal(best[0], im) for im in images)
    text = " ".join(str(x) for x in result.node_output(nodes["score"].id).get("text", []))
    assert "mean" in text.lower()


def test_two_prompts_give_different_images(comfy, comfy_server, kolors_folders):
    """The tiny random model reads text weakly (its attention weights are small), so the images differ in few pixels;
    the latents differ far beyond float rounding (measured: mean difference about 6e-4 of their spread, rounding
    is about 1e-7)."""
    pictures, latents = [], []
    for i, prompt in enumerate([RECIPE_PROMPT, "a photo of a cat sitting on a red chair"]):
        g, nodes = sample_graph(kolors_folders["kolors"], prompt, batch=1, prefix=f"k-prompt{i}")
        g.node("SaveLatent", samples=nodes["sampler"].out(0), filename_prefix=f"latents/k-prompt{i}")
        pictures.append(images_of(comfy, comfy.run(g.finalize()), nodes["save"])[0])
        latents.append(saved_latent(comfy_server, f"k-prompt{i}"))
    assert not np.array_equal(pictures[0], pictures[1])
    assert (latents[0] - latents[1]).abs().mean() > 1e-4 * latents[0].std()


def test_one_step_latent_equals_the_reference_from_the_same_noise(comfy, comfy_server, kolors_folders):
    """KSampler, 1 step, euler, cfg 1, seed 11 -> core SaveLatent; diffusers' KolorsPipeline parts on the same fp32
    weights and the same noise: x = noise * sqrt(1 + sigma_max^2), eps = UNet(noise, 1099), latent = (x - sigma_max *
    eps) / scaling_factor."""
    from devkit.kolors_reference import encode, load_pipeline, scheduler_sigmas, unet_eps

    g = new_graph()
    loader = kolors_loader(g, kolors_folders["diffusers"])
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    one_step_latent(g, loader.out(0), positive.out(0), positive.out(0), "kolors-one-step", seed=11)
    comfy.run(g.finalize())
    ours = saved_latent(comfy_server, "kolors-one-step")

    pipe = load_pipeline(tiny_kolors("diffusers", "fp32"), torch.float32)
    noise = torch.randn([1, 4, 8, 8], generator=torch.manual_seed(11), dtype=torch.float32)  # ComfyUI's prepare_noise
    sigma = scheduler_sigmas(pipe)[-1].item()
    embeds, pooled = encode(pipe, RECIPE_PROMPT)
    eps = unet_eps(pipe, noise, 1099, embeds, pooled, 64, 64)
    x = noise * (1 + sigma ** 2) ** 0.5
    reference = (x - sigma * eps) / pipe.vae.config.scaling_factor
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4), (ours - reference).abs().max()


def test_broken_folder_is_a_clear_error_and_the_server_keeps_running(comfy, comfy_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken") / "no-tokenizer"
    shutil.copytree(tiny_kolors("kolors", "fp16"), folder)
    for path in folder.rglob("tokenizer.model"):
        path.unlink()
    name = comfy_server.link_model("kolors", folder, "broken-no-tokenizer")
    g, _ = sample_graph(name, "x", steps=1, batch=1, prefix="k-broken")
    result = comfy.run(g.finalize(), expect_error=True)
    error = result.events_of("execution_error")[0]["data"]
    assert error["node_type"] == "AestheteKolorsLoader"
    assert "no tokenizer.model in tokenizer/ or text_encoder/" in error["exception_message"]
    assert comfy.get("/system_stats").ok


def test_prompt_past_256_tokens_warns_what_was_cut(comfy, comfy_server, kolors_folders):
    words = " ".join(f"tag{i}" for i in range(300))
    g, nodes = sample_graph(kolors_folders["kolors"], words, steps=1, batch=1, prefix="k-long")
    comfy.run(g.finalize())
    log = comfy_server.log_text()
    assert "Kolors prompt is" in log and "past ChatGLM3's 256: the end was cut" in log


def _one_step_latent(comfy, comfy_server, model_source, clip_source, tag: str) -> torch.Tensor:
    """One KSampler step (seed 5, cfg 1), saved by core SaveLatent. ``model_source``: (node type, inputs), its output 0
    is the MODEL (and output 1 the CLIP when ``clip_source`` is None); ``clip_source``: (node type, inputs[, CLIP
    output index, default 0])."""
    g = new_graph()
    model_node = g.node(model_source[0], **model_source[1])
    clip_node = model_node if clip_source is None else g.node(clip_source[0], **clip_source[1])
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=clip_node.out(
        1 if clip_source is None else (clip_source[2] if len(clip_source) > 2 else 0)))
    one_step_latent(g, model_node.out(0), positive.out(0), positive.out(0), tag, seed=5)
    comfy.run(g.finalize())
    return saved_latent(comfy_server, tag)


def test_single_files_give_the_folders_numbers(comfy, comfy_server, kolors_folders):
    """The UNet file in models/diffusion_models (diffusers names, config.json beside it) and chatglm3-fp16.safetensors
    in models/text_encoders (config.json and tokenizer.model beside it) give the folder's latent."""
    from devkit.kolors_models import tiny_kolors_single_files

    files = tiny_kolors_single_files()
    folder = tiny_kolors("kolors", "fp16")
    unet_dir = comfy_server.models_dir / "diffusion_models" / "kolors-single"
    te_dir = comfy_server.models_dir / "text_encoders" / "kolors-single"
    for d in (unet_dir, te_dir):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files["unet"], unet_dir / files["unet"].name)
    shutil.copyfile(folder / "unet" / "config.json", unet_dir / "config.json")
    shutil.copyfile(files["chatglm3"], te_dir / files["chatglm3"].name)
    shutil.copyfile(files["text_encoder_config"], te_dir / "config.json")
    shutil.copyfile(files["tokenizer"] / "tokenizer.model", te_dir / "tokenizer.model")

    loader = ("AestheteKolorsLoader", dict(kolors=kolors_folders["kolors"], dtype="fp32", text_encoder_device="default"))
    from_folder = _one_step_latent(comfy, comfy_server, loader, None, "kolors-folder")
    singles = _one_step_latent(
        comfy, comfy_server,
        ("AestheteKolorsUNetLoader", dict(unet_name=f"kolors-single/{files['unet'].name}", dtype="fp32")),
        ("AestheteChatGLM3Loader", dict(text_encoder=f"kolors-single/{files['chatglm3'].name}", dtype="fp32",
                                        device="default")), "kolors-singles")
    assert torch.allclose(singles, from_folder, atol=1e-5, rtol=1e-5)


def test_train_lora_takes_the_kolors_model_clip_and_vae(comfy, comfy_server, kolors_folders):
    """Train LoRA on the Kolors loader's outputs, unchanged: captions encoded by ChatGLM3, the loss is finite, the
    saved file loads in core LoraLoaderModelOnly on the Kolors MODEL with every key mapped."""
    from devkit.training_data import write_pattern_folder

    write_pattern_folder(comfy_server.input_dir / "kolors_pattern", count=2)
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors_folders["kolors"], dtype="fp32",
                    text_encoder_device="default")
    data = dataset_node(g, "kolors_pattern")
    train = train_node(g, loader.out(0), loader.out(1), loader.out(2), data.out(0), learning_rate=1e-3,
                       checkpoint_name="kolors_test/checkpoint")
    g.node("AestheteSaveLora", lora=train.out(1), name_prefix="kolors_test/pattern", precision="fp32",
           diffsynth_copy=False)
    comfy.run(g.finalize(), timeout=480)
    saved = comfy_server.models_dir / "loras" / "kolors_test" / "pattern_00001.safetensors"
    assert saved.exists()
    before = comfy_server.log_text().count("lora key not loaded")
    g, nodes = sample_graph(kolors_folders["kolors"], RECIPE_PROMPT, steps=1, batch=1, prefix="k-trained")
    lora = g.node("LoraLoaderModelOnly", model=g.lookup_node("1").out(0), lora_name="kolors_test/pattern_00001.safetensors",
                  strength_model=1.0)
    nodes["sampler"].set_input("model", lora.out(0))
    comfy.run(g.finalize())
    assert comfy_server.log_text().count("lora key not loaded") == before


def test_sampler_custom_with_basic_scheduler_gives_the_ksampler_latent(comfy, comfy_server, kolors_folders):
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors_folders["kolors"], dtype="fp32",
                    text_encoder_device="default")
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampler = g.node("KSampler", model=loader.out(0), positive=positive.out(0), negative=positive.out(0),
                     latent_image=latent.out(0), seed=5, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                     denoise=1.0)
    g.node("SaveLatent", samples=sampler.out(0), filename_prefix="latents/kolors-ksampler")
    sigmas = g.node("BasicScheduler", model=loader.out(0), scheduler="normal", steps=2, denoise=1.0)
    select = g.node("KSamplerSelect", sampler_name="euler")
    custom = g.node("SamplerCustom", model=loader.out(0), add_noise=True, noise_seed=5, cfg=1.0,
                    positive=positive.out(0), negative=positive.out(0), sampler=select.out(0), sigmas=sigmas.out(0),
                    latent_image=latent.out(0))
    g.node("SaveLatent", samples=custom.out(0), filename_prefix="latents/kolors-custom")
    comfy.run(g.finalize())
    ksampler, custom_latent = saved_latent(comfy_server, "kolors-ksampler"), saved_latent(comfy_server, "kolors-custom")
    assert torch.allclose(ksampler, custom_latent, atol=1e-5, rtol=1e-5)


def _weighted_and_plain_context_rows(folder: str) -> dict:
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_clip

    f = find_kolors_folder(folder, prefer_fp16=False)
    clip = kolors_clip(f.text_encoder_files, f.text_encoder_config, f.tokenizer_model, "fp32", "cpu")
    tokens = clip.tokenize("blue hair, (ganyu:1.3)")
    weighted = tokens["chatglm3"][0]
    plain = [(t, 1.0) for t, _ in weighted]
    c_plain = clip.encode_from_tokens({"chatglm3": [plain]})
    c_weighted = clip.encode_from_tokens(tokens)
    ganyu = clip.tokenize("ganyu")["chatglm3"][0][-len([w for _, w in weighted if w != 1.0]):]
    c_empty = clip.encode_from_tokens(clip.tokenize(""))
    rows = [i for i, (t, w) in enumerate(weighted) if w != 1.0]
    others = [i for i in range(len(weighted)) if i not in rows]
    expect = (c_plain[0, rows] - c_empty[0, rows]) * 1.3 + c_empty[0, rows]
    return {"ids_equal": [t for t, _ in ganyu] == [t for t, w in weighted if w != 1.0], "rows": len(rows),
            "weighted": (c_weighted[0, rows] - expect).abs().max().item(),
            "others": (c_weighted[0, others] - c_plain[0, others]).abs().max().item()}


def test_prompt_weights_are_parsed_and_applied_as_clip_text_encode_does():
    """``(ganyu:1.3)``: the weight reaches exactly the tokens of "ganyu", and their context rows move away from the
    empty prompt's by that factor (ComfyUI's ClipTokenWeightEncoder rule); the unweighted rows stay. (Each weighted
    segment is tokenized on its own, as ComfyUI's tokenizers do, so the same tokens at weight 1 are the baseline.)"""
    from harness.in_comfy import run_in_comfy

    result = run_in_comfy(_weighted_and_plain_context_rows, str(tiny_kolors("kolors", "fp32")))
    assert result["ids_equal"] and result["rows"] >= 1
    assert result["weighted"] < 1e-5 and result["others"] < 1e-6

def _diffsynth_kolors_lora(with_text_projection: bool) -> dict[str, torch.Tensor]:
    """The Kolors LoRA DiffSynth's own trainer wrote (tests/fixtures/diffsynth/tiny_kolors_lora.ckpt: rank 4,
    ``blocks.7.transformer_blocks.{0,1}`` attention, no alpha), optionally with the text projection among its
    targets as DiffSynth names it when ``text_intermediate_proj`` is trained too (ChatGLM3 width -> 2048)."""
    lora = torch.load(DIFFSYNTH / "tiny_kolors_lora.ckpt", map_location="cpu", weights_only=True)
    if with_text_projection:
        with safe_open(str(small_kolors() / "unet" / "diffusion_pytorch_model.fp16.safetensors"), "pt") as f:
            out_dim, in_dim = f.get_slice("encoder_hid_proj.weight").get_shape()
        g = torch.Generator().manual_seed(13)
        lora["text_intermediate_proj.lora_A.default.weight"] = torch.randn(4, in_dim, generator=g) * 0.05
        lora["text_intermediate_proj.lora_B.default.weight"] = torch.randn(out_dim, 4, generator=g) * 0.05
    return lora


def _unet_names() -> dict[str, tuple[str, str]]:
    """DiffSynth module -> (ldm module, diffusers module) of the small Kolors UNet, from outside the pack: DiffSynth's
    own converter table (ldm -> DiffSynth) and ComfyUI's unet_to_diffusers (ldm -> diffusers) for its block layout."""
    from devkit.build_models import SMALL_SDXL_CONFIG

    to_diffusers = comfy_diffusers_names(SMALL_SDXL_CONFIG)
    names = {}
    for ldm, diffsynth in json.loads((DIFFSYNTH / "unet_names.json").read_text())["sdxl"].items():
        ldm, diffsynth = ldm.removesuffix(".weight"), diffsynth.removesuffix(".weight")
        if ldm in to_diffusers:
            names[diffsynth] = (ldm, to_diffusers[ldm])
    names["text_intermediate_proj"] = ("encoder_hid_proj", "encoder_hid_proj")  # Kolors's own module
    return names


@pytest.mark.parametrize("with_text_projection", [
    pytest.param(False, id="as-diffsynth-wrote-it"),
    # DiffSynth's text_intermediate_proj lands on the Kolors MODEL's encoder_hid_proj
    pytest.param(True, id="with-text-projection"),
])
def test_a_diffsynth_kolors_lora_on_the_kolors_model(comfy, comfy_server, with_text_projection):
    """small_kolors (the SDXL block layout at 320 channels, so DiffSynth's Kolors LoRA fits) -> Load LoRA (any format),
    strength 1 -> core ModelSave: every targeted weight is W + alpha/rank * B @ A with alpha 4 (the recipe's; DiffSynth
    stores none) and the rank of the file, and the report says every tensor was placed."""
    folder = comfy_server.link_model("kolors", small_kolors(), "aesthete-small-kolors")
    lora = _diffsynth_kolors_lora(with_text_projection)
    name = f"aesthete-kolors-diffsynth{'-textproj' if with_text_projection else ''}.ckpt"
    (comfy_server.models_dir / "loras").mkdir(parents=True, exist_ok=True)
    if with_text_projection:
        torch.save(lora, comfy_server.models_dir / "loras" / name)
    else:
        shutil.copyfile(DIFFSYNTH / "tiny_kolors_lora.ckpt", comfy_server.models_dir / "loras" / name)  # its bytes
    prefix = f"aesthete_kolors_lora/{name.removesuffix('.ckpt')}"

    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=folder, dtype="fp32", text_encoder_device="default")
    patched = g.node("AestheteLoraLoader", model=loader.out(0), clip=loader.out(1), lora_name=name,
                     strength_model=1.0, strength_clip=1.0, alpha=4.0)
    g.node("ModelSave", model=patched.out(0), filename_prefix=prefix)
    report = g.node("PreviewAny", source=patched.out(2))
    log_before = len(comfy_server.log_text())
    result = comfy.run(g.finalize(), timeout=600)
    saved = sorted((comfy_server.output_dir / prefix).parent.glob(f"{Path(prefix).name}_*.safetensors"))
    try:
        assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
        text = result.node_output(report.id)["text"][0]
        tensors = len(lora)
        assert "DiffSynth" in text and f"Applied {tensors} of {tensors} tensors" in text, text
        assert "Not placed" not in text and re.search(r"alpha 4\b", text), text
        assert len(saved) == 1, saved
        names = _unet_names()
        modules = sorted({k.split(".lora_")[0] for k in lora})
        assert len(modules) == tensors // 2
        with safe_open(str(small_kolors() / "unet" / "diffusion_pytorch_model.fp16.safetensors"), "pt") as f:
            original = {m: f.get_tensor(names[m][1] + ".weight").double() for m in modules}
        with safe_open(str(saved[0]), "pt") as f:
            got = {m: f.get_tensor(f"model.diffusion_model.{names[m][0]}.weight").double() for m in modules}
    finally:
        for path in saved:
            path.unlink()  # 1.1 GB each
    for m in modules:
        up, down = lora[f"{m}.lora_B.default.weight"].double(), lora[f"{m}.lora_A.default.weight"].double()
        rank = down.shape[0]
        want = original[m] + 4.0 / rank * (up @ down)
        err = (got[m] - want).abs().max().item()
        assert err <= 1e-6 * want.abs().max().item(), f"{m}: off by {err:g}"


def test_a_kolors_unet_saved_by_modelsave_loads_in_core_unet_loader(comfy, comfy_server, kolors_folders):
    """Core ModelSave writes the Kolors MODEL; core UNETLoader finds it Kolors again (the model config registered in
    ComfyUI's detection list) and samples with the Kolors CLIP. A ComfyUI-format file does not record the attention
    head width, so detection takes Kolors's 64 channels: the tiny test model's 16-channel heads make its numbers
    differ, so only the detection and a clean load are checked here (the real Kolors has 64)."""
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors_folders["kolors"], dtype="fp32",
                    text_encoder_device="default")
    g.node("ModelSave", model=loader.out(0), filename_prefix="kolors-roundtrip/unet")
    comfy.run(g.finalize())
    [saved] = (comfy_server.output_dir / "kolors-roundtrip").glob("unet*.safetensors")
    name = comfy_server.link_model("diffusion_models", saved, "kolors-roundtrip.safetensors")
    before = comfy_server.log_text()
    latent = _one_step_latent(comfy, comfy_server, ("UNETLoader", dict(unet_name=name, weight_dtype="default")),
                              ("AestheteKolorsLoader", dict(kolors=kolors_folders["kolors"], dtype="fp32",
                                                            text_encoder_device="default"), 1), "kolors-roundtrip")
    assert torch.isfinite(latent).all()
    new_log = comfy_server.log_text()[len(before):]
    assert "unet missing" not in new_log and "unet unexpected" not in new_log and "left over keys" not in new_log
