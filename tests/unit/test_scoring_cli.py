"""``aesthete score``: per-file scores, the mean, report files, and exit codes that a script can gate on."""

from __future__ import annotations

import json
import logging

import pytest
from devkit.factories import aesthetic_predictor
from devkit.scoring_files import write_mixed_folder
from harness.scoring_cli import run_score


@pytest.fixture()
def data(tmp_path):
    write_mixed_folder(tmp_path / "data")
    return tmp_path / "data"


def test_scores_a_folder_and_writes_json(data, tmp_path, capsys):
    model = aesthetic_predictor("tiny")
    assert run_score(data, "--model", model, "--batch-size", 3, "--json", tmp_path / "out.json") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    per_file = [ln.split("\t") for ln in lines[:-1]]
    assert [name for _, name in per_file] == sorted(name for _, name in per_file) and len(per_file) == 8
    mean = sum(float(s) for s, _ in per_file) / 8
    assert lines[-1].startswith("mean\t") and float(lines[-1].split("\t")[1]) == pytest.approx(mean, abs=1e-3)
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["count"] == 8 and {s["file"] for s in report["skipped"]} >= {"x_empty.png", "x_bomb.png"}
    assert report["mean"] == pytest.approx(mean, abs=1e-3)


def test_threshold_sets_the_exit_status(data, capsys):
    model = aesthetic_predictor("tiny")
    assert run_score(data, "--model", model) == 0
    mean = float(capsys.readouterr().out.strip().splitlines()[-1].split("\t")[1])
    assert run_score(data, "--model", model, "--threshold", mean - 1) == 0
    assert run_score(data, "--model", model, "--threshold", mean + 1) == 1


def test_nothing_scorable_is_an_error(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.ERROR):
        assert run_score(tmp_path / "empty", "--model", aesthetic_predictor("tiny")) == 2
    assert "no image could be scored" in caplog.text
    assert run_score(tmp_path / "missing.png", "--model", aesthetic_predictor("tiny")) == 2


def test_missing_predictor_offline_fails_fast_naming_the_files(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AESTHETE_OFFLINE", "1")
    (tmp_path / "a.png").write_bytes(b"")
    with caplog.at_level(logging.ERROR):
        assert run_score(tmp_path / "a.png", "--models-dir", tmp_path / "models") == 2
    assert "preprocessor_config.json" in caplog.text and str(tmp_path / "models") in caplog.text
