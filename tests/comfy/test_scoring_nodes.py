"""The scoring nodes in a real ComfyUI: generate, score, rank, save the best; a folder with bad files; errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from devkit.client import ExecutionError
from devkit.factories import aesthetic_predictor
from devkit.graph import new_graph
from devkit.scoring_files import write_mixed_folder
from PIL import Image


def generation_graph(ckpt: str, predictor: str, min_score: float, top_k: int, tag: str):
    """SD1.5 batch of 4 at 64x64 -> all saved (for checking) -> scored -> ranked -> kept saved with score, rejected
    saved plainly. Returns the graph builder and its nodes by role."""
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    positive = g.node("CLIPTextEncode", text="a lighthouse at dawn", clip=ckpt.out(1))
    negative = g.node("CLIPTextEncode", text="blurry", clip=ckpt.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=4)
    sampled = g.node("KSampler", model=ckpt.out(0), positive=positive.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), seed=7, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal",
                     denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=ckpt.out(2))
    nodes = {"all": g.node("SaveImage", images=decoded.out(0), filename_prefix="all")}
    loader = g.node("AesthetePredictorLoader", model=predictor, device="auto", dtype="auto")
    nodes["score"] = g.node("AestheteScore", predictor=loader.out(0), images=decoded.out(0), batch_size=3)
    nodes["rank"] = rank = g.node("AestheteRank", images=decoded.out(0), scores=nodes["score"].out(0), top_k=top_k,
                                  min_score=min_score)
    nodes["best"] = g.node("AestheteSaveScored", images=rank.out(0), scores=rank.out(1),
                           filename_prefix=f"{tag}/best", mode="save", score_in_filename=True,
                           score_in_metadata=True, draw_score=True, model_name=predictor)
    g.node("SaveImage", images=rank.out(3), filename_prefix=f"{tag}/rejected")
    return g, {role: node.id for role, node in nodes.items()}


def folder_graph(predictor: str, folder: str, batch_size: int = 4, **loader):
    """Predictor loader -> Score Folder; returns the builder and the Score Folder node."""
    g = new_graph()
    load = g.node("AesthetePredictorLoader", model=predictor, device="cpu", dtype="fp32", **loader)
    return g, g.node("AestheteScoreFolder", predictor=load.out(0), folder=folder, recursive=False,
                     allow_outside_input=False, batch_size=batch_size)


def reference_scores(images: list[Image.Image]) -> list[float]:
    """The issue's reference code, one image at a time, on the same tiny predictor."""
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from transformers import CLIPImageProcessor

    folder = aesthetic_predictor("tiny")
    model, processor = AestheticsPredictorV2Linear.from_pretrained(str(folder)), CLIPImageProcessor.from_pretrained(
        str(folder))
    with torch.no_grad():
        return [model(**processor(images=im, return_tensors="pt")).logits.tolist()[0][0] for im in images]


def load_outputs(comfy, result, node: str) -> list[tuple[dict, Image.Image]]:
    from io import BytesIO

    entries = result.node_output(node).get("images", [])
    return [(e, Image.open(BytesIO(data))) for e, data in zip(entries, comfy.output_images(result, node))]


def test_generate_score_rank_and_save_the_best(comfy, comfy_server, sd15_ckpt, tiny_predictor):
    g, ids = generation_graph(sd15_ckpt, tiny_predictor, min_score=-1e3, top_k=1, tag="rank_best")
    result = comfy.run(g.finalize())
    generated = [im.convert("RGB") for _, im in load_outputs(comfy, result, ids["all"])]
    assert len(generated) == 4
    expected = reference_scores(generated)
    # the score node shows one line per image, equal to the reference on the saved PNGs
    text = result.node_output(ids["score"])["text"][0]
    shown = [float(v) for v in re.findall(r"^#\d+: (-?[\d.]+)$", text, re.M)]
    assert np.allclose(shown, expected, atol=2e-3), (shown, expected)
    assert len(set(round(s, 3) for s in expected)) > 1  # the images differ, so the ranking means something
    best = int(np.argmax(expected))
    # the best image was written once, with its score in the name and in the PNG metadata
    files = sorted((comfy_server.output_dir / "rank_best").glob("best_*.png"))
    assert len(files) == 1
    with Image.open(files[0]) as im:
        stored = float(im.text["aesthetic_score"])
        assert im.text["aesthetic_model"] == tiny_predictor and "prompt" in im.text
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(generated[best]))
    assert stored == pytest.approx(expected[best], abs=1e-3)
    assert f"_{stored:.2f}_.png" in files[0].name
    # the node showed the drawn previews, not the clean files
    previews = result.node_output(ids["best"])["images"]
    assert len(previews) == 1 and previews[0]["type"] == "temp"
    assert len(list((comfy_server.output_dir / "rank_best").glob("rejected_*.png"))) == 3


def test_rank_with_nothing_passing_blocks_the_kept_branch(comfy, comfy_server, sd15_ckpt, tiny_predictor):
    g, ids = generation_graph(sd15_ckpt, tiny_predictor, min_score=999.0, top_k=0, tag="rank_none")
    result = comfy.run(g.finalize())
    assert result.events_of("execution_success") and not result.events_of("execution_error")
    assert not list((comfy_server.output_dir / "rank_none").glob("best_*"))
    assert ids["best"] not in result.outputs  # the save node was skipped, without error
    assert len(list((comfy_server.output_dir / "rank_none").glob("rejected_*.png"))) == 4
    assert result.node_output(ids["rank"])["text"][0].startswith("kept 0 of 4")


