"""Kolors ControlNets as a core CONTROL_NET, against Kwai-Kolors's ControlNet (its forward driven on diffusers'
ControlNetModel, devkit/kolors_reference.py) on the same tiny weights: the control residuals, a one-step
latent through core Apply ControlNet, start/end percent, and the errors a wrong pairing gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from devkit.graph import new_graph
from harness.in_comfy import run_in_comfy
from harness.kolors_graphs import kolors_loader, one_step_latent, saved_latent
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors, tiny_kolors_controlnet
from PIL import Image

pytestmark = pytest.mark.comfy

SIZE = 64
STRENGTH = 0.7


def _our_controlnet_model(folder: str):
    """In ComfyUI's import world: the ControlNet model of the CONTROL_NET our loader makes of a Kolors ControlNet
    folder, in fp32."""
    from pathlib import Path

    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import read_json
    from aesthete.nodes.kolors_controlnet import kolors_controlnet

    weights = LazyWeights([Path(folder) / "diffusion_pytorch_model.safetensors"])
    return kolors_controlnet(weights, read_json(Path(folder) / "config.json"), "fp32", take=weights.take).control_model


def _control_residuals_against_kolors_controlnet(folder: str, controlnet: str) -> dict:
    import torch
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import load_kolors_folder
    from devkit.kolors_reference import controlnet_residuals, encode, load_controlnet, load_pipeline

    model, clip, vae = load_kolors_folder(find_kolors_folder(folder), "fp32", "default")
    ours = _our_controlnet_model(controlnet)
    pipe, reference = load_pipeline(folder), load_controlnet(controlnet)
    cond, pooled = clip.encode_from_tokens(clip.tokenize(RECIPE_PROMPT), return_pooled=True)
    ref_cond, ref_pooled = encode(pipe, RECIPE_PROMPT)
    gen = torch.manual_seed(2)
    x, hint = torch.randn(1, 4, 8, 8, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)
    out = {"down": [], "mid": [], "count": []}
    for t in (1099, 600, 20):
        y = model.model.encode_adm(pooled_output=pooled, width=64, height=64)
        with torch.no_grad():
            control = ours(x=x, hint=hint, timesteps=torch.tensor([float(t)]), context=cond, y=y)
        down, mid = controlnet_residuals(reference, x, t, ref_cond, ref_pooled, hint, 1.0, 64, 64)
        out["count"].append([len(control["output"]), len(down)])
        out["down"].append(max((a - b).abs().max().item() for a, b in zip(control["output"], down)))
        out["mid"].append((control["middle"][0] - mid).abs().max().item())
        out["scale"] = max(d.abs().max().item() for d in down)
    # on the CPU (no attention flag given) the ControlNet attends with PyTorch's SDPA, as the MODEL does
    out["sdpa_on_cpu"] = "optimized_attention_override" in ours.transformer_options
    return out


def test_control_residuals_equal_kolors_controlnet():
    """Every down residual and the mid residual of our CONTROL_NET's model equal Kwai-Kolors's ControlNet forward
    (context projected by the ControlNet's own encoder_hid_proj) at three timesteps."""
    result = run_in_comfy(_control_residuals_against_kolors_controlnet, str(tiny_kolors("kolors", "fp32")),
                          str(tiny_kolors_controlnet()))
    assert all(a == b for a, b in result["count"]), result["count"]
    assert result["scale"] > 1e-2  # residuals that matter
    assert result["sdpa_on_cpu"]
    assert max(result["down"]) < 1e-4 and max(result["mid"]) < 1e-4, result


@pytest.fixture(scope="module")
def names(comfy_server) -> dict[str, str]:
    hint = np.zeros((SIZE, SIZE, 3), np.uint8)
    hint[16:48, 16:48] = 255  # a white square: the kind of picture core Canny gives
    Image.fromarray(hint).save(comfy_server.input_dir / "kolors-hint.png")
    cn_name = comfy_server.link_model("controlnet", tiny_kolors_controlnet(), "tiny-kolors-controlnet")
    return {"kolors": comfy_server.link_model("kolors", tiny_kolors("kolors", "fp32"), "tiny-kolors-fp32"),
            "controlnet": f"{cn_name}/diffusion_pytorch_model.safetensors", "hint": "kolors-hint.png"}


def _graph(names, tag: str, seed: int = 1, strength: float = 1.0, start: float = 0.0, end: float = 1.0,
           control: bool = True, loader_node=None, controlnet_node=None):
    """The tiny Kolors (or ``loader_node(g)``'s MODEL and CLIP) -> CLIPTextEncode -> Apply ControlNet with the Kolors
    ControlNet Loader's CONTROL_NET (or ``controlnet_node(g)``'s) and the hint -> one KSampler step -> SaveLatent."""
    g = new_graph()
    loader = kolors_loader(g, names["kolors"]) if loader_node is None else loader_node(g)
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    pos, neg = positive.out(0), positive.out(0)
    if control:
        cn = (g.node("AestheteKolorsControlNetLoader", control_net_name=names["controlnet"], dtype="fp32")
              if controlnet_node is None else controlnet_node(g))
        image = g.node("LoadImage", image=names["hint"])
        apply = g.node("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=cn.out(0),
                       image=image.out(0), strength=strength, start_percent=start, end_percent=end)
        pos, neg = apply.out(0), apply.out(1)
    one_step_latent(g, loader.out(0), pos, neg, tag, seed=seed, size=SIZE)
    return g


def _one_step(comfy, comfy_server, names, tag: str, start: float = 0.0, end: float = 1.0,
              control: bool = True) -> torch.Tensor:
    comfy.run(_graph(names, tag, seed=4, strength=STRENGTH, start=start, end=end, control=control).finalize())
    return saved_latent(comfy_server, tag)


def _error(comfy, graph) -> dict:
    return comfy.run(graph.finalize(), expect_error=True).events_of("execution_error")[0]["data"]


def test_apply_controlnet_one_step_equals_kolors_controlnet_pipeline(comfy, comfy_server, names):
    """Kolors ControlNet Loader -> core Apply ControlNet (strength 0.7) -> KSampler (1 step, cfg 1, seed 4) ->
    SaveLatent equals one step of Kwai-Kolors's ControlNet pipeline from the same noise, hint and scale; without the
    ControlNet the latent is another one."""
    from devkit.kolors_reference import controlnet_one_step, load_controlnet, load_pipeline

    ours = _one_step(comfy, comfy_server, names, "kolors-cn")
    plain = _one_step(comfy, comfy_server, names, "kolors-no-cn", control=False)
    pipe, controlnet = load_pipeline(tiny_kolors("kolors", "fp32")), load_controlnet(tiny_kolors_controlnet())
    hint = torch.from_numpy(np.asarray(Image.open(comfy_server.input_dir / names["hint"]).convert("RGB"),
                                       dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    noise = torch.randn([1, 4, SIZE // 8, SIZE // 8], generator=torch.manual_seed(4))
    reference = controlnet_one_step(pipe, controlnet, noise, RECIPE_PROMPT, hint, STRENGTH, SIZE, SIZE)
    assert torch.allclose(ours, reference, atol=1e-3, rtol=1e-4), (ours - reference).abs().max()
    assert (ours - plain).abs().max() > 100 * (ours - reference).abs().max()


def test_start_percent_after_the_step_leaves_the_latent_uncontrolled(comfy, comfy_server, names):
    """Start at 50 %: the only step (at sigma_max, 0 %) runs without the ControlNet, as core documents it."""
    late = _one_step(comfy, comfy_server, names, "kolors-cn-late", start=0.5, end=1.0)
    plain = _one_step(comfy, comfy_server, names, "kolors-no-cn-2", control=False)
    assert torch.allclose(late, plain, atol=1e-6)


def test_kolors_controlnet_on_an_sd15_model_is_a_clear_error(comfy, comfy_server, names, sd15_ckpt):
    graph = _graph(names, "kolors-cn-on-sd15",
                   loader_node=lambda g: g.node("CheckpointLoaderSimple", ckpt_name=sd15_ckpt))
    message = str(_error(comfy, graph)["exception_message"])
    assert "Kolors ControlNet" in message and "Kolors CLIP" in message, message


def _sdxl_layout_controlnet_file(controlnet: str, path: str) -> int:
    """Our ControlNet model's weights without Kolors's text projection, in ComfyUI's own ControlNet file format."""
    from safetensors.torch import save_file

    model = _our_controlnet_model(controlnet)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("encoder_hid_proj")}
    save_file(state, path)
    return len(state)


def test_an_sdxl_layout_controlnet_on_kolors_stops_with_a_shape_error(comfy, comfy_server, names, tmp_path_factory):
    """What an SDXL ControlNet does on Kolors, measured: a ControlNet of the same layout without Kolors's text
    projection (ComfyUI's own file format, loaded by core Load ControlNet Model) is handed the Kolors context
    (ChatGLM3's width, 4096 in the real model, 64 here) where its cross-attention reads the UNet's width (2048 in an
    SDXL ControlNet, 32 here): sampling stops with a shape error instead of drawing a wrong picture."""
    path = tmp_path_factory.mktemp("sdxl-cn") / "sdxl-layout-controlnet.safetensors"
    run_in_comfy(_sdxl_layout_controlnet_file, str(tiny_kolors_controlnet()), str(path))
    name = comfy_server.link_model("controlnet", path, "sdxl-layout-controlnet.safetensors")
    error = _error(comfy, _graph(names, "sdxl-cn-on-kolors",
                                 controlnet_node=lambda g: g.node("ControlNetLoader", control_net_name=name)))
    assert error["node_type"] == "KSampler"
    assert "shape" in error["exception_message"] and "64" in error["exception_message"], error["exception_message"]


def test_a_truncated_controlnet_file_is_a_clear_error(comfy, comfy_server, names, tmp_path_factory):
    folder = tmp_path_factory.mktemp("truncated-cn")
    data = (tiny_kolors_controlnet() / "diffusion_pytorch_model.safetensors").read_bytes()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "config.json").write_bytes((tiny_kolors_controlnet() / "config.json").read_bytes())
    name = comfy_server.link_model("controlnet", folder, "truncated-kolors-controlnet")
    broken = dict(names, controlnet=f"{name}/diffusion_pytorch_model.safetensors")
    error = _error(comfy, _graph(broken, "truncated-cn"))
    assert error["node_type"] == "AestheteKolorsControlNetLoader"
    assert "truncated" in error["exception_message"] and "again" in error["exception_message"], error
