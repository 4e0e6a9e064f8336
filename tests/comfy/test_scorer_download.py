"""A scorer downloaded on first use, in a real ComfyUI, as a user behind a Hugging Face mirror gets it: the server
runs online with HF_ENDPOINT set to a local mirror of the hub's file API (tests/harness/hub_mirror.py) serving the
tiny CLIPScore ViT-L/14 under its publisher's repository name. ModelScope is tried first and fails at once: its own
endpoint setting (MODELSCOPE_ENDPOINT) points at a local port nothing listens on, so the probe is refused in
milliseconds and the download goes on from Hugging Face. The Scorer Loader shows the bytes arriving on its progress
bar, the files land at DiffSynth's place under models/QualityMetric with no staging folder left, the scores come
out, a second load fetches nothing, and a file the mirror serves cut short is named in the node's error."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import requests
from devkit.client import ComfyClient, ExecutionError
from devkit.comfy_server import free_port
from devkit.graph import new_graph
from devkit.scorer_models import tiny_clip_scorers_root
from harness.hub_mirror import running_hub_mirror
from harness.servers import running_test_server

from aesthete.scoring.scorers.catalog import CLIP_H_PROCESSOR, QUALITY_METRIC, SPECS

ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
CLIPSCORE = "clipscore-vit-l-14"
PART = SPECS[CLIPSCORE].parts[0]
PICK = SPECS["pickscore-v1"].parts[0]


@pytest.fixture(scope="module")
def mirror():
    tiny = tiny_clip_scorers_root() / QUALITY_METRIC
    repos = {PART.huggingface: tiny / PART.folder, PICK.huggingface: tiny / PICK.folder,
             CLIP_H_PROCESSOR.huggingface: tiny / CLIP_H_PROCESSOR.folder}
    # 256 KB pieces 40 ms apart: the 8 MB of files take about a second and a half, several progress steps
    with running_hub_mirror(repos, chunk=256 * 1024, pause_s=0.04,
                            truncated={f"{PICK.huggingface}/model.safetensors"}) as m:
        yield m


@pytest.fixture(scope="module")
def modelscope() -> str:
    """ModelScope's endpoint in the server: a local port bound and released, so nothing listens there."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def online_server(mirror, modelscope, tmp_path_factory):
    """A ComfyUI of its own (the suite's server is offline): online, Hugging Face at the mirror, ModelScope at a
    closed local port, a fresh hub cache."""
    env = {"HF_ENDPOINT": mirror.url, "HF_HOME": str(tmp_path_factory.mktemp("hf-home")),
           "MODELSCOPE_ENDPOINT": modelscope, "MODELSCOPE_DOMAIN": None,
           "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "AESTHETE_OFFLINE": None}

    def fail(message: str) -> None:
        pytest.fail(message, pytrace=False)

    with running_test_server("aesthete-comfy-download-", ARTIFACTS / "comfyui-download.log", env=env,
                             on_start_error=fail) as server:
        yield server


def scoring_graph(scorer: str, dtype: str = "fp32"):
    g = new_graph()
    loader = g.node("AestheteScorerLoader", scorer=scorer, device="cpu", dtype=dtype)
    images = g.node("EmptyImage", width=64, height=64, batch_size=2, color=0x3366CC)
    score = g.node("AestheteScore", predictor=loader.out(0), images=images.out(0), batch_size=2,
                   prompt="a blue square")
    mean = g.node("PreviewAny", source=score.out(1))
    return g, loader, mean


def test_a_scorer_downloads_on_first_use_from_a_mirror_with_progress(online_server, mirror, modelscope):
    comfy = ComfyClient(online_server.url)
    g, loader, mean = scoring_graph(CLIPSCORE)
    result = comfy.run(g.finalize())

    # the files, byte for byte, at DiffSynth's place; nothing half-done beside them
    source = tiny_clip_scorers_root() / QUALITY_METRIC / PART.folder
    qm = online_server.models_dir / QUALITY_METRIC
    assert sorted(p.name for p in qm.iterdir()) == [PART.folder]
    assert sorted(p.name for p in (qm / PART.folder).iterdir()) == sorted(PART.files)
    for name in PART.files:
        assert (qm / PART.folder / name).read_bytes() == (source / name).read_bytes(), name

    # ModelScope first, refused at its configured endpoint at once; then every file from the mirror
    log = online_server.log_text()
    assert f"ModelScope failed: ModelScope is not reachable ({modelscope} does not answer)" in log
    assert sorted(p for method, p in mirror.served if method == "GET") == sorted(
        f"{PART.huggingface}/{name}" for name in PART.files)

    # the loader's progress bar counts the bytes: rising in steps to the files' total
    total = sum((source / name).stat().st_size for name in PART.files)
    steps = result.progress_of(loader.id)
    assert steps and {m for _, m in steps} == {total}, steps
    values = [v for v, _ in steps]
    assert values == sorted(values) and values[0] == 0 and values[-1] == total
    assert len(set(values)) >= 3, steps

    assert math.isfinite(float(result.node_output(mean.id)["text"][0]))

    # present now: loaded again (another precision, so the loader runs again) without asking the mirror
    asked = len(mirror.served)
    g, loader, mean = scoring_graph(CLIPSCORE, dtype="auto")
    again = comfy.run(g.finalize())
    assert len(mirror.served) == asked and not again.progress_of(loader.id)
    assert math.isfinite(float(again.node_output(mean.id)["text"][0]))


def test_a_file_the_mirror_cuts_short_is_named_in_the_nodes_error(online_server):
    comfy = ComfyClient(online_server.url)
    g, _, _ = scoring_graph("pickscore-v1")
    with pytest.raises(ExecutionError) as e:
        comfy.run(g.finalize())
    message = str(e.value)
    qm = online_server.models_dir / QUALITY_METRIC
    assert f"model.safetensors of {PICK.huggingface}: Consistency check failed" in message
    assert re.search(rf"{PICK.folder}/model\.safetensors.*not found under {re.escape(str(qm))}", message)
    assert not (qm / PICK.folder).exists()
    assert not [p.name for p in qm.iterdir() if p.name.startswith(".")]  # no staging or partial folder


def test_cancel_stops_a_download_midway_and_leaves_nothing(online_server, mirror, tmp_path):
    """The user presses Cancel while the weights arrive: the download stops inside that file (huggingface_hub's
    progress hook asks at every 10 MB piece it writes), the run ends as interrupted, and nothing is left in
    models/QualityMetric. The mirror serves PickScore's weights as a 48 MB file here (the size of a real one's first
    pieces; the download never gets to load it)."""
    comfy = ComfyClient(online_server.url)
    g, loader, _ = scoring_graph("pickscore-v1")
    big = tmp_path / "PickScore_v1"
    big.mkdir()
    shutil.copy(tiny_clip_scorers_root() / QUALITY_METRIC / PICK.folder / "config.json", big)
    with open(big / "model.safetensors", "wb") as f:
        f.truncate(SIZE := 48 << 20)
    begun = (big / "config.json").stat().st_size  # the weights come second
    asked = []

    def cancel_in_the_weights(event: dict) -> None:
        data = event.get("data", {})
        if (event["type"] == "progress" and str(data.get("node")) == loader.id and data["value"] > begun
                and not asked):
            requests.post(comfy.url + "/interrupt", timeout=30).raise_for_status()
            asked.append(data["value"])

    kept = mirror.repos[PICK.huggingface], mirror.chunk, mirror.pause_s
    mirror.repos[PICK.huggingface], mirror.chunk, mirror.pause_s = big, 1 << 20, 0.05  # 48 MB in about 2.5 s
    try:
        result = comfy.run(g.finalize(), timeout=120, on_event=cancel_in_the_weights, expect_interrupted=True)
    finally:
        mirror.repos[PICK.huggingface], mirror.chunk, mirror.pause_s = kept
    assert asked and result.events[-1]["type"] == "execution_interrupted", result.events[-1]
    piece = 10 << 20  # huggingface_hub's: its hook runs once per piece
    assert 0 < mirror.sent[f"{PICK.huggingface}/model.safetensors"] <= SIZE - piece, mirror.sent  # a piece never sent
    qm = online_server.models_dir / QUALITY_METRIC
    assert not (qm / PICK.folder).exists()
    assert not [p.name for p in qm.iterdir() if p.name.startswith(".")]  # no staging or partial folder
