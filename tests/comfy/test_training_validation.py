"""Validation by score, every epoch, in the real ComfyUI on the tiny Kolors (64x64, 2 epochs, 2 sampling steps):
each epoch's images are KSampler's from the same seed with that epoch's saved LoRA (within float rounding: the LoRA
is added beside each layer as in training, not merged into the weights) and score what the Aesthetic Score node gives
them; the best-scoring epoch is output; every epoch's file exists; validation loads the trained model no second time
and leaves training unchanged; without a predictor the images come unscored and the last epoch is output; a cancel
during validation keeps the epochs saved."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
import torch
from devkit.graph import new_graph
from devkit.training_graphs import TRAIN, dataset_node, train_node
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors
from devkit.training_data import write_pattern_folder
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

DATA = "kolors_validation"
NEGATIVE = "低质量，模糊"
# the builder's training (devkit/training_graphs.py): lr 1e-2 moves the tiny model's images (and scores) visibly in
# one step; batch 2 of 2 images: one step per epoch, 2 epochs
VALIDATION = {"prompts": RECIPE_PROMPT, "negative": NEGATIVE, "seed": 5, "steps": 2, "width": 64, "height": 64,
              "images_per_prompt": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
              "output_lora": "best score"}


@pytest.fixture(scope="module")
def kolors(comfy_server) -> str:
    write_pattern_folder(comfy_server.input_dir / DATA, count=2)
    return comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors")


def train_graph(kolors: str, checkpoint: str, predictor: str | None = None, validate: bool = True, **changes):
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors, dtype="fp32", text_encoder_device="default")
    data = dataset_node(g, DATA)
    extra = {}
    if validate:
        settings = {**VALIDATION, **{k: v for k, v in changes.items() if k in VALIDATION}}
        if predictor is not None:
            settings["predictor"] = g.node("AesthetePredictorLoader", model=predictor, device="cpu",
                                           dtype="fp32").out(0)
        extra["validation"] = g.node("AestheteValidationSettings", **settings).out(0)
    train = train_node(g, loader.out(0), loader.out(1), loader.out(2), data.out(0), checkpoint_name=checkpoint,
                       **{k: v for k, v in changes.items() if k in TRAIN}, **extra)
    save = g.node("AestheteSaveLora", lora=train.out(1), name_prefix=checkpoint + "_out", precision="fp32",
                  diffsynth_copy=False)
    nodes = {"loader": loader, "train": train, "save": save}
    nodes["grid"] = g.node("PreviewImage", images=train.out(3))  # blocked (skipped, no error) without validation
    nodes["graph"] = g.node("PreviewImage", images=train.out(4))
    return g, nodes


def tensors(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def validated(comfy, comfy_server, kolors, tiny_predictor):
    g, nodes = train_graph(kolors, "validation_test/scored", tiny_predictor)
    start = len(comfy_server.log_text())
    result = comfy.run(g.finalize(), timeout=480)
    return nodes, result, comfy_server.log_text()[start:]


def test_every_epoch_is_validated_saved_and_the_best_is_output(validated, comfy, comfy_server):
    nodes, result, log = validated
    out = result.node_output(nodes["train"].id)
    epochs = out["validation"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(len(e["scores"]) == 2 for e in epochs)
    folder = comfy_server.models_dir / "loras" / "validation_test"
    files = [folder / f"scored_epoch{n:04d}.safetensors" for n in (1, 2)]
    assert all(f.is_file() for f in files) and [e["lora"] for e in epochs] == [
        f"validation_test/{f.name}" for f in files]
    means = [float(np.mean(e["scores"])) for e in epochs]
    assert means[0] != means[1], "the images did not change while the LoRA trained"
    best = int(np.argmax(means))
    saved, meta = tensors(folder / "scored_out_00001.safetensors")
    expected, _ = tensors(files[best])
    assert meta["aesthete.epochs"] == str(best + 1) and set(saved) == set(expected)
    assert all(saved[k].equal(expected[k]) for k in saved)
    report = out["text"][0]
    assert f"output: epoch {best + 1} (best mean score" in report and "epoch\tmean loss\tmean score\tlora" in report
    assert "memory (" in report and "encoding" in report and "training" in report and "validation" in report
    assert "Aesthete validation: epoch 1: mean loss" in log and "Aesthete validation: epoch 2" in log
    grid = Image.open(io.BytesIO(comfy.output_images(result, nodes["grid"].id)[0]))
    assert grid.size == (96 + 2 * 66, 2 * 66)  # two epochs of two 64x64 images
    graph = Image.open(io.BytesIO(comfy.output_images(result, nodes["graph"].id)[0]))
    assert graph.size == (640 + 480, 400)


def test_each_epoch_is_ksampler_from_the_same_seed_and_scores_as_the_score_node(validated, comfy, kolors,
                                                                               tiny_predictor):
    """For each epoch: its saved LoRA through core LoraLoaderModelOnly, KSampler from the validation seed, VAEDecode,
    the Aesthetic Score node: the mean equals the epoch's validation mean (the same noise every epoch, the same
    images, the same scoring path) within float rounding: validation adds the LoRA beside each layer, as training
    does, where the loader merges it into the weights (about 1e-5 apart, measured, on the tiny predictor's 470-ish
    scores; one uint8 level of a pixel moves them that much)."""
    nodes, result, _ = validated
    epochs = result.node_output(nodes["train"].id)["validation"]
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors, dtype="fp32", text_encoder_device="default")
    predictor = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
    negative = g.node("CLIPTextEncode", text=NEGATIVE, clip=loader.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=2)
    shown = []
    for e in epochs:
        lora = g.node("LoraLoaderModelOnly", model=loader.out(0), lora_name=e["lora"], strength_model=1.0)
        sampled = g.node("KSampler", model=lora.out(0), positive=positive.out(0), negative=negative.out(0),
                         latent_image=latent.out(0), seed=5, steps=2, cfg=4.0, sampler_name="euler",
                         scheduler="normal", denoise=1.0)
        decoded = g.node("VAEDecode", samples=sampled.out(0), vae=loader.out(2))
        score = g.node("AestheteScore", predictor=predictor.out(0), images=decoded.out(0), batch_size=2)
        shown.append(g.node("PreviewAny", source=score.out(1)))
    run = comfy.run(g.finalize(), timeout=300)
    for e, node in zip(epochs, shown):
        mean = float(run.node_output(node.id)["text"][0])
        assert mean == pytest.approx(float(np.mean(e["scores"])), rel=1e-4), e


def test_validation_loads_the_trained_model_once_for_the_whole_run(validated):
    """Validation samples with the model being trained, its LoRA added as in training: ComfyUI loads the UNet once
    for the run, never again per epoch (on a GPU each load moved the whole UNet between VRAM and RAM: twice per
    epoch before). ComfyUI logs every load of a model that was not loaded."""
    _, _, log = validated
    assert log.count("Requested to load Kolors\n") == 1, log


def test_validation_leaves_training_unchanged(validated, comfy, comfy_server, kolors):
    """The same run without validation trains the same LoRA as the validated run's last epoch: generating between
    epochs leaves the model's weights as they were."""
    g, nodes = train_graph(kolors, "validation_test/plain", validate=False)
    result = comfy.run(g.finalize(), timeout=480)
    assert not result.node_output(nodes["grid"].id).get("images")  # no grid without validation, and no error
    assert "validation" not in result.node_output(nodes["train"].id)
    folder = comfy_server.models_dir / "loras" / "validation_test"
    plain, _ = tensors(folder / "plain_out_00001.safetensors")
    validated_last, _ = tensors(folder / "scored_epoch0002.safetensors")
    assert set(plain) == set(validated_last) and all(plain[k].equal(validated_last[k]) for k in plain)


