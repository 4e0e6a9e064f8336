"""Folder scoring: every bad file gets a logged skip with a reason, every awkward mode is scored upright in RGB."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from devkit.factories import aesthetic_predictor
from devkit.scoring_files import exif_rotated_jpeg, photo_like, write_mixed_folder
from PIL import Image

from aesthete.scoring.folder import NothingScorable, score_folder, write_report
from aesthete.common.images import open_image, to_rgb
from aesthete.scoring.predictor import load_predictor


@pytest.fixture(scope="module")
def tiny():
    return load_predictor(aesthetic_predictor("tiny"), "cpu", "fp32")


def test_mixed_folder_scores_good_files_and_skips_bad_ones_with_reasons(tiny, tmp_path, caplog):
    expected = write_mixed_folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING, logger="aesthete.scoring"):
        report = score_folder(tiny, tmp_path / "data", batch_size=3)
    scored = {p.name for p, _ in report.scored}
    skipped = {p.name: r for p, r in report.skipped}
    assert scored == {n for n, e in expected.items() if e == "scored"}
    for name, reason in expected.items():
        if reason != "scored":
            assert skipped[name].startswith(reason), (name, skipped[name])
            assert name in caplog.text  # logged, not only returned
    assert all(math.isfinite(s) for _, s in report.scored)
    assert report.mean == pytest.approx(np.mean([s for _, s in report.scored]))
    assert {p.name for p, _ in report.notes} == {"h_animated.gif"}
    # each file scores as that single image does on its own
    for path, score in report.scored[:3]:
        assert score == pytest.approx(tiny.score_images([open_image(path).image])[0], rel=1e-5)


def test_report_files_are_written_atomically(tiny, tmp_path):
    write_mixed_folder(tmp_path / "data")
    report = score_folder(tiny, tmp_path / "data")
    write_report(report, tmp_path / "out" / "r.json", "json")
    data = json.loads((tmp_path / "out" / "r.json").read_text())
    assert data["count"] == 8 and len(data["skipped"]) == 5 and data["mean"] == pytest.approx(report.mean)
    write_report(report, tmp_path / "out" / "r.csv", "csv")
    lines = (tmp_path / "out" / "r.csv").read_text().splitlines()
    assert lines[0] == "file,score,skipped_reason" and len(lines) == 1 + 8 + 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r.csv", "r.json"]  # no temp files left


def test_empty_and_missing_folders_are_errors_not_a_mean_of_zero(tiny, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NothingScorable, match="no image could be scored"):
        score_folder(tiny, tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    with pytest.raises(NothingScorable, match="a.png: empty file"):
        score_folder(tiny, tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        score_folder(tiny, tmp_path / "missing")


def test_recursive_finds_sub_folders_and_skips_hidden(tiny, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / ".cache").mkdir()
    for rel in ("top.png", "sub/deep.png", ".cache/hidden.png"):
        Image.fromarray(photo_like(40, 30)).save(tmp_path / "d" / rel)
    assert [p.name for p, _ in score_folder(tiny, tmp_path / "d").scored] == ["top.png"]
    names = [report_name for report_name in score_folder(tiny, tmp_path / "d", recursive=True).table().split("\n")]
    assert [n.split("\t")[1] for n in names] == ["sub/deep.png", "top.png"]


def test_exif_orientation_is_applied(tmp_path):
    upright = exif_rotated_jpeg(tmp_path / "r.jpg")
    opened = open_image(tmp_path / "r.jpg").image
    assert opened.size == upright.size == (48, 80)
    assert np.array_equal(np.asarray(opened), np.asarray(upright))


def test_modes_convert_to_meaningful_rgb():
    sixteen = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))
    assert sixteen.mode.startswith("I")
    assert np.asarray(to_rgb(sixteen))[0, 0].tolist() == [127, 127, 127]  # scaled, not clipped to white
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(transparent))[0, 0].tolist() == [255, 255, 255]  # laid over white
    assert np.asarray(to_rgb(transparent, background=None))[0, 0].tolist() == [0, 0, 0]  # as convert("RGB")
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"


def test_bomb_limit_is_checked_before_decoding(tmp_path):
    Image.fromarray(photo_like(100, 100)).save(tmp_path / "big.png")
    assert open_image(tmp_path / "big.png", max_pixels=5000).reason.startswith("too many pixels")
    assert not open_image(tmp_path / "big.png").skipped
