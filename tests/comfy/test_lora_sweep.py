"""Judge LoRA Files in the real ComfyUI, on the tiny Kolors with three epochs of a LoRA written as DiffSynth-Studio
1.x's trainer leaves them (checkpoints/epoch=K-step=M.ckpt) beside their ComfyUI-format twins: each file at each
strength scores what one graph of core nodes per file gives (LoraLoaderModelOnly on the ComfyUI-format file, KSampler,
VAEDecode, Aesthetic Score); the files come in epoch order; a file that cannot be read is a row with its reason and
the others are still judged; the output MODEL is the best file applied; an empty set is a clear error; a cancel keeps
the rows done in the log."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
import requests
from devkit.client import execution_error_of
from devkit.graph import new_graph
from devkit.kolors_models import RECIPE_PROMPT, kolors_epoch_loras, tiny_kolors
from PIL import Image

NEGATIVE = "低质量，模糊"
SAMPLING = {"seed": 5, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}
VALIDATION = {"prompts": RECIPE_PROMPT, "negative": NEGATIVE, "width": 64, "height": 64, "images_per_prompt": 2,
              "output_lora": "best score", **SAMPLING}
STRENGTHS = (0.5, 1.0)


@pytest.fixture(scope="module")
def run_folder(comfy_server) -> str:
    """loras/<run>/checkpoints/: three DiffSynth epochs and a file that is no checkpoint; loras/<run>/comfy/: the
    ComfyUI-format twins of the three epochs."""
    run = f"sweep-{uuid.uuid4().hex[:8]}"
    root = comfy_server.models_dir / "loras" / run
    kolors_epoch_loras(root / "comfy", root / "checkpoints")
    (root / "checkpoints" / "epoch=3-step=40.ckpt").write_bytes(b"not a checkpoint")
    return run


@pytest.fixture(scope="module")
def kolors(comfy_server) -> str:
    return comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors")


def sweep_graph(kolors: str, predictor: str | None, lora_set: str, strengths: str = "1.0", include_base=True,
                steps: int = 2, images_per_prompt: int = 2):
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors, dtype="fp32", text_encoder_device="default")
    settings = {**VALIDATION, "steps": steps, "images_per_prompt": images_per_prompt}
    if predictor is not None:
        settings["predictor"] = g.node("AesthetePredictorLoader", model=predictor, device="cpu", dtype="fp32").out(0)
    validation = g.node("AestheteValidationSettings", **settings)
    sweep = g.node("AestheteLoraSweep", model=loader.out(0), clip=loader.out(1), vae=loader.out(2),
                   lora_set=lora_set, validation=validation.out(0), strengths=strengths, include_base=include_base,
                   alpha=4.0)
    return g, loader, sweep


def score_of(g, model, clip, vae, predictor) -> object:
    """What a user's graph of core nodes gives: KSampler from the settings' seed, VAEDecode, Aesthetic Score."""
    positive = g.node("CLIPTextEncode", text=RECIPE_PROMPT, clip=clip)
    negative = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=2)
    sampled = g.node("KSampler", model=model, positive=positive.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), denoise=1.0, **SAMPLING)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=vae)
    score = g.node("AestheteScore", predictor=predictor, images=decoded.out(0), batch_size=2)
    return g.node("PreviewAny", source=score.out(1))


@pytest.fixture(scope="module")
def judged(comfy, comfy_server, kolors, run_folder, tiny_predictor):
    g, loader, sweep = sweep_graph(kolors, tiny_predictor, f"{run_folder}/checkpoints",
                                   strengths=", ".join(map(str, STRENGTHS)))
    predictor = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
    best_mean = score_of(g, sweep.out(0), sweep.out(1), loader.out(2), predictor.out(0))
    best_name = g.node("PreviewAny", source=sweep.out(2))
    grid = g.node("PreviewImage", images=sweep.out(3))
    graph = g.node("PreviewImage", images=sweep.out(4))
    start = len(comfy_server.log_text())
    result = comfy.run(g.finalize(), timeout=600)
    return {"result": result, "sweep": sweep, "best_mean": best_mean, "best_name": best_name, "grid": grid,
            "graph": graph, "log": comfy_server.log_text()[start:]}


def rows_of(judged) -> list[dict]:
    return judged["result"].node_output(judged["sweep"].id)["sweep"]


def test_files_come_in_epoch_order_each_strength_a_row_and_the_unreadable_file_has_its_reason(judged, run_folder):
    rows = rows_of(judged)
    assert rows[0]["file"] is None and rows[0]["scores"] is not None  # the base model first
    files = [(r["file"], r["epoch"], r["step"], r["strength"]) for r in rows[1:]]
    expected = [(f"{run_folder}/checkpoints/epoch={e}-step={s}.ckpt", e, s, strength)
                for e, s in ((0, 10), (1, 20), (2, 30), (3, 40)) for strength in STRENGTHS]
    assert files == expected
    *good, bad_low, bad_high = rows[1:]
    assert all(len(r["scores"]) == 2 and not r["error"] for r in good)
    assert bad_low["error"].startswith("LoraFileError: ") and "epoch=3-step=40.ckpt" in bad_low["error"]
    assert bad_high["error"] == bad_low["error"]
    report = judged["result"].node_output(judged["sweep"].id)["text"][0]
    assert "in epoch/step order, as the file names say" in report and "failed: " in report


def test_each_row_scores_what_a_core_lora_loader_and_ksampler_graph_gives(judged, comfy, kolors, run_folder,
                                                                          tiny_predictor):
    """One graph of core nodes per file and strength (LoraLoaderModelOnly on the file's ComfyUI-format twin) and one
    without a LoRA: the same mean score within 1e-6 (the same weights, noise and sampler: the same images)."""
    rows = [r for r in rows_of(judged) if not r["error"]]
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors, dtype="fp32", text_encoder_device="default")
    predictor = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
    shown = []
    for r in rows:
        model = loader.out(0)
        if r["file"] is not None:
            twin = f"{run_folder}/comfy/run_epoch{r['epoch'] + 1:04d}.safetensors"
            model = g.node("LoraLoaderModelOnly", model=model, lora_name=twin, strength_model=r["strength"]).out(0)
        shown.append(score_of(g, model, loader.out(1), loader.out(2), predictor.out(0)))
    run = comfy.run(g.finalize(), timeout=600)
    means = [float(run.node_output(node.id)["text"][0]) for node in shown]
    ours = [float(np.mean(r["scores"])) for r in rows]
    assert ours == pytest.approx(means, abs=1e-6, rel=0)
    assert len(set(np.round(ours, 6))) == len(ours), "the files did not change the images"


def test_the_best_file_is_handed_on_applied_and_drawn(judged, comfy):
    rows = [r for r in rows_of(judged) if not r["error"]]
    means = [float(np.mean(r["scores"])) for r in rows]
    best = rows[int(np.argmax(means))]
    result = judged["result"]
    assert result.node_output(judged["best_name"].id)["text"][0] == (best["file"] or "")
    # the output MODEL is the best file at its strength: generating with it again scores the same
    assert float(result.node_output(judged["best_mean"].id)["text"][0]) == pytest.approx(max(means), abs=1e-6)
    grid = Image.open(io.BytesIO(comfy.output_images(result, judged["grid"].id)[0]))
    # base + 4 files x 2 strengths, two 64x64 images each; a row is as tall as its 4 heading lines (72 px)
    assert grid.size == (170 + 2 * 66, 9 * 74)
    graph = Image.open(io.BytesIO(comfy.output_images(result, judged["graph"].id)[0]))
    assert graph.size == (720, 400)
    assert "Aesthete sweep: best: " in judged["log"]


def test_an_empty_set_is_a_clear_error(comfy, kolors, tiny_predictor):
    g, _, sweep = sweep_graph(kolors, tiny_predictor, "no-such-run/checkpoints")
    g.node("PreviewAny", source=sweep.out(5))
    error = execution_error_of(comfy.run(g.finalize(), timeout=120, expect_error=True))
    assert "no LoRA file" in error["exception_message"] and "models/loras/no-such-run/checkpoints/" in \
        error["exception_message"]


def test_cancel_keeps_the_rows_done_in_the_log(comfy, comfy_server, kolors, run_folder, tiny_predictor):
    """Interrupt when the first row is done (long rows: 30 steps, 4 images): the log keeps the table of what was
    judged so far."""
    g, _, sweep = sweep_graph(kolors, tiny_predictor, f"{run_folder}/checkpoints", steps=30, images_per_prompt=4)
    g.node("PreviewAny", source=sweep.out(5))
    sent = []

    def interrupt_after_one_row(event: dict) -> None:
        data = event.get("data", {})
        if (event["type"] == "progress" and str(data.get("node")) == sweep.id and data["value"] == 1
                and not sent):
            requests.post(comfy.url + "/interrupt", timeout=30).raise_for_status()
            sent.append(True)

    start = len(comfy_server.log_text())
    events = comfy.run(g.finalize(), timeout=600, on_event=interrupt_after_one_row, expect_interrupted=True).events
    assert events[-1]["type"] == "execution_interrupted"
    log = comfy_server.log_text()[start:]
    assert "Aesthete sweep: cancelled after 1 of 5 rows; judged so far:" in log
    assert "(base model)" in log
