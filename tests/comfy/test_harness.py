"""The test harness itself: the random SD1.5 checkpoint is a real SD15 model to ComfyUI and a graph runs on it."""

from __future__ import annotations

import io

from PIL import Image

from devkit.graph import new_graph


def txt2img_graph(ckpt: str, batch: int = 1, steps: int = 1, seed: int = 1, prefix: str = "harness"):
    """Checkpoint -> prompts -> KSampler -> VAEDecode -> SaveImage; returns the builder, the sampler and the save."""
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    positive = g.node("CLIPTextEncode", text="a red square", clip=ckpt.out(1))
    negative = g.node("CLIPTextEncode", text="", clip=ckpt.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=batch)
    sampler = g.node("KSampler", model=ckpt.out(0), positive=positive.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), seed=seed, steps=steps, cfg=5.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampler.out(0), vae=ckpt.out(2))
    return g, sampler, g.node("SaveImage", images=decoded.out(0), filename_prefix=prefix)


def test_small_sd15_checkpoint_generates(comfy, comfy_server, sd15_ckpt):
    g, sampler, save = txt2img_graph(sd15_ckpt, batch=2, steps=2)
    result = comfy.run(g.finalize())
    images = comfy.output_images(result, save.id)
    assert len(images) == 2
    for data in images:
        img = Image.open(io.BytesIO(data))
        assert img.size == (64, 64)
    assert result.progress_of(sampler.id)[-1] == (2, 2)  # the sampler reported its steps on the websocket
    assert "model_type EPS" in comfy_server.log_text()  # detected as an SD1.x (eps-prediction) model
