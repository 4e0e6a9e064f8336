"""The judge in a real ComfyUI: a LAION head and a prompt-aware scorer combined by Aesthete Judge, scoring a batch the
two disagree on (the rank follows the weights), the prompt from the Prompt Composer, the errors (no prompt, scorers
on two devices), Score Folder reading captions, and Train LoRA's validation recording every scorer per epoch."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from devkit.client import ExecutionError
from devkit.graph import new_graph
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors
from devkit.scorer_models import tiny_clip_scorers_root
from devkit.scoring_files import photo_like
from devkit.training_data import write_pattern_folder
from PIL import Image

CLIPSCORE = "clipscore-vit-l-14"
PROMPT_RANGE = (0.1, 0.4)  # its catalog range
LAION_RANGE = (1.0, 10.0)


@pytest.fixture(scope="module")
def catalog_scorers(comfy_server) -> None:
    """The catalog's CLIPScore ViT-L/14 and PickScore (tiny random weights) in models/QualityMetric."""
    for folder in sorted((tiny_clip_scorers_root() / "QualityMetric").iterdir()):
        comfy_server.link_model("QualityMetric", folder)


def clipscore(g):
    return g.node("AestheteScorerLoader", scorer=CLIPSCORE, device="cpu", dtype="fp32")


def judge_graph(ckpt: str, predictor: str, weights: tuple[float, float], prompt_from_composer: bool = True):
    """SD1.5 batch of 4 (64x64, 1 step) of the composer's prompt -> judge (LAION head, tiny prompt-aware scorer) ->
    Aesthetic Score with the prompt -> Rank (top 1)."""
    g = new_graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    composer = g.node("AesthetePromptComposer", separator="auto", dedupe=True, scene="a bowl of ramen")
    positive = g.node("CLIPTextEncode", text=composer.out(0), clip=ckpt.out(1))
    negative = g.node("CLIPTextEncode", text="blurry", clip=ckpt.out(1))
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=4)
    sampled = g.node("KSampler", model=ckpt.out(0), positive=positive.out(0), negative=negative.out(0),
                     latent_image=latent.out(0), seed=11, steps=1, cfg=5.0, sampler_name="euler",
                     scheduler="normal", denoise=1.0)
    decoded = g.node("VAEDecode", samples=sampled.out(0), vae=ckpt.out(2))
    laion = g.node("AesthetePredictorLoader", model=predictor, device="cpu", dtype="fp32")
    aligned = clipscore(g)
    judge = g.node("AestheteJudge", scorer_1=laion.out(0), weight_1=weights[0], scorer_2=aligned.out(0),
                   weight_2=weights[1])
    prompt = composer.out(0) if prompt_from_composer else ""
    score = g.node("AestheteScore", predictor=judge.out(0), images=decoded.out(0), batch_size=3, prompt=prompt)
    rank = g.node("AestheteRank", images=decoded.out(0), scores=score.out(0), top_k=1, min_score=-1000.0,
                  table=score.out(3))
    kept = g.node("PreviewAny", source=rank.out(2))  # the kept image's index
    g.node("AestheteSaveScored", images=rank.out(0), scores=rank.out(1), table=rank.out(5),
           filename_prefix=f"judge/w{weights[0]:g}_{weights[1]:g}", mode="save", score_in_filename=True,
           score_in_metadata=True, draw_score=False)
    return g, score, kept