def test_folder_with_bad_files_is_scored_with_reasons(comfy, comfy_server, tiny_predictor):
    expected = write_mixed_folder(comfy_server.input_dir / "scoring_mixed")
    g, score = folder_graph(tiny_predictor, "scoring_mixed")
    result = comfy.run(g.finalize())
    text = result.node_output(score.id)["text"][0]
    lines = text.splitlines()
    assert re.match(r"mean -?[\d.]+ over 8 image\(s\), 5 skipped", lines[0]), lines[0]
    scored = {ln.split("\t")[1]: float(ln.split("\t")[0]) for ln in lines if "\t" in ln}
    assert set(scored) == {n for n, e in expected.items() if e == "scored"}
    mean = float(lines[0].split()[1])
    assert mean == pytest.approx(sum(scored.values()) / 8, abs=1e-3)
    for name, reason in expected.items():
        if reason != "scored":
            assert f"{name}: {reason}" in text
    plain = Image.open(comfy_server.input_dir / "scoring_mixed" / "a_rgb.png").convert("RGB")
    assert scored["a_rgb.png"] == pytest.approx(reference_scores([plain])[0], abs=1e-3)
    assert "a_rgb.txt" not in text and "metadata.csv" not in text  # captions are not skips
    # the bar: the default 6, then one just above the mean
    assert lines[0].endswith(f"{'passes' if mean >= 6 else 'below'} the bar of 6"), lines[0]
    score.set_input("threshold", round(mean + 0.5, 1))
    above = comfy.run(g.finalize()).node_output(score.id)["text"][0].splitlines()[0]
    assert above.endswith(f"below the bar of {round(mean + 0.5, 1):g}"), above


@pytest.mark.parametrize("folder, message", [
    ("../", "outside ComfyUI's input directory"),
    ("", "give the name of something inside ComfyUI's input directory"),  # the one rule: an empty name names nothing
    ("/etc", "outside ComfyUI's input directory"),
    ("no_such_folder", "no such folder"),
    ("empty_for_scoring", "no image could be scored"),
])
def test_folder_errors_are_clear(comfy, comfy_server, tiny_predictor, folder, message):
    (comfy_server.input_dir / "empty_for_scoring").mkdir(exist_ok=True)
    g, _ = folder_graph(tiny_predictor, folder)
    with pytest.raises(ExecutionError, match=re.escape(message)):
        comfy.run(g.finalize())


def test_missing_predictor_fails_fast_offline_naming_the_files(comfy, comfy_server):
    g, _ = folder_graph("aesthetics-predictor-v1-vit-base-patch32", "lora_dataset")
    with pytest.raises(ExecutionError) as e:
        comfy.run(g.finalize(), timeout=30)
    message = str(e.value)
    assert "preprocessor_config.json" in message and "aesthetic" in message


def test_nodes_are_listed_with_tooltips(comfy, tiny_predictor):
    info = comfy.object_info()
    for node in ("AesthetePredictorLoader", "AestheteScore", "AestheteRank", "AestheteScoreFolder",
                 "AestheteSaveScored"):
        assert info[node]["category"] == "Aesthete/scoring" and info[node]["description"]
    models = info["AesthetePredictorLoader"]["input"]["required"]["model"]
    assert tiny_predictor in str(models) and "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE" in str(models)


def test_preview_mode_writes_no_output_files(comfy, comfy_server, sd15_ckpt, tiny_predictor):
    g, ids = generation_graph(sd15_ckpt, tiny_predictor, min_score=-1e3, top_k=2, tag="preview_only")
    best = g.lookup_node(ids["best"])
    best.set_input("mode", "preview")
    best.set_input("draw_score", False)
    result = comfy.run(g.finalize())
    shown = result.node_output(ids["best"])["images"]
    assert len(shown) == 2 and all(s["type"] == "temp" for s in shown)
    assert not list((comfy_server.output_dir / "preview_only").glob("best_*"))
    for entry, image in load_outputs(comfy, result, ids["best"]):
        assert "aesthetic_score" in image.text and f"_{float(image.text['aesthetic_score']):.2f}_" in entry["filename"]


def test_compiled_predictor_scores_like_the_reference(comfy, comfy_server, tiny_predictor):
    """The loader's opt-in compile toggle (an optional input): the reference scores within 1e-3."""
    write_mixed_folder(comfy_server.input_dir / "scoring_compiled")
    g, score = folder_graph(tiny_predictor, "scoring_compiled", batch_size=3, compile=True)
    text = comfy.run(g.finalize()).node_output(score.id)["text"][0]
    scored = {ln.split("\t")[1]: float(ln.split("\t")[0]) for ln in text.splitlines() if "\t" in ln}
    assert len(scored) == 8
    plain = Image.open(comfy_server.input_dir / "scoring_compiled" / "a_rgb.png").convert("RGB")
    assert scored["a_rgb.png"] == pytest.approx(reference_scores([plain])[0], abs=1e-3)
    info = comfy.object_info()["AesthetePredictorLoader"]["input"]
    assert "compile" in info["optional"] and "compile" not in info["required"]  # old graphs still validate
