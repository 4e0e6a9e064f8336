"""A DiffSynth 1.x LoRA written by DiffSynth's own trainer code (tests/fixtures/diffsynth/tiny_sd_lora.ckpt, see
scripts/make_diffsynth_fixtures.py) loads in a real ComfyUI and changes the generated image; at strength 0 the
image is the same as without it, so the change is the LoRA's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "diffsynth"


def _branch(graph: dict, n: int, model, prefix: str) -> None:
    graph[f"{n}"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 7, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["2", 0], "denoise": 1.0}}
    graph[f"{n + 1}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{n}", 0], "vae": ["1", 2]}}
    graph[f"{n + 2}"] = {"class_type": "SaveImage", "inputs": {"images": [f"{n + 1}", 0], "filename_prefix": prefix}}


def _image(comfy_server, result, node: str) -> np.ndarray:
    info = result.node_output(node)["images"][0]
    path = comfy_server.output_dir / info["subfolder"] / info["filename"]
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def test_diffsynth_trained_lora_changes_the_image(comfy, comfy_server, sd15_ckpt):
    name = comfy_server.link_model("loras", FIXTURES / "tiny_sd_lora.ckpt", "aesthete-diffsynth-tiny.ckpt")
    # the LoRA has no text-encoder layers, so every branch shares one prompt encoding
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_ckpt}},
             "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a watercolor lighthouse", "clip": ["1", 1]}},
             "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}}}
    for n, strength in ((30, 1.0), (50, 0.0)):
        graph[f"{n - 1}"] = {"class_type": "AestheteLoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": name, "strength_model": strength,
            "strength_clip": 1.0, "alpha": 4.0}}
        _branch(graph, n, [f"{n - 1}", 0], f"aesthete_lora/s{strength:g}")
    _branch(graph, 10, ["1", 0], "aesthete_lora/base")
    graph["90"] = {"class_type": "PreviewAny", "inputs": {"source": ["29", 2]}}

    result = comfy.run(graph, timeout=300)
    report = result.node_output("90")["text"][0]
    assert "DiffSynth-Studio 1.x" in report and "Base: sd15" in report
    assert "Applied 16 of 16 tensors: 8 UNet layers, 0 text-encoder layers" in report
    assert "rank 4, alpha 4" in report

    base, with_lora, zero = (_image(comfy_server, result, n) for n in ("12", "32", "52"))
    assert np.array_equal(base, zero)  # same seed, strength 0: the pipeline itself is deterministic
    diff = np.abs(base - with_lora).mean()
    assert diff > 2.0, f"the LoRA barely changed the image (mean abs difference {diff:.3f} / 255)"
