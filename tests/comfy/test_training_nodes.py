"""LoRA training in the real ComfyUI on the small random SD1.5 checkpoint: the loss falls, the saved file loads in
core LoraLoaderModelOnly with every key mapped, generating with it differs from without, and the trainer's MODEL
output has exactly the weights core gets from the saved file. Also: cancel keeps what was trained, bad paths
are refused."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from PIL import Image
from safetensors import safe_open

from devkit.graph import new_graph
from devkit.training_graphs import dataset_node, train_node
from devkit.training_data import write_pattern_folder


DATASET = "aesthete_train_pattern"
# 30 optimizer steps of 4 images at 64x64; lr 1e-2 (scale alpha/rank = 1) makes the loss fall by more than half
# in this run, measured at about 1.1 -> 0.45 (the mean of the first five steps against the last five)
TRAIN = {"epochs": 30, "batch_size": 4}


def base_graph(ckpt: str, **train):
    """Checkpoint -> dataset -> Train LoRA. The same arguments give the same graph (so ComfyUI's cache of the
    training is reused by the tests that add nodes to it)."""
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    dataset = dataset_node(g, DATASET)
    train = train_node(g, ckpt.out(0), ckpt.out(1), ckpt.out(2), dataset.out(0), **{**TRAIN, **train})
    return g, SimpleNamespace(ckpt=ckpt, dataset=dataset, train=train)


def sample(g, n, model: list, prefix: str):
    """KSampler (fixed seed, the prompts of ``n``) -> VAEDecode -> SaveImage; returns the SaveImage node."""
    sampled = g.node("KSampler", model=model, seed=7, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                     positive=n.positive.out(0), negative=n.negative.out(0), latent_image=n.latent.out(0),
                     denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=n.ckpt.out(2))
    return g.node("SaveImage", images=decoded.out(0), filename_prefix=prefix)


@pytest.fixture(scope="module")
def trained(comfy, comfy_server, sd15_ckpt):
    write_pattern_folder(comfy_server.input_dir / DATASET, count=4)
    g, n = base_graph(sd15_ckpt)
    g.node("AestheteSaveLora", lora=n.train.out(1), name_prefix="aesthete_test/pattern", precision="fp32",
           diffsynth_copy=False)
    n.loss_graph = g.node("AestheteLossGraph", loss=n.train.out(2), smoothing=0.8)
    result = comfy.run(g.finalize(), timeout=480)
    saved = comfy_server.models_dir / "loras" / "aesthete_test" / "pattern_00001.safetensors"
    return n, result, saved


def test_loss_falls_by_half_and_progress_is_reported(trained):
    n, result, _ = trained
    losses = result.node_output(n.train.id)["loss"]
    assert len(losses) == TRAIN["epochs"]  # 4 images, batch 4: one step per epoch
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last <= 0.5 * first, f"loss {first:.3f} -> {last:.3f}: {losses}"
    progress = result.progress_of(n.train.id)
    assert progress and progress[-1] == (TRAIN["epochs"], TRAIN["epochs"])
    report = result.node_output(n.dataset.id)["text"][0]
    assert "4 images kept, 0 skipped" in report and "64x64: 4" in report
    graph_images = result.node_output(n.loss_graph.id)["images"]
    assert len(graph_images) == 1


def test_saved_file_has_comfy_keys_alpha_and_metadata(trained):
    _, _, saved = trained
    assert saved.is_file()
    with safe_open(str(saved), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        alpha = f.get_tensor("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.alpha")
    assert all(k.startswith("diffusion_model.") and k.rsplit(".", 2)[-2:] in (["lora_up", "weight"],
               ["lora_down", "weight"]) or k.endswith(".alpha") for k in keys)
    assert any(".attn2.to_out.0.lora_up.weight" in k for k in keys)
    assert float(alpha) == 4.0
    assert meta["aesthete.rank"] == "4" and meta["aesthete.epochs"] == "30" and meta["aesthete.steps"] == "30"
    assert meta["aesthete.dataset_size"] == "4" and meta["aesthete.base_model"] == "SD15"
    assert not list(saved.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_save_name_outside_models_loras_is_refused(trained, comfy, comfy_server, sd15_ckpt):
    g, n = base_graph(sd15_ckpt)  # cached: not trained again
    g.node("AestheteSaveLora", lora=n.train.out(1), name_prefix="../../escaped", precision="fp16",
           diffsynth_copy=False)
    result = comfy.run(g.finalize(), expect_error=True)
    err = result.events_of("execution_error")[0]["data"]
    assert err["node_type"] == "AestheteSaveLora" and "leads outside" in err["exception_message"]
    assert not list(comfy_server.base_dir.glob("escaped*")) and not list(comfy_server.models_dir.glob("escaped*"))


def test_core_loader_maps_every_key_and_weights_match_the_in_graph_model(trained, comfy, comfy_server, sd15_ckpt):
    _, _, saved = trained
    g, n = base_graph(sd15_ckpt)  # cached: not trained again
    core = g.node("LoraLoaderModelOnly", model=n.ckpt.out(0), lora_name="aesthete_test/" + saved.name,
                  strength_model=1.0)
    g.node("ModelSave", model=n.train.out(0), filename_prefix="aesthete_test/ingraph")
    g.node("ModelSave", model=core.out(0), filename_prefix="aesthete_test/core")
    n.positive = g.node("CLIPTextEncode", clip=n.ckpt.out(1), text="ptn, stripes")
    n.negative = g.node("CLIPTextEncode", clip=n.ckpt.out(1), text="")
    n.latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    saves = {"ingraph": sample(g, n, n.train.out(0), "aesthete_test/gen_ingraph"),
             "core": sample(g, n, core.out(0), "aesthete_test/gen_core"),
             "base": sample(g, n, n.ckpt.out(0), "aesthete_test/gen_base")}
    log_start = len(comfy_server.log_text())
    result = comfy.run(g.finalize(), timeout=300)
    log = comfy_server.log_text()[log_start:]
    assert "lora key not loaded" not in log and "NOT LOADED" not in log

    out = comfy_server.output_dir / "aesthete_test"
    ingraph, core = out / "ingraph_00001_.safetensors", out / "core_00001_.safetensors"
    with safe_open(str(ingraph), "pt") as a, safe_open(str(core), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert a.get_tensor(k).equal(b.get_tensor(k)), k

    def image(kind: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(comfy.output_images(result, saves[kind].id)[0])), dtype=np.int16)

    with_ingraph, with_core, without = image("ingraph"), image("core"), image("base")
    assert np.array_equal(with_ingraph, with_core)
    assert np.abs(with_ingraph - without).mean() > 0.5, "generating with the LoRA looks the same as without"


def dataset_graph(folder: str = DATASET, **inputs):
    """LoRA Dataset (Folder) alone, its report shown; returns the builder and the dataset node."""
    g = new_graph()
    dataset = dataset_node(g, folder, **inputs)
    g.node("PreviewAny", source=dataset.out(1))
    return g, dataset


@pytest.mark.parametrize("folder, message", [
    ("../models", "outside ComfyUI's input directory"),
    ("", "give the name of something inside ComfyUI's input directory"),
])
def test_folder_outside_input_is_refused(comfy, folder, message):
    g, _ = dataset_graph(folder=folder)
    result = comfy.run(g.finalize(), expect_error=True)
    err = result.events_of("execution_error")[0]["data"]
    assert err["node_type"] == "AestheteLoraDataset" and message in err["exception_message"]


def test_cancel_keeps_what_was_trained(comfy, comfy_server, sd15_ckpt):
    write_pattern_folder(comfy_server.input_dir / DATASET, count=4)
    g, n = base_graph(sd15_ckpt, epochs=500, seed=1, checkpoint_name="aesthete_test/cancelled",
                      save_every_n_epochs=1)
    g.node("AestheteLossGraph", loss=n.train.out(2), smoothing=0.9)
    sent = []

    def interrupt_after_two_steps(event: dict) -> None:
        data = event.get("data", {})
        if event["type"] == "progress" and str(data.get("node")) == n.train.id and data["value"] >= 2 and not sent:
            requests.post(comfy.url + "/interrupt", timeout=30).raise_for_status()
            sent.append(True)

    events = comfy.run(g.finalize(), timeout=300, on_event=interrupt_after_two_steps, expect_interrupted=True).events
    assert events[-1]["type"] == "execution_interrupted", events[-1]
    kept = comfy_server.models_dir / "loras" / "aesthete_test" / "cancelled_interrupted.safetensors"
    assert kept.is_file()
    with safe_open(str(kept), "pt") as f:
        meta = f.metadata()
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    assert 2 <= int(meta["aesthete.steps"]) < 500
    assert any(float(u.abs().sum()) > 0 for u in ups)  # trained, not the zero start
    every_epoch = kept.with_name("cancelled_epoch0001.safetensors")  # one step per epoch: saved after step 1
    with safe_open(str(every_epoch), "pt") as f:
        assert f.metadata()["aesthete.epochs"] == "1" and f.metadata()["aesthete.steps"] == "1"


def test_aesthetic_predictor_drops_low_scoring_images(comfy, comfy_server, tiny_predictor):
    folder = comfy_server.input_dir / "aesthete_train_scored"
    write_pattern_folder(folder, count=6)

    def report(min_score: float) -> str:
        g = new_graph()
        loader = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
        dataset = dataset_node(g, folder.name, min_score=min_score, aesthetic_model=loader.out(0))
        g.node("PreviewAny", source=dataset.out(1))
        return comfy.run(g.finalize()).node_output(dataset.id)["text"][0]

    everything = report(0.0)  # the tiny random predictor scores in a narrow band around its bias
    assert "6 images kept, 0 skipped" in everything
    low, high = (float(x) for x in everything.split("aesthetic scores kept: min ")[1].split("\n")[0]
                 .split(", max "))
    assert high > low
    threshold = (low + high) / 2
    filtered = report(threshold)
    kept = int(filtered.split(" images kept")[0].rsplit(" ", 1)[-1])
    assert 0 < kept < 6 and filtered.count(f"< {threshold:.2f}") == 6 - kept
