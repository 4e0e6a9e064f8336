"""Where a download looks for its hub, and what it shows: the probe asks the endpoint each library will download
from (a Hugging Face mirror set by HF_ENDPOINT, ModelScope's MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN), the error
when neither answers names the files, the folder and the endpoints, a mirror's truncated file is named, and the
progress counts bytes (through a local mirror of the hub's file API)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from devkit.scorer_models import tiny_clip_scorers_root
from harness.hub_mirror import go_online, huggingface_at, running_hub_mirror
from harness.modelscope_mirror import modelscope_at

from aesthete.common import downloads
from aesthete.scoring.scorers import QUALITY_METRIC, ScorerUnavailable, ensure_scorer_files
from aesthete.scoring.scorers.catalog import SPECS
from aesthete.scoring.scorers.files import fetch_from_huggingface

CLIPSCORE = "clipscore-vit-l-14"
PART = SPECS[CLIPSCORE].parts[0]


@pytest.fixture()
def listener():
    """A local port that answers (its accepted connections counted), and its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        try:
            while True:
                conn, _ = server.accept()
                accepted.append(conn)
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    server.close()
    for conn in accepted:
        conn.close()


def connections(accepted: list, expected: int) -> int:
    """How many connections the listener accepted, waiting up to a second for ``expected`` (it accepts in a
    thread)."""
    deadline = time.monotonic() + 1.0
    while len(accepted) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(accepted)


