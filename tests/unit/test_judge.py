"""The judge (scoring/judge.py): several scorers combined by weight on fixed scales, per-scorer columns, prompts
for the prompt-aware ones, and what it refuses."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from devkit.factories import aesthetic_predictor
from devkit.scoring_files import photo_like
from devkit.scorer_models import tiny_clip_scorers_root
from PIL import Image

from aesthete.scoring.folder import score_folder, write_report
from aesthete.scoring.judge import Judge, JudgeError, as_judge, combine
from aesthete.scoring.predictor import load_predictor
from aesthete.scoring.scorers import load_scorer
from aesthete.scoring.scorers.errors import PromptRequired

CLIPSCORE = "clipscore-vit-l-14"  # the catalog's, on tiny random weights

PROMPTS = ["a lighthouse at dawn", "a bowl of ramen", "a city street at night", "a portrait of an old sailor",
           "a field of sunflowers", "a red fox in the snow"]


@pytest.fixture(scope="module")
def laion():
    return load_predictor(aesthetic_predictor("tiny"), "cpu", "fp32")


@pytest.fixture(scope="module")
def clip():
    return load_scorer(CLIPSCORE, tiny_clip_scorers_root(), "cpu", "fp32")


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.from_numpy(np.stack([photo_like(48, 40, seed=s) for s in range(6)]).astype(np.float32) / 255)


def test_one_scorer_judge_gives_its_raw_scores_exactly(laion, batch):
    # the recipe's "folder mean >= 6" bar on the LAION head must keep meaning the same
    raw = laion.score_tensor(batch)
    table = as_judge(laion).score_table(batch)
    assert table.combined == raw
    assert list(table.columns.values()) == [raw]


def test_combined_score_follows_the_weights_on_fixed_scales(laion, clip, batch):
    aesthetic, aligned = laion.score_tensor(batch), clip.score_tensor(batch, PROMPTS)
    # the two disagree on the best image, so the weights decide it
    assert int(np.argmax(aesthetic)) != int(np.argmax(aligned))
    (a_lo, a_hi), (c_lo, c_hi) = (1.0, 10.0), clip.info.typical_range
    for wa, wc in ((1.0, 0.0), (0.0, 1.0), (1.0, 3.0)):
        table = Judge([(laion, wa), (clip, wc)]).score_table(batch, PROMPTS)
        fraction = (wa * (np.array(aesthetic) - a_lo) / (a_hi - a_lo)
                    + wc * (np.array(aligned) - c_lo) / (c_hi - c_lo)) / (wa + wc)
        expected = a_lo + (a_hi - a_lo) * fraction  # on the first scorer's scale
        assert np.allclose(table.combined, expected, atol=1e-9)
        assert list(table.columns.values()) == [aesthetic, aligned]
        assert list(table.columns)[1] == CLIPSCORE
    only_aesthetic = Judge([(laion, 1.0), (clip, 0.0)]).score_tensor(batch, PROMPTS)
    only_aligned = Judge([(laion, 0.0), (clip, 1.0)]).score_tensor(batch, PROMPTS)
    assert int(np.argmax(only_aesthetic)) == int(np.argmax(aesthetic))
    assert int(np.argmax(only_aligned)) == int(np.argmax(aligned))


def test_an_images_combined_score_does_not_depend_on_its_batch(laion, clip, batch):
    # validation compares epochs (different batches): a batch-relative scale would give every epoch the same mean
    judge = Judge([(laion, 1.0), (clip, 1.0)])
    together = judge.score_tensor(batch, PROMPTS)
    alone = [judge.score_tensor(batch[i:i + 1], PROMPTS[i:i + 1])[0] for i in range(len(PROMPTS))]
    assert np.allclose(together, alone, atol=1e-4)
    better, worse = batch[:3], batch[3:]
    assert judge.score_table(better, PROMPTS[:3]).means()["combined"] != pytest.approx(
        judge.score_table(worse, PROMPTS[3:]).means()["combined"])


def test_prompt_aware_scorer_without_a_prompt_is_an_error_naming_it(laion, clip, batch):
    judge = Judge([(laion, 1.0), (clip, 1.0)])
    assert judge.prompt_aware and not as_judge(laion).prompt_aware
    with pytest.raises(PromptRequired, match=CLIPSCORE):
        judge.score_tensor(batch)
    with pytest.raises(PromptRequired, match=r"empty prompt for image\(s\) \[2\]"):
        judge.score_tensor(batch, PROMPTS[:2] + [" "] + PROMPTS[3:])
    with pytest.raises(JudgeError, match="2 prompt"):
        judge.score_tensor(batch, PROMPTS[:2])
    # a scorer that reads no prompt ignores one
    assert as_judge(laion).score_tensor(batch, PROMPTS) == laion.score_tensor(batch)


def test_scorers_on_different_devices_are_refused(laion):
    other = load_scorer(CLIPSCORE, tiny_clip_scorers_root(), "cpu", "fp32").to("meta")
    with pytest.raises(JudgeError, match=rf"different devices \(.* on cpu, {CLIPSCORE} on meta\)"):
        Judge([(laion, 1.0), (other, 1.0)]).score_tensor(torch.rand(1, 32, 32, 3), ["a cat"])


def test_bad_weights_and_duplicates_are_refused(laion, clip):
    with pytest.raises(JudgeError, match="at least one scorer"):
        Judge([])
    with pytest.raises(JudgeError, match="all 0"):
        Judge([(laion, 0.0), (clip, 0.0)])
    with pytest.raises(JudgeError, match="weight -1"):
        Judge([(laion, -1.0)])
    with pytest.raises(JudgeError, match="twice"):
        Judge([(clip, 1.0), (clip, 2.0)])
    combined = combine([[float("nan"), 5.5], [0.0, 0.0]], [(1.0, 10.0), (-1.0, 1.0)], [1.0, 1.0])
    assert np.isnan(combined[0]) and combined[1] == pytest.approx(5.5)  # an unscorable image stays unscored


def test_folder_with_some_captions_missing_skips_the_uncaptioned_with_the_reason(laion, clip, tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(photo_like(40, 40, seed=i)).save(folder / f"im{i}.png")
    (folder / "im0.txt").write_text("a red fox in the snow", encoding="utf-8")
    (folder / "im1.json").write_text(json.dumps(["lighthouse", "dawn"]), encoding="utf-8")
    (folder / "metadata.csv").write_text("file_name,text\nim3.png,a bowl of ramen\n", encoding="utf-8")
    judge = Judge([(laion, 1.0), (clip, 1.0)])
    with caplog.at_level(logging.WARNING, logger="aesthete.scoring"):
        report = score_folder(judge, folder, batch_size=2)
    assert [p.name for p, _ in report.scored] == ["im0.png", "im1.png", "im3.png"]
    assert [(p.name, r) for p, r in report.skipped] == [
        ("im2.png", f"no caption (.txt, .json or metadata.csv): {judge.name} needs the prompt of every image")]
    assert "im2.png" in caplog.text
    images = [Image.open(folder / n).convert("RGB") for n in ("im0.png", "im1.png", "im3.png")]
    expected = clip.score_images(images, ["a red fox in the snow", "lighthouse, dawn", "a bowl of ramen"])
    assert len(set(np.round(expected, 4))) == 3
    assert report.columns[CLIPSCORE] == pytest.approx(expected, abs=1e-4)
    # one prompt for every image instead of the captions: nothing skipped
    assert score_folder(judge, folder, prompt="a photo").count == 4
    # the per-scorer columns reach the table, JSON and CSV
    assert report.table().splitlines()[0].split("\t") == ["combined", *report.columns, "file"]
    write_report(report, tmp_path / "r.json", "json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["files"][0]["scores"]) == set(report.columns) and "scorer_means" in data
    write_report(report, tmp_path / "r.csv", "csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == ",".join(["file", "score", *report.columns,
                                                                          "skipped_reason"])
    # a scorer reading no prompt needs no caption
    assert score_folder(laion, folder).count == 4
