"""ChatGLM3 in 8 and 4 bits inside ComfyUI: the Kolors CLIP built by our loader holds the quantized bytes in its
ModelPatcher (what ComfyUI's memory management counts), encodes close to fp32, and a graph with the Kolors Loader's
4-bit choice generates through core nodes; a ChatGLM3 GGUF file loads through the ChatGLM3 loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from devkit.graph import new_graph
from devkit.kolors_models import RECIPE_PROMPT, tiny_chatglm3_gguf, tiny_kolors
from harness.in_comfy import run_in_comfy
from harness.kolors_graphs import kolors_loader, one_step_latent, saved_latent
from PIL import Image

pytestmark = pytest.mark.comfy


def _quantized_text_encoders_against_fp32(folder: str) -> dict:
    import torch
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_clip

    f = find_kolors_folder(folder)
    out = {}
    for name in ("fp32", "fp16", "q8_0", "q4_1"):
        clip = kolors_clip(f.text_encoder_files, f.text_encoder_config, f.tokenizer_model, name, "cpu")
        cond, pooled = clip.encode_from_tokens(clip.tokenize(RECIPE_PROMPT), return_pooled=True)
        layers = clip.cond_stage_model.transformer.transformer.encoder.layers
        held = sum(t.numel() * t.element_size() for t in layers.state_dict().values())
        out[name] = {"cond": cond, "pooled": pooled, "held": held, "size": clip.patcher.model_size(),
                     "kind": type(layers[0].mlp.dense_h_to_4h).__name__}
    ref = out["fp32"]["cond"]
    return {name: {"rel": ((v["cond"] - ref).norm() / ref.norm()).item(), "held": v["held"], "size": v["size"],
                   "kind": v["kind"], "finite": bool(torch.isfinite(v["cond"]).all())}
            for name, v in out.items()}


def test_quantized_text_encoder_in_comfyui_holds_fewer_bytes_and_stays_close():
    result = run_in_comfy(_quantized_text_encoders_against_fp32, str(tiny_kolors("kolors", "fp16")))
    assert result["q8_0"]["kind"].startswith("QuantizedLinear") and result["q4_1"]["kind"].startswith("QuantizedLinear")
    assert result["q8_0"]["finite"] and result["q4_1"]["finite"]
    # the layers' matrices: 8.5 and 5 bits per weight against fp16's 16 (norms and biases in fp32 on the CPU)
    assert result["q4_1"]["held"] < result["q8_0"]["held"] < 0.6 * result["fp16"]["held"]
    assert result["q4_1"]["size"] < result["q8_0"]["size"] < result["fp32"]["size"]
    assert result["q8_0"]["rel"] < 0.01 and result["q4_1"]["rel"] < 0.1, result


def test_kolors_loader_with_a_4_bit_text_encoder_generates(comfy, comfy_server):
    name = comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors")
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=name, dtype="auto, text encoder q4_1", text_encoder_device="default")
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampler = g.node("KSampler", model=loader.out(0), positive=positive.out(0), negative=positive.out(0),
                     latent_image=latent.out(0), seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal",
                     denoise=1.0)
    decode = g.node("VAEDecode", samples=sampler.out(0), vae=loader.out(2))
    save = g.node("SaveImage", images=decode.out(0), filename_prefix="kolors-q4")
    result = comfy.run(g.finalize())
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float32)
              for b in comfy.output_images(result, save.id)]
    assert len(images) == 1 and images[0].shape == (64, 64, 3) and images[0].std() > 1.0


def _one_step_latent(comfy, comfy_server, kolors: str, tag: str, text_encoder: str | None = None) -> torch.Tensor:
    g = new_graph()
    loader = kolors_loader(g, kolors)
    clip = loader.out(1)
    if text_encoder is not None:
        clip = g.node("AestheteChatGLM3Loader", text_encoder=text_encoder, dtype="q8_0", device="default").out(0)
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=clip)
    one_step_latent(g, loader.out(0), positive.out(0), positive.out(0), tag, seed=3)
    comfy.run(g.finalize())
    return saved_latent(comfy_server, tag)


def test_a_chatglm3_gguf_file_in_models_llm_encodes_like_the_fp32_text_encoder(comfy, comfy_server):
    """A user's ChatGLM3 GGUF (Q8_0, as llama.cpp writes it, with its config.json and tokenizer.model beside it) in
    models/LLM, loaded by the ChatGLM3 loader in q8_0, conditions one sampling step as Kolors's own fp32 text encoder
    does, within the 8-bit drift."""
    kolors = comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors")
    folder = comfy_server.link_model("LLM", tiny_chatglm3_gguf("Q8_0").parent, "tiny-chatglm3-gguf")
    reference = _one_step_latent(comfy, comfy_server, kolors, "kolors-te-fp32")
    ours = _one_step_latent(comfy, comfy_server, kolors, "kolors-te-gguf",
                            text_encoder=f"LLM/{folder}/chatglm3-q8_0.gguf")
    assert torch.isfinite(ours).all()
    assert (ours - reference).norm() / reference.norm() < 0.01
