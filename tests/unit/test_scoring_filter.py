"""``aesthete filter`` on the local engine: the images that pass go to DST with their captions, nothing in DST is
overwritten, every file is in the report, and a re-run or an interrupted run does not score a file twice."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from devkit.factories import aesthetic_predictor
from devkit.scoring_files import write_mixed_folder

from aesthete.cli import main
from aesthete.scoring.filter import LocalEngine, filter_folder
from aesthete.scoring.store import ResultsStore
from aesthete.scoring.predictor import load_predictor

# the tiny predictor's scores are far from 1-10; the tests pick thresholds from the scores themselves


@pytest.fixture()
def src(tmp_path) -> Path:
    folder = tmp_path / "src"
    write_mixed_folder(folder)  # has a_rgb.txt and a metadata.csv row for a_rgb.png
    (folder / "a_rgb.json").write_text('{"tags": ["1girl"]}')
    sub = folder / "sub"
    sub.mkdir()
    shutil.copy(folder / "e_cmyk.jpg", sub / "s1.jpg")
    shutil.copy(folder / "b_rgba.png", sub / "s2.png")
    (sub / "s1.txt").write_text("sub caption")
    (sub / "metadata.csv").write_text("file_name,text\ns1.jpg,one\ns2.png,two\n")
    (folder / "metadata.csv").write_text("file_name,text\na_rgb.png,1girl\nsub/s1.jpg,from the top\nc_la.png,la\n")
    return folder


def run_filter(*argv) -> int:
    return main(["filter", *map(str, argv), "--model", str(aesthetic_predictor("tiny")), "--no-progress"])


def scores_of(report: dict) -> dict[str, float]:
    return {f["file"]: f["score"] for f in report["files"] if f["score"] is not None}


class CountingEngine(LocalEngine):
    """The local engine, remembering which files it was asked to score; ``stop_after`` files it raises (a killed
    run)."""

    def __init__(self, *args, stop_after: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []
        self.stop_after = stop_after

    def __call__(self, files, store=None, progress=None):
        self.asked.extend(f.name for f in files)

        def interrupting(done, total):
            if progress is not None:
                progress(done, total)
            if self.stop_after is not None and done >= self.stop_after:
                raise KeyboardInterrupt

        return super().__call__(files, store, interrupting)


def outcomes(report) -> list[tuple]:
    return [(f.name, f.score, f.kept, f.reason) for f in report.files]


def engine(**kwargs) -> CountingEngine:
    return CountingEngine(load_predictor(aesthetic_predictor("tiny"), "cpu"), batch_size=3, **kwargs)


def test_filter_keeps_passing_images_with_their_captions(src, tmp_path, capsys):
    assert run_filter(src, tmp_path / "all", "--min-score", -1e9, "-r", "--json", tmp_path / "all.json") == 0
    every = json.loads((tmp_path / "all.json").read_text())
    scores = scores_of(every)
    assert len(scores) == 10 and every["skipped"] == 5
    cut = sorted(scores.values())[5]  # keeps the best five
    capsys.readouterr()

    dst = tmp_path / "dst"
    assert run_filter(src, dst, "--min-score", cut, "-r", "--json", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    kept = {name for name, s in scores.items() if s >= cut}
    assert {f["file"] for f in report["files"] if f["kept"]} == kept and report["kept"] == 5
    # every file is in the report: a score, or why it was skipped
    assert {f["file"] for f in report["files"]} == {f["file"] for f in every["files"]}
    assert next(f for f in report["files"] if f["file"] == "x_empty.png")["reason"].startswith("empty file")
    assert all(f["reason"].startswith("below --min-score") for f in report["files"]
               if f["score"] is not None and not f["kept"])
    assert report["mean_before"] == pytest.approx(sum(scores.values()) / 10)
    assert report["mean_after"] == pytest.approx(sum(scores[n] for n in kept) / 5)
    placed = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file() and ".aesthete" not in p.parts}
    images = {n for n in placed if not n.endswith((".txt", ".json", ".csv"))}
    assert images == kept
    for name in kept:
        assert (dst / name).read_bytes() == (src / name).read_bytes()
        for suffix in (".txt", ".json"):
            cap = (src / name).with_suffix(suffix)
            assert (dst / name).with_suffix(suffix).exists() == cap.exists()
    # metadata.csv keeps the header and exactly the kept images' rows, in each folder
    for meta in src.rglob("metadata.csv"):
        rel = meta.parent.relative_to(src)
        prefix = "" if rel == Path(".") else rel.as_posix() + "/"
        rows = meta.read_text().splitlines()
        want = [rows[0]] + [r for r in rows[1:] if prefix + r.split(",")[0] in kept]
        out = dst / rel / "metadata.csv"
        assert (out.read_text().splitlines() if out.exists() else [rows[0]]) == want
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("mean before") and "5 kept of 10 scored, 5 skipped" in out[-1]


def test_nothing_in_dst_is_overwritten(src, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "a_rgb.png").write_bytes(b"someone else's image")
    shutil.copy(src / "d_palette.gif", dst / "d_palette.gif")
    (dst / "metadata.csv").write_text("file_name,text\na_rgb.png,my own caption\n")
    report = filter_folder(src, dst, engine(), min_score=-1e9)
    placed = {f.name: f.placed for f in report.files if f.kept}
    assert placed["a_rgb.png"].startswith("differs") and placed["d_palette.gif"] == "already there"
    assert placed["c_la.png"] == "copied"
    assert (dst / "a_rgb.png").read_bytes() == b"someone else's image"
    assert "a_rgb.png" in report.conflicts
    # the row already there stays; the other kept images' rows are added after it
    assert (dst / "metadata.csv").read_text().splitlines() == ["file_name,text", "a_rgb.png,my own caption",
                                                                "c_la.png,la"]
    assert not [p for p in dst.iterdir() if p.name.endswith(".tmp")]


def test_link_mode_links(src, tmp_path):
    report = filter_folder(src, tmp_path / "dst", engine(), min_score=-1e9, mode="link")
    kept = [f.name for f in report.files if f.kept]
    assert kept and all(f.placed == "linked" for f in report.files if f.kept)
    for name in kept:
        assert os.path.samefile(src / name, tmp_path / "dst" / name)


def test_top_k_keeps_the_best(src, tmp_path):
    report = filter_folder(src, tmp_path / "dst", engine(), min_score=None, top_k=3)
    best = sorted((f.score for f in report.files if f.score is not None), reverse=True)[:3]
    assert sorted((f.score for f in report.kept), reverse=True) == best
    assert {f.reason for f in report.files if f.score is not None and not f.kept} == {"not among the --top-k 3 best"}


def test_rerun_scores_nothing_again_and_a_changed_file_again(src, tmp_path):
    first = engine()
    report = filter_folder(src, tmp_path / "dst", first, min_score=-1e9)
    assert len(first.asked) == 13  # 8 images + 5 bad files at the top level
    again = engine()
    assert outcomes(filter_folder(src, tmp_path / "dst", again, min_score=-1e9)) == outcomes(report)
    assert again.asked == []
    os.utime(src / "c_la.png", ns=(1, 1))  # modified: scored again
    changed = engine()
    filter_folder(src, tmp_path / "dst", changed, min_score=-1e9)
    assert changed.asked == ["c_la.png"]


def test_an_interrupted_run_resumes_where_it_stopped(src, tmp_path):
    dst = tmp_path / "dst"
    killed = engine(stop_after=6)
    with pytest.raises(KeyboardInterrupt):
        filter_folder(src, dst, killed, min_score=-1e9)
    stored = ResultsStore(dst / ".aesthete").load()
    assert len(stored) == 6
    resumed = engine()
    report = filter_folder(src, dst, resumed, min_score=-1e9)
    assert len(resumed.asked) == 13 - 6 and not set(resumed.asked) & {r.name for r in stored.values()}
    fresh = filter_folder(src, tmp_path / "fresh", engine(), min_score=-1e9)
    assert outcomes(report) == outcomes(fresh)


def test_a_line_cut_short_is_scored_again(src, tmp_path):
    dst = tmp_path / "dst"
    filter_folder(src, dst, engine(), min_score=-1e9)
    store = dst / ".aesthete" / "scores.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    store.write_text("".join(lines[:-1]) + lines[-1][:20])  # the last write was cut by a crash
    again = engine()
    filter_folder(src, dst, again, min_score=-1e9)
    assert len(again.asked) == 1


def test_nothing_passing_exits_1_and_bad_folders_exit_2(src, tmp_path, caplog):
    assert run_filter(src, tmp_path / "dst", "--min-score", 1e9) == 1
    with caplog.at_level(logging.ERROR):
        assert run_filter(src, src / "inside", "-r") == 2
    assert "DST is inside SRC" in caplog.text
    (tmp_path / "empty").mkdir()
    assert run_filter(tmp_path / "empty", tmp_path / "dst2") == 2


def test_ray_engine_without_ray_says_what_to_install(src, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    with caplog.at_level(logging.ERROR):
        assert run_filter(src, tmp_path / "dst", "--engine", "ray") == 2
        assert main(["score", str(src), "--model", str(aesthetic_predictor("tiny")), "--engine", "ray",
                     "--no-progress"]) == 2
    assert caplog.text.count("pip install 'comfyui-aesthete[ray]'") == 2


def test_score_with_results_folder_scores_each_file_once(src, tmp_path, capsys, caplog):
    argv = ["score", str(src), "--model", str(aesthetic_predictor("tiny")), "--no-progress", "--results",
            str(tmp_path / "results")]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    first = capsys.readouterr().out
    assert "files/s" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert capsys.readouterr().out == first
    assert "13 file(s) already scored" in caplog.text and "files/s" not in caplog.text


@pytest.mark.parametrize(("resources", "options", "expected"), [
    ({"CPU": 64, "GPU": 8}, {}, (8, 1.0, "cuda", "fp16", 0)),  # one actor per GPU, fp16 as the local engine
    ({"CPU": 64, "GPU": 8}, {"device": "cpu"}, (32, 0.0, "cpu", "fp32", 2)),
    ({"CPU": 2}, {}, (1, 0.0, "cpu", "fp32", 2)),  # half the CPUs decode, the actor's threads use the rest
    ({"CPU": 16}, {"actors": 2, "dtype": "bf16"}, (2, 0.0, "cpu", "bf16", 8)),
])
def test_ray_plan_gives_each_actor_a_gpu_where_the_cluster_has_them(resources, options, expected):
    from aesthete.scoring.ray_engine import RayOptions, plan_actors

    plan = plan_actors(resources, RayOptions(**options))
    assert (plan.actors, plan.gpus_per_actor, plan.device, plan.dtype, plan.threads) == expected


def test_ray_plan_refuses_cuda_without_gpus():
    from aesthete.scoring.ray_engine import EngineUnavailable, RayOptions, plan_actors

    with pytest.raises(EngineUnavailable, match="no GPU"):
        plan_actors({"CPU": 4}, RayOptions(device="cuda"))


def test_uris_need_the_ray_engine(src, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["score", f"file://{src}", "--model", str(aesthetic_predictor("tiny")), "--no-progress"]) == 2
        assert run_filter(f"file://{src}", tmp_path / "dst") == 2
    assert caplog.text.count("URIs are read by the Ray engine only (add --engine ray)") == 2