def shown_table(text: str) -> tuple[list[str], np.ndarray]:
    """The per-scorer table the Score node shows: header and rows (combined, each scorer)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("combined\t"))
    header = lines[start].split("\t")
    rows = [[float(v) for v in line.split("\t")] for line in lines[start + 1:] if line.strip()]
    return header, np.array(rows)


def kept_index(comfy, result, kept) -> int:
    return int(result.node_output(kept.id)["text"][0])


def test_the_combined_rank_follows_the_weights_where_the_scorers_disagree(catalog_scorers, comfy, comfy_server,
                                                                         sd15_ckpt, tiny_predictor):
    runs = {}
    for weights in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        g, score, rank = judge_graph(sd15_ckpt, tiny_predictor, weights)
        result = comfy.run(g.finalize())
        header, rows = shown_table(result.node_output(score.id)["text"][0])
        runs[weights] = (header, rows, kept_index(comfy, result, rank))
    header, rows, _ = runs[(1.0, 1.0)]
    assert header == ["combined", tiny_predictor, CLIPSCORE]
    aesthetic, aligned = rows[:, 1], rows[:, 2]
    assert int(np.argmax(aesthetic)) != int(np.argmax(aligned)), "pick images the two scorers disagree on"
    # the same images in every run, so the same columns
    for h, r, _ in runs.values():
        assert np.allclose(r[:, 1:], rows[:, 1:], atol=1e-3)
    assert runs[(1.0, 0.0)][2] == int(np.argmax(aesthetic))
    assert runs[(0.0, 1.0)][2] == int(np.argmax(aligned))
    fraction = ((aesthetic - LAION_RANGE[0]) / (LAION_RANGE[1] - LAION_RANGE[0])
                + (aligned - PROMPT_RANGE[0]) / (PROMPT_RANGE[1] - PROMPT_RANGE[0])) / 2
    expected = LAION_RANGE[0] + (LAION_RANGE[1] - LAION_RANGE[0]) * fraction
    assert np.allclose(rows[:, 0], expected, atol=2e-3)
    assert runs[(1.0, 1.0)][2] == int(np.argmax(expected))
    # the kept image is saved with every scorer's score in its metadata (Rank passes the table's kept rows on)
    best = int(np.argmax(aligned))
    saved = sorted((comfy_server.output_dir / "judge").glob("w0_1_*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as im:
        each = json.loads(im.text["aesthetic_scores"])
        combined = float(im.text["aesthetic_score"])
    assert combined == pytest.approx(runs[(0.0, 1.0)][1][best, 0], abs=1e-3)
    assert each == pytest.approx({tiny_predictor: aesthetic[best], CLIPSCORE: aligned[best]}, abs=1e-3)


def test_a_prompt_aware_judge_without_a_prompt_is_an_error(catalog_scorers, comfy, sd15_ckpt, tiny_predictor):
    g, score, _ = judge_graph(sd15_ckpt, tiny_predictor, (1.0, 1.0), prompt_from_composer=False)
    with pytest.raises(ExecutionError, match=r"(?s)AestheteScore.*scores how well an image matches its prompt"):
        comfy.run(g.finalize())


def test_scorers_on_two_devices_in_one_judge_are_refused(catalog_scorers, comfy, tiny_predictor):
    g = new_graph()
    laion = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
    other = g.node("TestOnlyOnAnotherDevice", scorer=clipscore(g).out(0))
    judge = g.node("AestheteJudge", scorer_1=laion.out(0), weight_1=1.0, scorer_2=other.out(0), weight_2=1.0)
    g.node("AestheteScoreFolder", predictor=judge.out(0), folder="nowhere", recursive=False,
           allow_outside_input=False, batch_size=4)
    with pytest.raises(ExecutionError, match=r"different devices \(.* on cpu, clipscore-vit-l-14 on meta\)"):
        comfy.run(g.finalize())


def test_score_folder_reads_captions_and_skips_the_uncaptioned(catalog_scorers, comfy, comfy_server, tiny_predictor):
    folder = comfy_server.input_dir / "judge_captions"
    folder.mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(photo_like(48, 48, seed=i)).save(folder / f"im{i}.png")
    (folder / "im0.txt").write_text("a red fox in the snow", encoding="utf-8")
    (folder / "metadata.csv").write_text("file_name,text\nim2.png,a bowl of ramen\n", encoding="utf-8")
    g = new_graph()
    laion = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
    aligned = clipscore(g)
    judge = g.node("AestheteJudge", scorer_1=laion.out(0), weight_1=1.0, scorer_2=aligned.out(0), weight_2=1.0)
    node = g.node("AestheteScoreFolder", predictor=judge.out(0), folder="judge_captions", recursive=False,
                  allow_outside_input=False, batch_size=4, threshold=0.0)
    result = comfy.run(g.finalize())
    text = result.node_output(node.id)["text"][0]
    assert "mean" in text and "2 skipped" not in text and "1 skipped" in text
    assert "im1.png: no caption (.txt, .json or metadata.csv)" in text and "needs the prompt of every image" in text
    assert f"combined\t{tiny_predictor}\t{CLIPSCORE}\tfile" in text
    assert re.search(r"\tim0.png$", text, re.M) and re.search(r"\tim2.png$", text, re.M)


DATA = "judge_validation"
TRAIN = {"epochs": 2, "rank": 4, "alpha": 4.0, "learning_rate": 1e-2, "batch_size": 2, "grad_accumulation": 1,
         "optimizer": "AdamW", "lr_schedule": "constant", "warmup_steps": 0, "seed": 0, "precision": "fp32",
         "gradient_checkpointing": False, "target_layers": "attention q,k,v,out", "save_every_n_epochs": 0,
         "resume_from": "[None]"}
VALIDATION = {"prompts": RECIPE_PROMPT + "\nptn, stripes", "negative": "模糊", "seed": 5, "steps": 2, "width": 64,
              "height": 64, "images_per_prompt": 1, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
              "output_lora": "best score"}


def test_validation_records_every_scorer_per_epoch_and_picks_by_the_combination(catalog_scorers, comfy, comfy_server,
                                                                                 tiny_predictor):
    write_pattern_folder(comfy_server.input_dir / DATA, count=2)
    kolors = comfy_server.link_model("kolors", tiny_kolors("kolors", "fp16"), "tiny-kolors")
    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors, dtype="fp32", text_encoder_device="default")
    data = g.node("AestheteLoraDataset", folder=DATA, resolution=64, crop_mode="center crop", trigger_word="ptn",
                  keep_first_tags=1, shuffle_tags=False, caption_dropout=0.0, repeats=1, require_captions=True,
                  allow_outside_input=False, seed=0)
    laion = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
    aligned = clipscore(g)
    judge = g.node("AestheteJudge", scorer_1=laion.out(0), weight_1=1.0, scorer_2=aligned.out(0), weight_2=1.0)
    settings = g.node("AestheteValidationSettings", **VALIDATION, predictor=judge.out(0))
    train = g.node("AestheteTrainLora", model=loader.out(0), clip=loader.out(1), vae=loader.out(2),
                   dataset=data.out(0), checkpoint_name="judge_validation/run", **TRAIN, validation=settings.out(0))
    graph = g.node("PreviewImage", images=train.out(4))
    result = comfy.run(g.finalize(), timeout=480)
    out = result.node_output(train.id)
    epochs = out["validation"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert list(e["scorer_scores"]) == [tiny_predictor, CLIPSCORE]
        aesthetic, prompt_aware = (np.array(v) for v in e["scorer_scores"].values())
        assert len(aesthetic) == 2 == len(prompt_aware)
        fraction = ((aesthetic - 1.0) / 9.0 + (prompt_aware - PROMPT_RANGE[0]) / (PROMPT_RANGE[1] - PROMPT_RANGE[0])) / 2
        assert np.allclose(e["scores"], 1.0 + 9.0 * fraction, atol=1e-6)
    means = [float(np.mean(e["scores"])) for e in epochs]
    best = int(np.argmax(means)) + 1
    report = out["text"][0]
    assert f"output: epoch {best} (best mean score" in report
    assert f"epoch\tmean loss\tmean score\tmean {tiny_predictor}\tmean {CLIPSCORE}\tlora" in report
    picture = Image.open(io.BytesIO(comfy.output_images(result, graph.id)[0]))
    assert picture.size == (640 + 3 * 480, 400)  # loss, combination, each scorer


def test_lora_dataset_filters_by_a_prompt_aware_judge_reading_captions(catalog_scorers, comfy, comfy_server,
                                                                      tiny_predictor):
    folder = comfy_server.input_dir / "judge_dataset"
    write_pattern_folder(folder, count=3, layouts=("txt",))
    (folder / "pattern_01.txt").unlink()  # one image without a caption
    g = new_graph()
    laion = g.node("AesthetePredictorLoader", model=tiny_predictor, device="cpu", dtype="fp32")
    judge = g.node("AestheteJudge", scorer_1=laion.out(0), weight_1=1.0, scorer_2=clipscore(g).out(0), weight_2=1.0)
    data = g.node("AestheteLoraDataset", folder="judge_dataset", resolution=64, crop_mode="center crop",
                  trigger_word="", keep_first_tags=0, shuffle_tags=False, caption_dropout=0.0, repeats=1,
                  require_captions=False, allow_outside_input=False, seed=0, aesthetic_model=judge.out(0),
                  min_score=-1000.0)
    shown = g.node("PreviewAny", source=data.out(1))
    report = comfy.run(g.finalize()).node_output(shown.id)["text"][0]
    assert "2 images kept" in report or "kept 2" in report, report
    assert "pattern_01.png: no caption (.txt, .json or metadata.csv): the scorer reads each image's caption" in report