def test_without_a_predictor_the_images_are_unscored_and_the_last_epoch_is_output(comfy, comfy_server, kolors):
    g, nodes = train_graph(kolors, "validation_test/unscored", output_lora="best score")
    result = comfy.run(g.finalize(), timeout=480)
    out = result.node_output(nodes["train"].id)
    assert [e["scores"] for e in out["validation"]] == [None, None]
    assert "epoch 2 (the last: no scores" in out["text"][0]
    _, meta = tensors(comfy_server.models_dir / "loras" / "validation_test" / "unscored_out_00001.safetensors")
    assert meta["aesthete.epochs"] == "2"


def test_cancel_during_validation_keeps_the_saved_epochs(comfy, comfy_server, kolors, tiny_predictor):
    """Interrupt as soon as epoch 1's step is reported: the cancel lands while epoch 1's images are generated (a
    long validation: 40 steps, 4 images); epoch 1's LoRA is kept, nothing of epoch 2 was trained."""
    g, nodes = train_graph(kolors, "validation_test/cancelled", tiny_predictor, steps=40, images_per_prompt=4,
                           epochs=3)
    sent = []

    def interrupt_after_epoch_one(event: dict) -> None:
        data = event.get("data", {})
        # the trainer's bar: step 1 of 3 (one step per epoch) is the end of epoch 1
        if (event["type"] == "progress" and str(data.get("node")) == nodes["train"].id
                and (data["value"], data["max"]) == (1, 3) and not sent):
            requests.post(comfy.url + "/interrupt", timeout=30).raise_for_status()
            sent.append(True)

    start = len(comfy_server.log_text())
    events = comfy.run(g.finalize(), timeout=480, on_event=interrupt_after_epoch_one, expect_interrupted=True).events
    assert events[-1]["type"] == "execution_interrupted"
    folder = comfy_server.models_dir / "loras" / "validation_test"
    assert (folder / "cancelled_epoch0001.safetensors").is_file()
    assert not (folder / "cancelled_epoch0002.safetensors").exists()
    log = comfy_server.log_text()[start:]
    assert "cancelled while validating epoch 1; kept every epoch saved so far: cancelled_epoch0001.safetensors" in log
    # the model is whole again afterwards: a run on it trains as before
    g, _ = train_graph(kolors, "validation_test/after_cancel", validate=False)
    comfy.run(g.finalize(), timeout=480)
    plain, _ = tensors(folder / "after_cancel_out_00001.safetensors")
    assert float(sum(v.abs().sum() for k, v in plain.items() if k.endswith("lora_up.weight"))) > 0


