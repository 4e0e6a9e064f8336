"""Ranking scored images, and keeping a score with its image (file name, PNG metadata, drawn preview)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from aesthete.scoring.annotate import draw_score, png_info, read_score, save_png, score_filename
from aesthete.scoring.ranking import rank_by_score, summarize_scores

NAN = math.nan


def test_rank_sorts_best_first_and_keeps_ties_in_input_order():
    r = rank_by_score([5.0, 7.5, 6.0, 7.5, 4.0])
    assert r.kept == [1, 3, 2, 0, 4] and r.rejected == []


def test_top_k_and_min_score_split_kept_and_rejected():
    scores = [5.0, 7.5, 6.0, NAN, 6.5]
    r = rank_by_score(scores, top_k=2, min_score=6.0)
    assert r.kept == [1, 4]
    assert r.rejected == [2, 0, 3]  # best first, the unscorable last
    assert rank_by_score(scores, min_score=6.0).kept == [1, 4, 2]


def test_nothing_passing_gives_an_empty_kept_list_and_all_rejected():
    r = rank_by_score([5.0, NAN, 4.0], min_score=9.0)
    assert r.kept == [] and r.rejected == [0, 2, 1]
    assert r.summary([5.0, NAN, 4.0]).startswith("kept 0 of 3")
    assert rank_by_score([]).kept == []
    with pytest.raises(ValueError, match="top_k"):
        rank_by_score([1.0], top_k=-1)


def test_summary_names_every_score_and_the_unscorable():
    text = summarize_scores([6.0, NAN, 4.0], "tiny")
    assert text.splitlines()[0] == "tiny: 2 image(s), mean 5.000, best 6.000, worst 4.000"
    assert "#1: not scored" in text
    assert summarize_scores([NAN]).startswith("no image could be scored")


def test_score_survives_in_file_name_and_png_metadata(tmp_path):
    name = score_filename("run", 7, 6.4271)
    assert name == "run_00007_6.43_.png" and score_filename("run", 1, NAN) == "run_00001_nan_.png"
    image = Image.fromarray(np.full((16, 24, 3), 90, np.uint8))
    save_png(image, tmp_path / name, png_info(6.4271, "tiny", {"prompt": "{}"}))
    assert read_score(tmp_path / name) == pytest.approx(6.4271, abs=1e-12)
    with Image.open(tmp_path / name) as im:
        assert im.text["aesthetic_model"] == "tiny" and im.text["prompt"] == "{}"
        assert np.array_equal(np.asarray(im), np.asarray(image))  # the pixels are untouched
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left
    save_png(image, tmp_path / "plain.png")
    assert read_score(tmp_path / "plain.png") is None


def test_drawn_score_changes_a_copy_only():
    image = Image.fromarray(np.full((64, 96, 3), 200, np.uint8))
    drawn = draw_score(image, 6.5)
    assert drawn.size == image.size
    diff = np.abs(np.asarray(drawn).astype(int) - 200).sum(axis=2) > 0
    assert diff[:16, :48].any() and not diff[40:, :].any()  # the label sits at the top-left corner
    assert np.asarray(image).min() == 200
