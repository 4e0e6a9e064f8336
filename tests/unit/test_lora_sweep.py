"""Judge LoRA Files' domain side: which files a set names, in which order, at which strengths, and what the table,
the best row, the grid and the graph say."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from aesthete.lora.sweep import (SweepError, SweepFile, SweepResult, SweepRow, name_numbers, parse_strengths,
                                 select_files)

DIFFSYNTH = [f"run/checkpoints/epoch={e}-step={(e + 1) * 100}.ckpt" for e in (0, 1, 2, 3, 4, 10)]


@pytest.mark.parametrize("name, numbers", [
    ("run/checkpoints/epoch=4-step=500.ckpt", (4, 500)),
    ("ganyu-000004.safetensors", (4, None)),
    ("ganyu_epoch0004.safetensors", (4, None)),
    ("aesthete/ganyu_epoch0012_00001.safetensors", (12, None)),  # Train LoRA's own epoch saves
    ("ganyu_00004_.safetensors", (4, None)),  # ComfyUI's SaveLoRA
    ("ganyu-step00300.safetensors", (None, 300)),
    ("ganyu-final.safetensors", (None, None)),
])
def test_epoch_and_step_come_from_the_names_of_each_scheme(name, numbers):
    assert name_numbers(name) == numbers


def test_a_diffsynth_checkpoints_folder_is_taken_in_epoch_order_not_alphabetical():
    listed = sorted(DIFFSYNTH) + ["other/epoch=0-step=1.ckpt", "run/checkpoints/notes.txt"]
    chosen = select_files(listed, "run/checkpoints")
    assert [f.epoch for f in chosen.files] == [0, 1, 2, 3, 4, 10]  # alphabetical would put 10 after 1
    assert chosen.order_note == "in epoch/step order, as the file names say"


def test_a_pattern_matches_listed_names_and_bare_file_names():
    listed = ["kohya/ganyu-000002.safetensors", "kohya/ganyu-000001.safetensors", "kohya/other-000001.safetensors"]
    assert [f.name for f in select_files(listed, "ganyu-*.safetensors").files] == \
        ["kohya/ganyu-000001.safetensors", "kohya/ganyu-000002.safetensors"]
    assert len(select_files(listed, "kohya/*").files) == 3


def test_names_without_numbers_come_last_alphabetically_and_the_note_says_so():
    listed = ["set/b-final.safetensors", "set/x-000002.safetensors", "set/a-best.safetensors",
              "set/x-000001.safetensors"]
    chosen = select_files(listed, "set")
    assert [f.name for f in chosen.files] == ["set/x-000001.safetensors", "set/x-000002.safetensors",
                                              "set/a-best.safetensors", "set/b-final.safetensors"]
    assert "2 file(s) whose names hold no number, alphabetically" in chosen.order_note
    only_words = select_files(["s/b.safetensors", "s/a.safetensors"], "s")
    assert [f.name for f in only_words.files] == ["s/a.safetensors", "s/b.safetensors"]
    assert only_words.order_note.startswith("alphabetical")


def test_an_empty_set_is_a_clear_error_naming_the_folders_that_hold_loras():
    with pytest.raises(SweepError, match=r"no LoRA file .* in the folder models/loras/nothing/.*run/checkpoints"):
        select_files(DIFFSYNTH, "nothing")
    with pytest.raises(SweepError, match="empty"):
        select_files(DIFFSYNTH, "  ")


def test_strengths_are_parsed_in_order_without_repeats_and_bad_ones_are_named():
    assert parse_strengths("0.6, 0.8,1.0 0.8") == (0.6, 0.8, 1.0)
    assert parse_strengths("") == (1.0,)
    assert parse_strengths("0.5，1;1.2") == (0.5, 1.0, 1.2)  # a Chinese comma too
    with pytest.raises(SweepError, match="'abc' is not a number"):
        parse_strengths("0.5, abc")
    with pytest.raises(SweepError, match="not a finite"):
        parse_strengths("nan")


def image(colour) -> Image.Image:
    return Image.new("RGB", (32, 32), colour)


def result() -> SweepResult:
    files = [SweepFile(f"run/epoch={e}-step={e * 10}.ckpt", e, e * 10) for e in (1, 2, 3)]
    rows = [SweepRow(None, 1.0, [image("grey")] * 2, [5.0, 5.2], {"aesthetic": [5.0, 5.2]})]
    for f, scores in zip(files, ([5.5, 5.7], [6.4, 6.0], [6.1, 6.3])):
        rows.append(SweepRow(f, 1.0, [image("red")] * 2, scores, {"aesthetic": scores}))
    rows.append(SweepRow(SweepFile("run/broken.safetensors"), 1.0, error="ValueError: nothing placed"))
    return SweepResult(rows, "in epoch/step order")


def test_the_best_row_has_the_highest_mean_and_an_earlier_row_wins_a_tie():
    r = result()
    assert r.best().file.epoch == 2  # mean 6.2 against epoch 3's 6.2: the earlier epoch
    assert math.isclose(r.best().mean, 6.2)
    assert [row.file.epoch if row.file else None for row in r.ranked()] == [2, 3, 1, None]


def test_without_a_judge_the_last_file_is_handed_on():
    rows = [SweepRow(SweepFile(f"e{e}.safetensors", e), 1.0, [image("red")]) for e in (1, 2)]
    r = SweepResult(rows)
    assert r.best() is rows[-1]
    assert "no judge" in r.summary()


def test_the_table_has_rank_epoch_strength_mean_spread_and_the_failure_reason():
    lines = result().table().splitlines()
    assert lines[0].split("\t") == ["rank", "file", "epoch/step", "strength", "aesthetic mean", "aesthetic spread",
                                    "score", "note"]
    base, e1, e2, e3, broken = (line.split("\t") for line in lines[1:])
    assert base[:2] == ["4", "(base model)"]
    assert e2[:5] == ["1", "run/epoch=2-step=20.ckpt", "epoch 2, step 20", "1", "6.20"] and e2[5] == "0.200"
    assert e2[-1] == "* best"
    assert broken[0] == "-" and broken[-1] == "failed: ValueError: nothing placed"


def test_grid_has_a_row_per_file_and_the_graph_draws_the_scores():
    r = result()
    grid = r.grid(cell=32)
    assert grid.height >= 5 * 32 and grid.width > 2 * 32
    # the best row's heading is red; the others black
    best_row = 2
    row_h = grid.height // 5
    heading = grid.crop((0, best_row * row_h, 100, best_row * row_h + 20)).getcolors(10000)
    assert any(c[1] == (200, 30, 30) for c in heading)
    graph = r.graph()
    assert graph.size == (720, 400)
    assert len(graph.getcolors(100000)) > 3  # lines and dots, not an empty canvas


def test_with_several_scorers_the_graph_has_a_panel_per_scorer_and_the_combination_first():
    """Scorers live on different scales (LAION 1-10, CLIPScore's cosine 0.1-0.4): one axis would flatten all but
    one of them, so each gets its own panel, the judge's combination (what the best file was chosen by) first."""
    files = [SweepFile(f"e{e}.safetensors", e) for e in (1, 2)]
    rows = [SweepRow(f, 1.0, [image("red")], [5.0 + f.epoch], {"aesthetic": [5.0 + f.epoch], "clipscore": [0.2]})
            for f in files]
    graph = SweepResult(rows).graph(width=300, height=200)
    assert graph.size == (3 * 300, 200)
    panels = [graph.crop((i * 300, 0, (i + 1) * 300, 200)) for i in range(3)]
    assert all(len(p.getcolors(100000)) > 3 for p in panels)  # each panel draws its axes and line
    assert any(c[1] == (200, 30, 30) for c in panels[0].getcolors(100000))  # the best point circled there