def test_on_the_cpu_the_text_encoder_and_vae_are_parked_and_still_encode_and_decode_the_same(validated, comfy,
                                                                                           comfy_server, kolors):
    """Once everything is encoded, Train LoRA parks ChatGLM3 and the VAE on disk (the CPU has no other memory to
    offload them to), and says so; the loader's CLIP and VAE (ComfyUI's cached outputs, the parked ones) then
    generate and decode exactly what a fresh load of the same folder does."""
    nodes, result, log = validated
    report = result.node_output(nodes["train"].id)["text"][0]
    assert "text encoder parked on disk (" in report and "VAE parked on disk (" in report, report
    assert "Aesthete trainer: text encoder parked on disk" in log
    fresh = comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors-fresh")
    g = new_graph()
    shown = {}
    for tag, name in (("parked", kolors), ("fresh", fresh)):
        loader = g.node("AestheteKolorsLoader", kolors=name, dtype="fp32", text_encoder_device="default")
        positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=loader.out(1))
        negative = g.node("CLIPTextEncode", text=NEGATIVE, clip=loader.out(1))
        latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
        sampled = g.node("KSampler", model=loader.out(0), positive=positive.out(0), negative=negative.out(0),
                         latent_image=latent.out(0), seed=5, steps=2, cfg=4.0, sampler_name="euler",
                         scheduler="normal", denoise=1.0)
        g.node("SaveLatent", samples=sampled.out(0), filename_prefix=f"latents/parking-{tag}")
        decoded = g.node("VAEDecode", samples=sampled.out(0), vae=loader.out(2))
        shown[tag] = (loader, g.node("SaveImage", images=decoded.out(0), filename_prefix=f"parking-{tag}"))
    run = comfy.run(g.finalize(), timeout=300)
    cached = {str(n) for e in run.events_of("execution_cached") for n in e["data"]["nodes"]}
    assert shown["parked"][0].id in cached, "the loader ran again: its CLIP and VAE are not the parked ones"
    latents = {}
    for tag in shown:
        files = sorted((comfy_server.output_dir / "latents").glob(f"parking-{tag}_*.latent"))
        latents[tag] = load_safetensors(files[-1].read_bytes())["latent_tensor"]
    assert torch.equal(latents["parked"], latents["fresh"])
    images = {tag: np.asarray(Image.open(io.BytesIO(comfy.output_images(run, save.id)[0])))
              for tag, (_, save) in shown.items()}
    assert np.array_equal(images["parked"], images["fresh"])
