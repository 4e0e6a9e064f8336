"""Aesthete in the ComfyUI users run today, not only in 0.3.75.

The newest ComfyUI does not install offline here, so where it behaves differently in a way the pack can feel, the
tests make 0.3.75 behave that way (read from the newest source, see nodes/compat.py):
- a server with ``tests/harness/newest_comfy_shim`` loaded: model detection passes ``unet_key_prefix`` to every
  entry, and a cancel is a ``BaseException``; core loaders, Kolors detection and every cancel path must still work;
- in-process (a subprocess with ComfyUI imported): detection called both ways with a failing Kolors check; layers that
  have no weights until ``_load_from_state_dict`` runs (DynamicVRAM's ``comfy.ops``); the text encoder's compute dtype
  forced to fp32 as the newest ``comfy.sd.CLIP`` does; registration through ``on_load``; a core node's newer inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from harness.servers import running_test_server
from devkit.graph import new_graph
from devkit.training_graphs import dataset_node, train_node
from harness.in_comfy import run_in_comfy
from devkit.kolors_models import tiny_kolors
from devkit.training_data import write_pattern_folder
from safetensors import safe_open

HARNESS = Path(__file__).resolve().parents[1] / "harness"
SHIM = "newest-comfy-shim"


@pytest.fixture(scope="module")
def newest(tmp_path_factory):
    """A ComfyUI server that detects models and cancels the newest way, with the small SD1.5 and the tiny Kolors."""
    from devkit.client import ComfyClient
    from devkit.factories import small_sd15_checkpoint

    log = tmp_path_factory.mktemp("newest") / "comfyui.log"
    with running_test_server("aesthete-newest-", log, extra_nodes={SHIM: HARNESS / "newest_comfy_shim"}) as server:
        assert "newest-ComfyUI shim" in server.log_text(), server.log_tail()
        server.sd15 = server.link_model("checkpoints", small_sd15_checkpoint(), "sd15.safetensors")
        server.kolors = server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors")
        server.client = ComfyClient(server.url)
        yield server


def _txt2img(g, model, clip, vae, prefix: str, steps: int = 1):
    positive = g.node("CLIPTextEncode", text="a red apple", clip=clip)
    negative = g.node("CLIPTextEncode", text="", clip=clip)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sampled = g.node("KSampler", model=model, positive=positive.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), seed=1, steps=steps, cfg=4.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    return g.node("SaveImage", images=g.node("VAEDecode", samples=sampled.out(0), vae=vae).out(0),
                  filename_prefix=prefix)


def test_core_checkpoint_loader_loads_sd15_when_detection_passes_the_key_prefix(newest):
    """The break users hit: with Kolors first in the detection list, every checkpoint load asked our entry
    ``matches(..., unet_key_prefix=...)`` and failed with TypeError."""
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=newest.sd15)
    save = _txt2img(g, ckpt.out(0), ckpt.out(1), ckpt.out(2), "newest-sd15")
    result = newest.client.run(g.finalize(), timeout=300)
    assert len(newest.client.output_images(result, save.id)) == 1
    assert "TypeError" not in newest.log_text()


def test_a_kolors_unet_file_is_found_kolors_by_core_unet_loader_the_newest_way(newest):
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=newest.kolors, dtype="fp32", text_encoder_device="default")
    g.node("ModelSave", model=loader.out(0), filename_prefix="newest-kolors/unet")
    newest.client.run(g.finalize(), timeout=300)
    [saved] = (newest.output_dir / "newest-kolors").glob("unet*.safetensors")
    name = newest.link_model("diffusion_models", saved, "newest-kolors.safetensors")
    g = new_graph()
    unet = g.node("UNETLoader", unet_name=name, weight_dtype="default")
    loader = g.node("AestheteKolorsLoader", kolors=newest.kolors, dtype="fp32", text_encoder_device="default")
    save = _txt2img(g, unet.out(0), loader.out(1), loader.out(2), "newest-kolors-roundtrip")
    before = newest.log_text()
    result = newest.client.run(g.finalize(), timeout=300)
    assert len(newest.client.output_images(result, save.id)) == 1
    new_log = newest.log_text()[len(before):]
    assert "no match" not in new_log and "unet unexpected" not in new_log and "left over keys" not in new_log


TRAIN = {"epochs": 500, "batch_size": 4, "seed": 1, "save_every_n_epochs": 1, "checkpoint_name": "newest/cancelled"}
DATASET = "newest_pattern"


def _interrupt_at(client, node_id: str, value: int):
    sent = []

    def on_event(event: dict) -> None:
        data = event.get("data", {})
        if event["type"] == "progress" and str(data.get("node")) == node_id and data["value"] >= value and not sent:
            requests.post(client.url + "/interrupt", timeout=30).raise_for_status()
            sent.append(True)

    return on_event


def test_a_cancel_that_is_a_base_exception_keeps_what_was_trained(newest):
    write_pattern_folder(newest.input_dir / DATASET, count=4)
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=newest.sd15)
    dataset = dataset_node(g, DATASET)
    train = train_node(g, ckpt.out(0), ckpt.out(1), ckpt.out(2), dataset.out(0), **TRAIN)
    g.node("AestheteLossGraph", loss=train.out(2), smoothing=0.9)
    result = newest.client.run(g.finalize(), timeout=300, on_event=_interrupt_at(newest.client, train.id, 2),
                               expect_interrupted=True)
    assert result.events[-1]["type"] == "execution_interrupted", result.events[-1]
    kept = newest.models_dir / "loras" / "newest" / "cancelled_interrupted.safetensors"
    with safe_open(str(kept), "pt") as f:
        assert 2 <= int(f.metadata()["aesthete.steps"]) < 500
    # the server goes on: the next graph runs
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=newest.sd15)
    save = _txt2img(g, ckpt.out(0), ckpt.out(1), ckpt.out(2), "newest-after-cancel")
    assert len(newest.client.output_images(newest.client.run(g.finalize(), timeout=300), save.id)) == 1


def test_a_cancel_that_is_a_base_exception_stops_scoring_a_folder(newest):
    from devkit.factories import aesthetic_predictor
    from PIL import Image

    predictor = newest.link_model("aesthetic", aesthetic_predictor("tiny"), "tiny")
    folder = newest.input_dir / "newest_score"
    folder.mkdir(exist_ok=True)
    for i in range(60):
        Image.new("RGB", (48, 48), (i * 4, 80, 160)).save(folder / f"{i:03d}.png")
    g = new_graph()
    loader = g.node("AesthetePredictorLoader", model=predictor, device="auto", dtype="auto")
    score = g.node("AestheteScoreFolder", predictor=loader.out(0), folder="newest_score", recursive=False,
                   batch_size=1, allow_outside_input=False)
    result = newest.client.run(g.finalize(), timeout=300, on_event=_interrupt_at(newest.client, score.id, 2),
                               expect_interrupted=True)
    assert result.events[-1]["type"] == "execution_interrupted", result.events[-1]
    assert not result.outputs.get(score.id)


def _detect_either_way(sd15_path: str, kolors_folder: str) -> dict:
    import sys

    import comfy.model_detection as md
    import comfy.utils

    import aesthete.nodes as pack
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import load_kolors_folder

    pack.start_up()
    as_0375 = md.model_config_from_unet_config
    sys.path.insert(0, str(HARNESS))
    import newest_comfy_shim  # noqa: F401 - detection the newest way: every entry gets unet_key_prefix=

    newest = md.model_config_from_unet_config

    class Unwalkable(dict):
        def __iter__(self):
            raise RuntimeError("this state dict cannot be walked")

    sd15 = comfy.utils.load_torch_file(sd15_path)
    model, _, _ = load_kolors_folder(find_kolors_folder(kolors_folder), "fp32")
    kolors = {"model.diffusion_model." + k: v for k, v in model.model.diffusion_model.state_dict().items()}
    prefix = "model.diffusion_model."
    out = {}
    for name, sd in (("sd15", sd15), ("kolors", kolors), ("sd15_unwalkable", Unwalkable(sd15))):
        config = md.detect_unet_config(sd, prefix)
        out[name] = [type(as_0375(config, sd)).__name__, type(newest(config, sd, prefix)).__name__]
    return out


def test_detection_called_either_way_finds_each_model_and_survives_a_failing_kolors_check():
    """0.3.75's ``model_config_from_unet_config`` and the newest call (``unet_key_prefix=``) on the real detection
    list with the pack registered: the SD1.5 checkpoint is SD15, a Kolors UNet is Kolors; and when the Kolors check
    itself fails (a state dict that cannot be walked), SD1.5 is still found instead of every load failing."""
    from devkit.factories import small_sd15_checkpoint

    result = run_in_comfy(_detect_either_way, str(small_sd15_checkpoint()), str(tiny_kolors("kolors", "fp32")))
    assert result == {"sd15": ["SD15", "SD15"], "kolors": ["KolorsModelConfig", "KolorsModelConfig"],
                      "sd15_unwalkable": ["SD15", "SD15"]}




def _weightless_layer_ops():
    """In ComfyUI's import world: ``(weightless_layers, still_weightless, created)``, the first making comfy.ops' Linear and
    Embedding keep no weights until ``_load_from_state_dict`` (as DynamicVRAM's do), the second counting the layers
    made that way that are still without weights; ``created`` lists them."""
    import comfy.ops
    import torch

    CREATED = []

    def lazy(base):
        class Lazy(base):
            def __init__(self, *args, **kwargs):
                if issubclass(base, torch.nn.Embedding):
                    num, dim = args[0], args[1]
                    torch.nn.Module.__init__(self)
                    self.num_embeddings, self.embedding_dim = num, dim
                    self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
                    self.scale_grad_by_freq, self.sparse = False, False
                    # the newest keeps a meta placeholder here; 0.3.75's CLIP moves the model before loading it, which a
                    # meta tensor cannot survive there, so the simulation leaves it empty (what the loader sees is the same:
                    # nothing usable until _load_from_state_dict)
                    self.weight, self.bias = None, None
                    self.shapes = {"weight": (num, dim)}
                else:
                    fin, fout = args[0], args[1]
                    torch.nn.Module.__init__(self)
                    self.in_features, self.out_features = fin, fout
                    self.weight, self.bias = None, None
                    self.shapes = {"weight": (fout, fin)}
                    if kwargs.get("bias", True):
                        self.shapes["bias"] = (fout,)
                self.lazy_dtype = kwargs.get("dtype")
                CREATED.append(self)

            def _load_from_state_dict(self, sd, prefix, meta, strict, missing, unexpected, errors):
                for name, shape in self.shapes.items():
                    if prefix + name not in sd:
                        missing.append(prefix + name)
                    elif tuple(sd[prefix + name].shape) != shape:
                        errors.append(f"size mismatch for {prefix + name}")
                    else:
                        tensor = sd[prefix + name].to(self.lazy_dtype or sd[prefix + name].dtype)
                        setattr(self, name, torch.nn.Parameter(tensor, requires_grad=False))
                unexpected += [k for k in sd if k.startswith(prefix) and k[len(prefix):] not in self.shapes]
        return Lazy

    def weightless_layers():
        """As DynamicVRAM's comfy.ops make them: no weights until _load_from_state_dict."""
        for ops in (comfy.ops.disable_weight_init, comfy.ops.manual_cast):
            ops.Linear, ops.Embedding = lazy(ops.Linear), lazy(ops.Embedding)

    def still_weightless():
        return sum(1 for m in CREATED if m.weight is None or m.weight.is_meta)

    return weightless_layers, still_weightless, CREATED


def _lazy_layers_load_the_same_numbers(folder: str) -> dict:
    import json
    import pathlib
    import shutil
    import tempfile

    import torch

    from aesthete.kolors.folder import KolorsFolderError, find_kolors_folder
    from aesthete.nodes.kolors_model import load_kolors_folder

    weightless_layers, still_weightless, created = _weightless_layer_ops()

    def numbers():
        model, clip, _ = load_kolors_folder(find_kolors_folder(folder), "fp32")
        cond, pooled = clip.encode_from_tokens(clip.tokenize("一个女孩, blue hair"), return_pooled=True)
        torch.manual_seed(0)
        x = torch.randn(1, 4, 8, 8)
        adm = model.model.encode_adm(pooled_output=pooled, width=64, height=64)
        eps = model.model.diffusion_model(x, timesteps=torch.tensor([500.0]), context=cond, y=adm)
        return cond, pooled, eps

    usual = numbers()
    weightless_layers()
    lazy_numbers = numbers()
    out = {"created": len(created), "left_weightless": still_weightless(),
           "diff": [(a - b).abs().max().item() for a, b in zip(usual, lazy_numbers)]}
    broken = pathlib.Path(tempfile.mkdtemp()) / "k"
    shutil.copytree(folder, broken)
    cfg = json.loads((broken / "unet" / "config.json").read_text())
    cfg["cross_attention_dim"] = cfg["cross_attention_dim"] * 2
    (broken / "unet" / "config.json").write_text(json.dumps(cfg))
    try:
        load_kolors_folder(find_kolors_folder(str(broken)), "fp32")
        out["broken"] = "loaded"
    except KolorsFolderError as e:
        out["broken"] = str(e)
    return out


def test_layers_without_weights_until_loaded_load_the_same_numbers():
    """Kolors's UNet and ChatGLM3 load into layers that have no weights until ``_load_from_state_dict`` (DynamicVRAM
    in the newest ComfyUI) and give exactly the numbers of the usual load; a config that does not fit is still the
    clear error."""
    folder = tiny_kolors("kolors", "fp32")
    result = run_in_comfy(_lazy_layers_load_the_same_numbers, str(folder))
    assert result["created"] > 10 and result["left_weightless"] == 0
    assert result["diff"] == [0.0, 0.0, 0.0]
    assert "do not fit the UNet its config.json describes" in result["broken"]


def _chatglm3_forced_to_fp32(folder: str) -> dict:
    import torch

    from devkit.kolors_reference import encode, load_pipeline
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import load_kolors_folder
    pipe = load_pipeline(folder, torch.float32)
    pipe.text_encoder.half().float()  # the same weights ours hold in fp16
    out = {}
    for forced in (False, True):
        _, clip, _ = load_kolors_folder(find_kolors_folder(folder), "fp16")
        if forced:
            clip.patcher.set_model_compute_dtype(torch.float32)
        diffs = []
        for prompt in ("一个女孩, blue hair", ""):
            cond, pooled = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
            ref_cond, ref_pooled = encode(pipe, prompt)
            diffs += [(cond - ref_cond).abs().max().item(), (pooled - ref_pooled).abs().max().item()]
        out["fp32" if forced else "fp16"] = max(diffs)
    return out


def test_chatglm3_computes_in_fp32_when_comfyui_forces_it_and_keeps_the_references_numbers():
    """The newest ``comfy.sd.CLIP`` sets every text encoder's compute dtype to fp32 (an object patch of
    ``manual_cast_dtype``). ChatGLM3 stored in fp16 then computes in fp32: its context and pooled vector equal
    diffusers' KolorsPipeline run in fp32 on the same fp16-rounded weights to float rounding (1e-6), where computing
    in fp16 is measurably further off."""
    folder = tiny_kolors("kolors", "fp32")
    result = run_in_comfy(_chatglm3_forced_to_fp32, str(folder))
    # measured: 1.5e-8 forced to fp32, 8.7e-5 computing in fp16 (tiny random model)
    assert result["fp32"] < 1e-6 < result["fp16"], result


def _start_up_either_way() -> dict:
    import asyncio
    import folder_paths
    import comfy.supported_models as sm
    import aesthete.nodes as pack
    from aesthete.nodes.kolors_model import KolorsModelConfig
    for module in pack.area_modules():
        pass  # every node module imported
    out = {"after_import": [KolorsModelConfig in sm.models, "aesthetic" in folder_paths.folder_names_and_paths]}
    extension = asyncio.run(__import__("aesthete").comfy_entrypoint())
    asyncio.run(extension.on_load())  # the newest ComfyUI
    nodes = asyncio.run(extension.get_node_list())  # 0.3.75 calls only this
    out["entries"] = sm.models.count(KolorsModelConfig)
    out["first"] = sm.models[0] is KolorsModelConfig
    out["folders"] = {k: list(map(str, folder_paths.get_folder_paths(k))) for k in ("aesthetic", "kolors", "LLM")}
    out["nodes"] = len(nodes)
    return out


def test_start_up_registers_once_through_on_load_or_the_node_list_and_importing_registers_nothing():
    result = run_in_comfy(_start_up_either_way)
    assert result["after_import"] == [False, False]
    assert result["entries"] == 1 and result["first"] and result["nodes"] > 10
    for kind, paths in result["folders"].items():
        assert len(paths) == len(set(paths)) and paths[0].endswith(f"models/{kind}"), (kind, paths)


def _core_train_lora_inputs() -> dict:
    from comfy_api.latest import io
    from comfy_extras.nodes_train import TrainLoraNode
    from aesthete.nodes.compat import schema_defaults

    class NewerTrainLora(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="NewerTrainLora", is_input_list=True, inputs=[
                io.Int.Input("steps", default=16), io.Int.Input("checkpoint_depth", default=1),
                io.Boolean.Input("bypass_mode", default=False)], outputs=[])

        @classmethod
        def execute(cls, steps, checkpoint_depth, bypass_mode):
            return io.NodeOutput()

    given = {"steps": [3], "no_such_input": [1]}
    core = schema_defaults(TrainLoraNode, given)
    return {"newer": schema_defaults(NewerTrainLora, given),
            "core_missing": sorted({i.id for i in TrainLoraNode.GET_SCHEMA().inputs} - set(core))}


def test_core_train_lora_gets_the_inputs_its_version_takes():
    """The training benchmark calls core TrainLoraNode; newer versions take more required inputs, which
    ``compat.schema_defaults`` fills from the node's own schema (and inputs a version does not take are dropped)."""
    result = run_in_comfy(_core_train_lora_inputs)
    assert result["newer"] == {"steps": [3], "checkpoint_depth": [1], "bypass_mode": [False]}
    assert result["core_missing"] == []
