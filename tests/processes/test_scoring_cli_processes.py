"""``aesthete score`` as a user runs it, in processes of its own: the installed entry point in a fresh Python (torch and
transformers imported again, tens of seconds), and ``--compile`` (torch.compile: the inductor's compiler workers and a
C++ compiler) with the same scores as without. The in-process CLI tests are tests/unit/test_scoring_cli.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from devkit.factories import aesthetic_predictor
from devkit.scoring_files import write_mixed_folder
from harness.scoring_cli import run_score


@pytest.fixture()
def data(tmp_path):
    write_mixed_folder(tmp_path / "data")
    return tmp_path / "data"


def test_installed_command_runs(data):
    """The ``aesthete`` entry point, as a user runs it (also checks the sub-command is registered)."""
    exe = [sys.executable, "-c", "import sys; from aesthete.cli import main; sys.exit(main())"]
    done = subprocess.run([*exe, "score", str(data / "a_rgb.png"), "--model", str(aesthetic_predictor("tiny"))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith("a_rgb.png") and done.stdout.splitlines()[-1].startswith("mean")


def test_compile_flag_gives_the_same_scores(data, capsys):
    model = aesthetic_predictor("tiny")
    assert run_score(data, "--model", model, "--batch-size", 3) == 0
    plain = capsys.readouterr().out.strip().splitlines()
    assert run_score(data, "--model", model, "--batch-size", 3, "--compile") == 0
    compiled = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[-1] for ln in compiled] == [ln.split("\t")[-1] for ln in plain]
    for a, b in zip(plain, compiled):
        assert float(b.split("\t")[1 if b.startswith("mean") else 0]) == pytest.approx(
            float(a.split("\t")[1 if a.startswith("mean") else 0]), abs=1e-3)
