"""Kolors-IP-Adapter-Plus on the Kolors MODEL in a real ComfyUI, against diffusers' KolorsPipeline.load_ip_adapter on
the same tiny weights (a tiny IP-Adapter for the tiny UNet, with the real-size ViT-L/14-336 image encoder core Load
CLIP Vision reads), and the errors of a wrong pairing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from devkit.graph import new_graph
from harness.kolors_graphs import kolors_loader, one_step_latent, saved_latent
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors, tiny_kolors_ip_adapter
from PIL import Image

pytestmark = pytest.mark.comfy

SIZE = 64
WEIGHT = 0.8


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    folder = tiny_kolors_ip_adapter()
    yy, xx = np.mgrid[0:336, 0:336] / 336
    picture = np.stack([np.sin(9 * xx) * 0.5 + 0.5, yy, xx * yy], axis=-1)
    Image.fromarray((picture * 255).round().astype(np.uint8)).save(comfy_server.input_dir / "kolors-reference.png")
    return {"kolors": comfy_server.link_model("kolors", tiny_kolors("kolors", "fp32"), "tiny-kolors-fp32"),
            "ipadapter": comfy_server.link_model("ipadapter", folder / "ip_adapter_plus_general.bin",
                                                 "tiny-kolors-ip-adapter-plus.bin"),
            "clip_vision": comfy_server.link_model("clip_vision", folder / "image_encoder" / "model.safetensors",
                                                   "kolors-image-encoder.safetensors"),
            "image": "kolors-reference.png"}


def _graph(names, tag: str, model_node=None, weight: float = WEIGHT, adapter: bool = True):
    g = new_graph()
    loader = kolors_loader(g, names["kolors"])
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    model = loader.out(0) if model_node is None else model_node(g)
    if adapter:
        ip = g.node("AestheteKolorsIPAdapterLoader", ipadapter_name=names["ipadapter"])
        vision = g.node("CLIPVisionLoader", clip_name=names["clip_vision"])
        image = g.node("LoadImage", image=names["image"])
        model = g.node("AestheteKolorsIPAdapter", model=model, ipadapter=ip.out(0), clip_vision=vision.out(0),
                       image=image.out(0), weight=weight).out(0)
    one_step_latent(g, model, positive.out(0), positive.out(0), tag, seed=6, size=SIZE)
    return g


def test_ip_adapter_one_step_equals_kolors_pipeline_load_ip_adapter(comfy, comfy_server, names):
    """Kolors IP-Adapter Loader + core Load CLIP Vision + Kolors IP-Adapter (weight 0.8) -> KSampler (1 step, cfg 1,
    seed 6) -> SaveLatent equals KolorsPipeline with load_ip_adapter, set_ip_adapter_scale(0.8) and the same image,
    noise and prompt; without the adapter the latent is another one."""
    from devkit.kolors_reference import ip_adapter_one_step, load_pipeline

    comfy.run(_graph(names, "kolors-ip").finalize())
    comfy.run(_graph(names, "kolors-no-ip", adapter=False).finalize())
    ours, plain = saved_latent(comfy_server, "kolors-ip"), saved_latent(comfy_server, "kolors-no-ip")
    pipe = load_pipeline(tiny_kolors("kolors", "fp32"))
    noise = torch.randn([1, 4, SIZE // 8, SIZE // 8], generator=torch.manual_seed(6))
    image = Image.open(comfy_server.input_dir / names["image"]).convert("RGB")
    reference = ip_adapter_one_step(pipe, tiny_kolors_ip_adapter(), image, WEIGHT, noise, RECIPE_PROMPT, SIZE, SIZE)
    assert torch.allclose(ours, reference, atol=1e-3, rtol=1e-4), (ours - reference).abs().max()
    assert (ours - plain).abs().max() > 100 * (ours - reference).abs().max()


def test_kolors_ip_adapter_on_an_sd15_model_is_a_clear_error(comfy, comfy_server, names, sd15_ckpt):
    g = _graph(names, "kolors-ip-on-sd15",
               model_node=lambda g: g.node("CheckpointLoaderSimple", ckpt_name=sd15_ckpt).out(0))
    result = comfy.run(g.finalize(), expect_error=True)
    error = result.events_of("execution_error")[0]["data"]
    assert error["node_type"] == "AestheteKolorsIPAdapter"
    assert "Kolors MODEL" in error["exception_message"], error["exception_message"]


def test_a_truncated_ip_adapter_file_is_a_clear_error(comfy, comfy_server, names, tmp_path_factory):
    data = (tiny_kolors_ip_adapter() / "ip_adapter_plus_general.bin").read_bytes()
    broken = tmp_path_factory.mktemp("ip") / "truncated-ip-adapter.bin"
    broken.write_bytes(data[: len(data) // 2])
    name = comfy_server.link_model("ipadapter", broken, "truncated-ip-adapter.bin")
    g = _graph(dict(names, ipadapter=name), "truncated-ip", weight=0.5)
    result = comfy.run(g.finalize(), expect_error=True)
    error = result.events_of("execution_error")[0]["data"]
    assert error["node_type"] == "AestheteKolorsIPAdapterLoader"
    assert "truncated-ip-adapter.bin" in error["exception_message"] and "again" in error["exception_message"]


def _modified_adapter(tmp_path_factory, name: str, change) -> Path:
    data = torch.load(tiny_kolors_ip_adapter() / "ip_adapter_plus_general.bin", weights_only=True)
    change(data)
    path = tmp_path_factory.mktemp("ip") / name
    torch.save(data, path)
    return path


def _apply_error(comfy, comfy_server, names, path: Path) -> dict:
    g = _graph(dict(names, ipadapter=comfy_server.link_model("ipadapter", path, path.name)), f"bad-{path.stem}")
    return comfy.run(g.finalize(), expect_error=True).events_of("execution_error")[0]["data"]


def test_an_ip_adapter_for_another_unet_is_refused(comfy, comfy_server, names, tmp_path_factory):
    """Fewer attention weights than the Kolors UNet's cross-attentions (as an SD1.5 IP-Adapter has)."""
    def drop_last(data):
        for key in [k for k in data["ip_adapter"] if k.startswith(f"{2 * 12 - 1}.")]:
            del data["ip_adapter"][key]

    error = _apply_error(comfy, comfy_server, names, _modified_adapter(tmp_path_factory, "fewer-attn.bin", drop_last))
    assert error["node_type"] == "AestheteKolorsIPAdapter"
    assert "11 cross-attentions" in error["exception_message"] and "12" in error["exception_message"]


def test_an_image_encoder_of_another_width_is_refused(comfy, comfy_server, names, tmp_path_factory):
    """An IP-Adapter Plus that reads 1280-wide states (SDXL's, from ViT-H) with Kolors's ViT-L encoder (1024)."""
    def wider(data):
        data["image_proj"]["proj_in.weight"] = torch.zeros(data["image_proj"]["proj_in.weight"].shape[0], 1280)

    error = _apply_error(comfy, comfy_server, names, _modified_adapter(tmp_path_factory, "vit-h.bin", wider))
    assert error["node_type"] == "AestheteKolorsIPAdapter"
    assert "1024" in error["exception_message"] and "1280" in error["exception_message"]
