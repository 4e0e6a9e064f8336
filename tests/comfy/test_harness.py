"""The test harness itself: the random SD1.5 checkpoint is a real SD15 model to ComfyUI and a graph runs on it."""

from __future__ import annotations

import io

from PIL import Image


def txt2img_graph(ckpt: str, batch: int = 1, steps: int = 1, seed: int = 1, prefix: str = "harness") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def test_small_sd15_checkpoint_generates(comfy, comfy_server, sd15_ckpt):
    result = comfy.run(txt2img_graph(sd15_ckpt, batch=2, steps=2))
    images = comfy.output_images(result, "7")
    assert len(images) == 2
    for data in images:
        img = Image.open(io.BytesIO(data))
        assert img.size == (64, 64)
    assert result.progress_of("5")[-1] == (2, 2)  # the sampler reported its steps on the websocket
    assert "model_type EPS" in comfy_server.log_text()  # detected as an SD1.x (eps-prediction) model
