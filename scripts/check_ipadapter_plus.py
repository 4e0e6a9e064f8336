"""Kolors IP-Adapter Plus through ComfyUI_IPAdapter_plus (IPAdapterModelLoader + IPAdapterAdvanced) against Aesthete's
Kolors IP-Adapter nodes, on the same Kolors MODEL, adapter file, image encoder, picture and noise, in one ComfyUI.

Not a test (ComfyUI_IPAdapter_plus is not installed here): give it a checkout of that pack.

    .venv/bin/python -m scripts.check_ipadapter_plus PATH/TO/ComfyUI_IPAdapter_plus

It builds (once, cached beside the test models) a Kolors-IP-Adapter-Plus file in the layout ComfyUI_IPAdapter_plus
recognises as Kolors (Resampler 2048 wide, 12 heads of 64, 16 queries, depth 4) for the small Kolors UNet (SDXL's
block layout, 70 cross-attentions), samples one step with neither, each adapter, and prints how far apart the two
adapters' latents are, against the adapter's own effect.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors

from devkit.client import ComfyClient
from devkit.comfy_server import running_server
from devkit.graph import new_graph
from devkit.kolors_models import KOLORS_IMAGE_ENCODER, RECIPE_PROMPT, small_kolors, tiny_kolors_ip_adapter

SIZE, WEIGHT, SEED = 64, 0.8, 6
RESAMPLER = dict(dim=2048, heads=12, queries=16, depth=4, ff=8192)


def plus_layout_adapter(kolors: Path) -> Path:
    """The adapter file (random weights), built once next to the small Kolors folder."""
    path = kolors.parent / (kolors.name + "-ip-adapter-plus-2048.bin")
    if path.exists():
        return path
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(kolors / "unet", variant="fp16", torch_dtype=torch.float32)
    cross = [n for n in unet.attn_processors if ".attn2." in n]
    modules = dict(unet.named_modules())
    gen = torch.Generator().manual_seed(5)

    def rand(*shape, around=0.0, spread=0.02):
        return around + spread * torch.randn(shape, generator=gen)

    r, inner = RESAMPLER, RESAMPLER["heads"] * 64
    width, image_width = unet.config.cross_attention_dim, KOLORS_IMAGE_ENCODER["hidden_size"]
    proj = {"latents": rand(1, r["queries"], r["dim"], spread=r["dim"] ** -0.5),
            "proj_in.weight": rand(r["dim"], image_width), "proj_in.bias": rand(r["dim"]),
            "proj_out.weight": rand(width, r["dim"]), "proj_out.bias": rand(width),
            "norm_out.weight": rand(width, around=1.0), "norm_out.bias": rand(width)}
    for i in range(r["depth"]):
        p = f"layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            proj[f"{p}{norm}.weight"], proj[f"{p}{norm}.bias"] = rand(r["dim"], around=1.0), rand(r["dim"])
        proj[f"{p}0.to_q.weight"], proj[f"{p}0.to_kv.weight"] = rand(inner, r["dim"]), rand(2 * inner, r["dim"])
        proj[f"{p}0.to_out.weight"] = rand(r["dim"], inner)
        proj[f"{p}1.1.weight"], proj[f"{p}1.3.weight"] = rand(r["ff"], r["dim"]), rand(r["dim"], r["ff"])
    adapter = {}
    for n, name in zip(range(1, 2 * len(cross), 2), cross):
        shape = modules[name[: -len(".processor")]].to_k.weight.shape
        adapter[f"{n}.to_k_ip.weight"] = rand(*shape, spread=0.1)
        adapter[f"{n}.to_v_ip.weight"] = rand(*shape, spread=0.1)
    tmp = path.with_suffix(".tmp")
    torch.save({"image_proj": proj, "ip_adapter": adapter}, tmp)
    tmp.replace(path)
    return path


def graph(names: dict, which: str):
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=names["kolors"], dtype="fp32", text_encoder_device="default")
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    model = loader.out(0)
    vision = g.node("CLIPVisionLoader", clip_name=names["clip_vision"])
    image = g.node("LoadImage", image=names["image"])
    if which == "aesthete":
        ip = g.node("AestheteKolorsIPAdapterLoader", ipadapter_name=names["ipadapter"])
        model = g.node("AestheteKolorsIPAdapter", model=model, ipadapter=ip.out(0), clip_vision=vision.out(0),
                       image=image.out(0), weight=WEIGHT).out(0)
    elif which == "ipadapter_plus":
        ip = g.node("IPAdapterModelLoader", ipadapter_file=names["ipadapter"])
        model = g.node("IPAdapterAdvanced", model=model, ipadapter=ip.out(0), image=image.out(0), weight=WEIGHT,
                       weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0,
                       embeds_scaling="V only", clip_vision=vision.out(0)).out(0)
    latent = g.node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    sampled = g.node("KSampler", model=model, positive=positive.out(0), negative=positive.out(0),
                     latent_image=latent.out(0), seed=SEED, steps=1, cfg=1.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    g.node("SaveLatent", samples=sampled.out(0), filename_prefix=f"latents/{which}")
    return g


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ipadapter_plus", type=Path, help="a checkout of ComfyUI_IPAdapter_plus")
    args = parser.parse_args(argv)
    if not (args.ipadapter_plus / "IPAdapterPlus.py").is_file():
        parser.error(f"{args.ipadapter_plus}: no IPAdapterPlus.py; give the ComfyUI_IPAdapter_plus folder")
    kolors = small_kolors()
    adapter = plus_layout_adapter(kolors)
    encoder = tiny_kolors_ip_adapter() / "image_encoder" / "model.safetensors"
    latents = {}
    with running_server("aesthete-ipadapter-plus-", extra_nodes={"ComfyUI_IPAdapter_plus": args.ipadapter_plus}) \
            as server:
        yy, xx = np.mgrid[0:336, 0:336] / 336
        picture = np.stack([np.sin(9 * xx) * 0.5 + 0.5, yy, xx * yy], axis=-1)
        Image.fromarray((picture * 255).round().astype(np.uint8)).save(server.input_dir / "reference.png")
        names = {"kolors": server.link_model("kolors", kolors, "small-kolors"),
                 "ipadapter": server.link_model("ipadapter", adapter, "kolors-ip-adapter-plus.bin"),
                 "clip_vision": server.link_model("clip_vision", encoder, "kolors-image-encoder.safetensors"),
                 "image": "reference.png"}
        client = ComfyClient(server.url)
        for which in ("none", "aesthete", "ipadapter_plus"):
            client.run(graph(names, which).finalize(), timeout=1800)
            saved = sorted((server.output_dir / "latents").glob(f"{which}_*.latent"))[-1]
            latents[which] = load_safetensors(saved.read_bytes())["latent_tensor"].float()
    effect = (latents["aesthete"] - latents["none"]).abs().max().item()
    apart = (latents["aesthete"] - latents["ipadapter_plus"]).abs().max().item()
    sys.stdout.write(f"the adapter's effect on the latent (largest difference to no adapter): {effect:.4g}\n"
                     f"Aesthete vs ComfyUI_IPAdapter_plus: {apart:.4g} ({apart / effect:.3g} of the effect)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
