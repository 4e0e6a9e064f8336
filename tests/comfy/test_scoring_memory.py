"""Who owns a loaded aesthetic predictor in the server: ComfyUI. The loader's output (a ModelPatcher around the
predictor) is the only reference, so "Free model and node cache" (POST /free) releases the weights, and scoring
with two predictors in turn does not pile models up in memory."""

from __future__ import annotations

import time

import psutil
import pytest

from devkit.factories import aesthetic_predictor
from devkit.graph import new_graph


@pytest.fixture(scope="module")
def medium_predictors(comfy_server) -> tuple[list[str], int]:
    """Two different predictors of about 150 MB each (names under models/aesthetic) and the size of one."""
    folders = [aesthetic_predictor("medium", seed=s) for s in (1, 2)]
    size = (folders[0] / "model.safetensors").stat().st_size
    return [comfy_server.link_model("aesthetic", f, f"aesthete-test-medium-{i}") for i, f in enumerate(folders)], size


def score_graph(predictor: str, color: int) -> dict:
    g = new_graph()
    loader = g.node("AesthetePredictorLoader", model=predictor, device="cpu", dtype="fp32")
    image = g.node("EmptyImage", width=64, height=64, batch_size=2, color=color)
    g.node("AestheteScore", predictor=loader.out(0), images=image.out(0), batch_size=2)
    return g.finalize()


def server_rss(comfy_server) -> int:
    return psutil.Process(comfy_server.process.pid).memory_info().rss


def settled_rss(comfy_server, below: int | None = None, timeout: float = 15.0) -> int:
    """The server's RSS once it stops falling (or drops under ``below``): freeing runs on the prompt worker."""
    deadline = time.monotonic() + timeout
    last = server_rss(comfy_server)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = server_rss(comfy_server)
        if (below is not None and now < below) or (below is None and abs(now - last) < (4 << 20)):
            return now
        last = now
    return server_rss(comfy_server)


def test_free_releases_the_predictors_memory(comfy, comfy_server, medium_predictors):
    (name, _), size = medium_predictors
    comfy.run(score_graph(name, 0))
    loaded = settled_rss(comfy_server)
    comfy.free()
    freed = settled_rss(comfy_server, below=loaded - size)
    assert loaded - freed > size // 2, (f"POST /free released {(loaded - freed) >> 20} MiB of a {size >> 20} MiB "
                                        f"predictor (RSS {loaded >> 20} -> {freed >> 20} MiB)")


def test_twenty_queued_prompts_with_two_predictors_keep_memory_flat(comfy, comfy_server, medium_predictors):
    names, size = medium_predictors
    for i in range(4):  # warm up: both predictors loaded, scored and replaced once
        comfy.run(score_graph(names[i % 2], i))
    before = settled_rss(comfy_server)
    for i in range(4, 20):
        comfy.queue(score_graph(names[i % 2], i * 10))
    comfy.wait_idle()
    after = settled_rss(comfy_server)
    assert after - before < size // 2, (f"16 more prompts grew the server by {(after - before) >> 20} MiB "
                                        f"(one predictor is {size >> 20} MiB)")
    comfy.free()


def test_free_releases_a_judges_scorers(comfy, comfy_server, medium_predictors):
    """A judge holds no weights of its own: its scorers' loaders' outputs (their ModelPatchers) do, so POST /free
    releases both scorers' weights after a judge has scored with them."""
    names, size = medium_predictors
    g = new_graph()
    loaders = [g.node("AesthetePredictorLoader", model=n, device="cpu", dtype="fp32") for n in names]
    judge = g.node("AestheteJudge", scorer_1=loaders[0].out(0), weight_1=1.0, scorer_2=loaders[1].out(0),
                   weight_2=1.0)
    image = g.node("EmptyImage", width=64, height=64, batch_size=2, color=7)
    score = g.node("AestheteScore", predictor=judge.out(0), images=image.out(0), batch_size=2)
    result = comfy.run(g.finalize())
    assert f"combined\t{names[0]}\t{names[1]}" in result.node_output(score.id)["text"][0]
    loaded = settled_rss(comfy_server)
    comfy.free()
    freed = settled_rss(comfy_server, below=loaded - 2 * size)
    assert loaded - freed > size, (f"POST /free released {(loaded - freed) >> 20} MiB of two {size >> 20} MiB "
                                   f"scorers (RSS {loaded >> 20} -> {freed >> 20} MiB)")
