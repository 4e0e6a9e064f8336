"""The Ray engine on a local two-node Ray cluster (one CPU each) started by the tests, with the tiny predictor: the
same scores and skips as the local engine, and nothing lost or doubled when a scoring actor is killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from devkit.factories import aesthetic_predictor
from devkit.scoring_files import photo_like, write_mixed_folder
from PIL import Image

from aesthete.cli import main
from aesthete.scoring.filter import LocalEngine, filter_folder, score_with_store
from aesthete.scoring.store import ResultsStore, source_files
from aesthete.scoring.predictor import load_predictor

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray[data] (pip install 'comfyui-aesthete[ray]')")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, logging_level="WARNING")
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray") / "src"
    write_mixed_folder(folder)
    for i in range(12):  # enough for several batches
        Image.fromarray(photo_like(40 + 3 * i, 36 + 2 * i, 100 + i)).save(folder / f"n_{i:02}.png")
    return folder


def ray_engine(batch_size: int = 4, **kwargs):
    from aesthete.scoring.ray_engine import RayEngine, RayOptions

    return RayEngine(aesthetic_predictor("tiny"), RayOptions(batch_size=batch_size, device="cpu",
                                                            progress_bars=False, **kwargs))


def outcomes(report) -> dict[str, tuple]:
    return {f.name: (f.score, f.kept, f.reason) for f in report.files}


def test_ray_gives_the_local_scores_skips_and_files(cluster, src, tmp_path):
    local = LocalEngine(load_predictor(aesthetic_predictor("tiny"), "cpu"), batch_size=4)
    expected = filter_folder(src, tmp_path / "local", local, min_score=None, top_k=10)
    with ray_engine() as engine:
        assert engine.plan.actors == 1 and engine.model == local.model
        got = filter_folder(src, tmp_path / "ray", engine, min_score=None, top_k=10)
        exp, out = outcomes(expected), outcomes(got)
        assert out.keys() == exp.keys() and len(out) == 25
        for name, (score, kept, reason) in exp.items():
            if score is None:  # skipped, for the same reason
                assert out[name] == (None, False, reason), name
            else:
                assert out[name][0] == pytest.approx(score, abs=1e-6) and out[name][1:] == (kept, reason), name
        assert got.mean_before == pytest.approx(expected.mean_before, abs=1e-6)
        assert got.mean_after == pytest.approx(expected.mean_after, abs=1e-6)
        # the same files in DST, and the results as Parquet shards
        tree = {p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*")
                if ".aesthete" not in p.parts}
        assert tree == {p.relative_to(tmp_path / "ray").as_posix() for p in (tmp_path / "ray").rglob("*")
                        if ".aesthete" not in p.parts}
        shards = list((tmp_path / "ray" / ".aesthete" / "parquet").glob("*.parquet"))
        assert len(shards) >= 2
        # SRC named by a URI (read through pyarrow's filesystem, as s3:// or gs:// would be): the same outcome
        by_uri = filter_folder(f"file://{src}", tmp_path / "uri", engine, min_score=None, top_k=10)
        assert outcomes(by_uri) == out
        for p in (tmp_path / "local").rglob("*"):
            if p.is_file() and ".aesthete" not in p.parts:
                assert (tmp_path / "uri" / p.relative_to(tmp_path / "local")).read_bytes() == p.read_bytes()
        assert not list((tmp_path / "uri").glob(".aesthete-stage-*"))
        # a re-run finds everything in the shards and starts no Ray job
        class NoJob:
            model = engine.model
            calls: list = []

            def __call__(self, *args):
                self.calls.append(args)
                return []

        no_job = NoJob()
        score_with_store(source_files([src], root=src), no_job, ResultsStore(tmp_path / "ray" / ".aesthete"))
        assert not no_job.calls


def test_score_command_on_ray_prints_the_local_numbers(cluster, src, capsys):
    model = str(aesthetic_predictor("tiny"))
    assert main(["score", str(src), "--model", model, "--batch-size", "5", "--no-progress"]) == 0
    local = capsys.readouterr().out.splitlines()
    assert main(["score", str(src), "--model", model, "--batch-size", "5", "--no-progress", "--engine", "ray",
                 "--device", "cpu"]) == 0
    on_ray = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[-1] for ln in on_ray[:-1]] == [ln.split("\t")[-1] for ln in local[:-1]]
    for a, b in zip(local[:-1], on_ray[:-1]):
        assert float(b.split("\t")[0]) == pytest.approx(float(a.split("\t")[0]), abs=1e-4)  # printed to 4 places
    assert on_ray[-1] == local[-1]
    # the same folder named by a URI: listed and read through pyarrow's filesystem, as s3:// or gs:// would be
    assert main(["score", f"file://{src}", "--model", model, "--batch-size", "5", "--no-progress", "--engine", "ray",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == on_ray


def scoring_actor_pids() -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::") and "PredictorActor" in cmd:
            pids.append(proc.pid)
    return pids


def test_a_killed_actor_loses_and_doubles_nothing(cluster, src, tmp_path):
    many = tmp_path / "many"
    shutil.copytree(src, many)
    killed = []

    def kill_one_actor(done: int, total: int) -> None:
        if not killed and done < total:  # mid-run: some batches scored, others not yet
            pids = scoring_actor_pids()
            assert pids, "no scoring actor process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append((pids[0], done, total))

    store = ResultsStore(tmp_path / "results")
    files = source_files([many], root=many)
    with ray_engine(batch_size=2) as engine:
        records = engine(files, store, kill_one_actor)
    assert killed, "the run ended before an actor could be killed"
    import pyarrow.parquet as pq

    rows = [r for shard in sorted(store.parquet_dir.glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]
    counts = Counter(r["name"] for r in rows)
    assert set(counts) == {f.name for f in files}, "files missing from the results"
    assert set(counts.values()) == {1}, f"files scored twice: {[n for n, c in counts.items() if c > 1]}"
    assert Counter(r.name for r in records) == counts
    local = {r.name: r for r in LocalEngine(load_predictor(aesthetic_predictor("tiny"), "cpu"), 2)(files)}
    for r in records:
        if local[r.name].score is None:
            assert r.score is None and r.reason == local[r.name].reason
        else:
            assert np.isclose(r.score, local[r.name].score, rtol=0, atol=1e-6), r.name


def test_ray_scores_a_prompt_aware_judge_as_the_local_engine_does(cluster, tmp_path, capsys):
    """The catalog's CLIPScore (tiny weights) beside the LAION head, captions as prompts: the same combined and
    per-scorer scores and the same skip (an uncaptioned image) on Ray as locally, for a folder and for its URI."""
    import json

    from devkit.scorer_models import tiny_clip_scorers_root

    folder = tmp_path / "captioned"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(photo_like(40 + 4 * i, 44, seed=30 + i)).save(folder / f"c{i}.png")
        if i in (0, 1, 5):
            (folder / f"c{i}.txt").write_text(f"a photo number {i}, lighthouse", encoding="utf-8")
    (folder / "c3.json").write_text(json.dumps({"tags": ["a photo number 3", "lighthouse"]}), encoding="utf-8")
    (folder / "metadata.csv").write_text("file_name,text\nc4.png,\"a photo number 4, lighthouse\"\n", encoding="utf-8")
    args = ["--scorer", str(aesthetic_predictor("tiny")), "--scorer", "clipscore-vit-l-14=2", "--models-dir",
            str(tiny_clip_scorers_root() / "aesthetic"), "--device", "cpu", "--batch-size", "4", "--no-progress"]
    reports = {}
    # the folder as a path for both engines, then as a URI (read through pyarrow, as s3:// would be) for Ray: the
    # captions (.txt, .json, metadata.csv) are the prompts either way
    for name, engine, path in (("local", "local", str(folder)), ("ray", "ray", str(folder)),
                               ("ray-uri", "ray", f"file://{folder}")):
        out = tmp_path / f"{name}.json"
        assert main(["score", path, *args, "--engine", engine, "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    local, remote, by_uri = reports["local"], reports["ray"], reports["ray-uri"]
    assert [f["file"] for f in by_uri["files"]] == [f["file"] for f in local["files"]]
    for a, b in zip(local["files"], by_uri["files"]):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5) and b["scores"] == pytest.approx(a["scores"], abs=1e-5)
    assert [s["file"] for s in by_uri["skipped"]] == ["c2.png"] and "no caption" in by_uri["skipped"][0]["reason"]
    assert [f["file"] for f in remote["files"]] == [f["file"] for f in local["files"]] == [
        f"c{i}.png" for i in (0, 1, 3, 4, 5)]
    for a, b in zip(local["files"], remote["files"]):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-5) and len(a["scores"]) == 2
    assert remote["skipped"] == local["skipped"] and remote["skipped"][0]["file"] == "c2.png"
    assert "no caption" in remote["skipped"][0]["reason"]