def closed_url() -> str:
    """A local port nothing listens on: refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture()
def online(monkeypatch):
    """This test's process online (the suite sets the offline variables)."""
    go_online(monkeypatch)


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture()
def no_proxy(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.mark.parametrize(("url", "target"), [
    ("https://mirror.example.cn", ("mirror.example.cn", 443)),
    ("http://mirror.example.cn", ("mirror.example.cn", 80)),
    ("http://127.0.0.1:8080/", ("127.0.0.1", 8080)),
    ("https://mirror.example.cn:8443/hub", ("mirror.example.cn", 8443)),
    ("mirror.example.cn", ("mirror.example.cn", 443)),
])
def test_the_probe_asks_the_host_and_port_of_the_endpoint(monkeypatch, no_proxy, url, target):
    asked = []

    def connect(address, timeout):
        asked.append(address)
        raise OSError("refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    assert not downloads.endpoint_reachable(url)
    assert asked == [target]


@pytest.mark.parametrize(("proxies", "target"), [
    ({"HTTPS_PROXY": "http://proxy.example.cn:3128"}, ("proxy.example.cn", 3128)),
    ({"ALL_PROXY": "socks5://127.0.0.1:7890"}, ("127.0.0.1", 7890)),
    ({"HTTPS_PROXY": "http://proxy.example.cn:3128", "NO_PROXY": "mirror.example.cn"}, ("mirror.example.cn", 443)),
])
def test_behind_a_proxy_the_probe_asks_the_proxy(monkeypatch, no_proxy, proxies, target):
    """The hub libraries connect through the proxy the environment sets; where direct connections are blocked, a
    probe of the endpoint itself would refuse a hub that downloads fine."""
    for name, value in proxies.items():
        monkeypatch.setenv(name, value)
    asked = []

    def connect(address, timeout):
        asked.append(address)
        raise OSError("refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    assert not downloads.endpoint_reachable("https://mirror.example.cn")
    assert asked == [target]


def test_a_hugging_face_mirror_is_probed_not_the_hub_itself(monkeypatch, online, listener):
    url, accepted = listener
    huggingface_at(monkeypatch, url)
    downloads.require_huggingface()  # the mirror answers: no error, though the hub itself is unreachable here
    assert connections(accepted, 1) == 1
    huggingface_at(monkeypatch, closed_url())
    with pytest.raises(ConnectionError, match=r"Hugging Face is not reachable \(http://127\.0\.0\.1:\d+ does not"):
        downloads.require_huggingface()


@pytest.mark.filterwarnings("ignore:Environment variable MODELSCOPE_DOMAIN is deprecated:FutureWarning")
@pytest.mark.parametrize("variable", ["MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN"])
def test_modelscope_is_probed_where_its_own_setting_points(monkeypatch, online, listener, variable):
    url, accepted = listener
    modelscope_at(monkeypatch, variable, url)
    assert downloads.modelscope_endpoint() == url
    downloads.require_modelscope()
    assert connections(accepted, 1) == 1


def test_unreachable_mirrors_fail_fast_naming_files_folder_and_endpoints(monkeypatch, online, tmp_path):
    hf, ms = closed_url(), closed_url()
    huggingface_at(monkeypatch, hf)
    modelscope_at(monkeypatch, "MODELSCOPE_ENDPOINT", ms)
    with pytest.raises(ScorerUnavailable) as e:
        ensure_scorer_files(CLIPSCORE, tmp_path)
    message = str(e.value)
    for needed in (*PART.paths(), str(tmp_path / QUALITY_METRIC), f"ModelScope is not reachable ({ms}",
                   f"Hugging Face is not reachable ({hf}"):
        assert needed in message
    assert not (tmp_path / QUALITY_METRIC).exists() or not list((tmp_path / QUALITY_METRIC).iterdir())


@pytest.fixture(scope="module")
def served():
    """The tiny CLIPScore ViT-L/14 folder, served as its publisher's repository."""
    folder = tiny_clip_scorers_root() / QUALITY_METRIC / PART.folder
    with running_hub_mirror({PART.huggingface: folder}, chunk=256 * 1024, pause_s=0.05) as mirror:
        yield mirror, folder


def from_mirror(monkeypatch, tmp_path, mirror):
    from huggingface_hub import constants

    huggingface_at(monkeypatch, mirror.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return [("Hugging Face", lambda dest, progress: fetch_from_huggingface(PART, dest, progress))]


def test_a_download_reports_bytes_rising_within_a_file(monkeypatch, online, tmp_path, served):
    """huggingface_hub writes a file in pieces of DOWNLOAD_CHUNK_SIZE (10 MB): here smaller, so that the tiny model's
    6 MB weights arrive in several pieces, as a published model's weights do in 10 MB pieces."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    mirror, folder = served
    seen = []
    ensure_scorer_files(CLIPSCORE, tmp_path, lambda done, total, what: seen.append((done, total)),
                        fetchers=from_mirror(monkeypatch, tmp_path, mirror))
    total = sum((folder / name).stat().st_size for name in PART.files)
    assert {t for _, t in seen} == {total}
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[0] == 0 and done[-1] == total
    before, weights = (folder / "config.json").stat().st_size, (folder / "model.safetensors").stat().st_size
    assert PART.files[:2] == ("config.json", "model.safetensors")  # fetched in this order
    assert len({d for d in done if before < d < before + weights}) >= 2, seen  # within the weights file
    qm = tmp_path / QUALITY_METRIC
    assert [p.name for p in qm.iterdir()] == [PART.folder]  # no staging folder left
    for name in PART.files:
        assert (qm / PART.folder / name).read_bytes() == (folder / name).read_bytes()


def test_a_mirrors_truncated_file_is_named_and_nothing_is_left(monkeypatch, online, tmp_path, served):
    mirror, _ = served
    mirror.truncated.add(f"{PART.huggingface}/model.safetensors")
    mirror.pause_s, pause = 0.0, mirror.pause_s
    try:
        with pytest.raises(ScorerUnavailable) as e:
            ensure_scorer_files(CLIPSCORE, tmp_path, fetchers=from_mirror(monkeypatch, tmp_path, mirror))
    finally:
        mirror.truncated.clear()
        mirror.pause_s = pause
    message = str(e.value)
    assert f"Hugging Face: model.safetensors of {PART.huggingface}: Consistency check failed" in message
    assert str(tmp_path / QUALITY_METRIC) in message and f"{PART.folder}/model.safetensors" in message
    assert list((tmp_path / QUALITY_METRIC).iterdir()) == []


@pytest.mark.parametrize("kind", [Exception, BaseException], ids=["ComfyUI 0.3.75", "newest ComfyUI"])
def test_a_cancel_during_the_download_stops_the_file_midway_and_leaves_nothing(monkeypatch, online, tmp_path, served,
                                                                               kind):
    """The user's cancel comes from the progress bar (an Exception in ComfyUI 0.3.75, a BaseException in the newest),
    here raised in the thread that counts the bytes once the weights file has begun: the download stops inside that
    file (huggingface_hub's progress hook asks at every piece), no further file is fetched, no other source is tried,
    nothing is left."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)  # pieces as a 10 MB piece of a big file
    mirror, folder = served
    mirror.served.clear()
    mirror.pause_s, pause = 0.08, mirror.pause_s  # the weights take about 2 s to arrive
    before, weights = (folder / "config.json").stat().st_size, (folder / "model.safetensors").stat().st_size
    cancel = type("InterruptProcessingException", (kind,), {})
    calls = []

    def progress(done, total, what):
        calls.append(done)
        if done > before:
            raise cancel()

    other = [("ModelScope", lambda dest, p: calls.append("another source"))]
    try:
        with pytest.raises(cancel):
            ensure_scorer_files(CLIPSCORE, tmp_path, progress,
                                fetchers=from_mirror(monkeypatch, tmp_path, mirror) + other)
    finally:
        mirror.pause_s = pause
    assert "another source" not in calls
    assert [p for method, p in mirror.served if method == "GET"] == [
        f"{PART.huggingface}/config.json", f"{PART.huggingface}/model.safetensors"]
    assert 0 < mirror.sent[f"{PART.huggingface}/model.safetensors"] < weights / 2, mirror.sent
    assert list((tmp_path / QUALITY_METRIC).iterdir()) == []


def test_a_file_the_mirror_lacks_is_named_before_anything_is_fetched(monkeypatch, online, tmp_path, served):
    mirror, _ = served
    from_mirror(monkeypatch, tmp_path, mirror)
    mirror.served.clear()
    with pytest.raises(OSError, match=f"^missing.bin of {PART.huggingface}: .*404"):
        downloads.fetch_huggingface_files(PART.huggingface, ["config.json", "missing.bin"], tmp_path / "dest",
                                          lambda done, total, what: None)
    assert [method for method, _ in mirror.served] == ["HEAD"]  # config.json's size; no download began


def predictor_from_mirror(tmp_path, progress):
    from aesthete.scoring import registry

    known = registry.KNOWN_PREDICTORS[registry.DEFAULT_PREDICTOR]
    fetch = [("Hugging Face", lambda dest, p: registry.fetch_from_huggingface(known.huggingface_id, dest, p))]
    return registry.ensure_predictor(known.name, tmp_path / "aesthetic", progress, fetch)


def kolors_from_mirror(tmp_path, progress):
    from aesthete.kolors import download

    return download.ensure_kolors(tmp_path / "kolors", progress=progress,
                                  fetchers=[("Hugging Face", download.fetch_from_huggingface)])


def predictor_source():
    from devkit.factories import aesthetic_predictor

    from aesthete.scoring.registry import DEFAULT_PREDICTOR, KNOWN_PREDICTORS

    return KNOWN_PREDICTORS[DEFAULT_PREDICTOR].huggingface_id, aesthetic_predictor("tiny")


def kolors_source():
    from devkit.kolors_models import tiny_kolors

    from aesthete.kolors.download import KOLORS_REPO

    return KOLORS_REPO, tiny_kolors("kolors", "fp16")


@pytest.mark.parametrize(("source", "download"), [(predictor_source, predictor_from_mirror),
                                                  (kolors_source, kolors_from_mirror)], ids=["predictor", "kolors"])
def test_the_predictor_and_kolors_downloads_take_the_mirror_too(monkeypatch, online, tmp_path, source, download):
    """The LAION predictor's and Kolors' Hugging Face downloads list the repository's files (the hub's tree API)
    and fetch them from the mirror in HF_ENDPOINT, with the progress in bytes."""
    from huggingface_hub import constants

    repo, folder = source()
    seen = []
    with running_hub_mirror({repo: folder}) as mirror:
        huggingface_at(monkeypatch, mirror.url)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        landed = download(tmp_path, lambda done, total, what: seen.append((done, total)))
    fetched = sorted(p for method, p in mirror.served if method == "GET" and "/api/" not in p)
    assert fetched and all(p.startswith(f"{repo}/") for p in fetched)
    names = [p[len(repo) + 1:] for p in fetched]
    for name in names:
        assert (landed / name).read_bytes() == (folder / name).read_bytes(), name
    total = sum((folder / name).stat().st_size for name in names)
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [p.name for p in landed.parent.iterdir()] == [landed.name]  # no partial folder beside it
