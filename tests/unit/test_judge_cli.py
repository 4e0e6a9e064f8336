"""``aesthete score`` / ``aesthete filter`` with catalog scorers and judges: --scorer ID[=WEIGHT], --prompt, captions
as prompts (the uncaptioned skipped with the reason), per-scorer columns in stdout and the reports."""

from __future__ import annotations

import csv
import json

import pytest
from devkit.factories import aesthetic_predictor
from devkit.scorer_models import tiny_clip_scorers_root
from devkit.scoring_files import photo_like
from PIL import Image

from aesthete.cli import main
from aesthete.scoring.judge import Judge
from aesthete.scoring.predictor import load_predictor
from aesthete.scoring.scorers import load_scorer

CLIPSCORE = "clipscore-vit-l-14"
CAPTIONS = {"im0.png": "a red fox in the snow", "im1.png": "lighthouse, dawn", "im3.png": "a bowl of ramen"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge_cli") / "data"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(photo_like(40 + 4 * i, 44, seed=20 + i)).save(folder / f"im{i}.png")
    (folder / "im0.txt").write_text(CAPTIONS["im0.png"], encoding="utf-8")
    (folder / "im1.json").write_text(json.dumps(["lighthouse", "dawn"]), encoding="utf-8")
    (folder / "metadata.csv").write_text(f"file_name,text\nim3.png,{CAPTIONS['im3.png']}\n", encoding="utf-8")
    return folder


def judge_args(weight: float = 2.0) -> list[str]:
    return ["--scorer", str(aesthetic_predictor("tiny")), "--scorer", f"{CLIPSCORE}={weight:g}",
            "--models-dir", str(tiny_clip_scorers_root() / "aesthetic"), "--device", "cpu", "--dtype", "fp32",
            "--no-progress"]


def expected_judge(weight: float = 2.0) -> Judge:
    return Judge([(load_predictor(aesthetic_predictor("tiny"), "cpu", "fp32"), 1.0),
                  (load_scorer(CLIPSCORE, tiny_clip_scorers_root(), "cpu", "fp32"), weight)])


def test_score_reads_captions_skips_the_uncaptioned_and_shows_every_scorer(data, tmp_path, capsys):
    assert main(["score", str(data), *judge_args(), "--json", str(tmp_path / "r.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    laion = aesthetic_predictor("tiny").name
    assert lines[0].split("\t") == ["combined", laion, CLIPSCORE, "file"]
    rows = [ln.split("\t") for ln in lines[1:-2]]
    assert [r[-1] for r in rows] == list(CAPTIONS)
    names = list(CAPTIONS)
    images = [Image.open(data / n).convert("RGB") for n in names]
    table = expected_judge().score_table(images, [CAPTIONS[n] for n in names])
    assert [float(r[0]) for r in rows] == pytest.approx(table.combined, abs=1e-3)
    assert [float(r[2]) for r in rows] == pytest.approx(table.columns[CLIPSCORE], abs=1e-4)
    assert lines[-2].startswith("scorer means\t") and lines[-1].startswith("mean\t")
    report = json.loads((tmp_path / "r.json").read_text())
    assert [s["file"] for s in report["skipped"]] == ["im2.png"]
    assert report["skipped"][0]["reason"].startswith("no caption (.txt, .json or metadata.csv)")
    assert set(report["files"][0]["scores"]) == {laion, CLIPSCORE}


def test_prompt_scores_every_image_against_it(data, capsys):
    assert main(["score", str(data), *judge_args(1.0), "--prompt", "a photo of a cat"]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.strip().splitlines()[1:-2]]
    images = [Image.open(data / f"im{i}.png").convert("RGB") for i in range(4)]
    expected = expected_judge(1.0).score_images(images, ["a photo of a cat"] * 4)
    assert [float(r[0]) for r in rows] == pytest.approx(expected, abs=1e-3)


def test_a_prompt_aware_scorer_without_any_caption_or_prompt_is_a_clear_error(tmp_path, caplog):
    folder = tmp_path / "bare"
    folder.mkdir()
    Image.fromarray(photo_like(40, 40, seed=1)).save(folder / "a.png")
    assert main(["score", str(folder), "--scorer", CLIPSCORE, "--models-dir",
                 str(tiny_clip_scorers_root() / "aesthetic"), "--no-progress"]) == 2
    assert "a.png: no caption" in caplog.text and CLIPSCORE in caplog.text
    assert main(["score", str(folder), "--scorer", "no-such-scorer", "--models-dir",
                 str(tiny_clip_scorers_root() / "aesthetic"), "--no-progress"]) == 2
    assert "unknown scorer 'no-such-scorer'" in caplog.text


def test_filter_keeps_by_the_combined_score_with_every_scorer_in_the_report(data, tmp_path, capsys):
    dst = tmp_path / "kept"
    assert main(["filter", str(data), str(dst), "--min-score", "-1000", "--top-k", "2", *judge_args(),
                 "--csv", str(tmp_path / "r.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv", encoding="utf-8")))
    scored = [r for r in rows if r["score"]]
    assert {r["file"] for r in scored} == set(CAPTIONS)
    assert CLIPSCORE in rows[0] and all(r[CLIPSCORE] for r in scored)
    best = sorted(scored, key=lambda r: -float(r["score"]))[:2]
    assert {r["file"] for r in rows if r["kept"] == "1"} == {r["file"] for r in best}
    assert sorted(p.name for p in dst.glob("*.png")) == sorted(r["file"] for r in best)
    # captions travel with their images
    assert all((dst / n).with_suffix(".txt").is_file() or (dst / n).with_suffix(".json").is_file()
               or (dst / "metadata.csv").is_file() for n in (r["file"] for r in best))
