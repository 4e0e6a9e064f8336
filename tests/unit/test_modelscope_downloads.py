"""ModelScope first, Hugging Face second, for real: each of the three downloaders (a scorer's files from DiffSynth's
repository, the LAION predictor, Kolors) runs with its default sources against a local ModelScope hub
(MODELSCOPE_ENDPOINT) and a local Hugging Face mirror (HF_ENDPOINT) serving the devkit's tiny models. The files land
where the loaders look, byte for byte; the progress counts the bytes of the files asked for; nothing is left beside
them; a second call fetches nothing; a file ModelScope serves truncated fails that source naming the file, and the
download falls through to Hugging Face."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.hub_mirror import go_online, huggingface_at, running_hub_mirror
from harness.modelscope_mirror import modelscope_at, running_modelscope_mirror

from aesthete.scoring.scorers import QUALITY_METRIC, ScorerUnavailable, ensure_scorer_files
from aesthete.scoring.scorers.catalog import DIFFSYNTH_REPO, SPECS

CLIPSCORE = "clipscore-vit-l-14"
PART = SPECS[CLIPSCORE].parts[0]


@dataclass(frozen=True)
class Case:
    """One downloader: its repositories and sources, how to run it, where its files land."""

    modelscope_repo: str
    huggingface_repo: str
    modelscope_folder: Path  # what the ModelScope repository holds
    huggingface_folder: Path
    files: tuple[str, ...]  # what the download must fetch, as ModelScope names them
    landed: str  # the folder they land in, under the models root
    weights: str  # the file served truncated


def scorer_case(root: Path) -> Case:
    from devkit.scorer_models import tiny_clip_scorers_root

    repo = tiny_clip_scorers_root() / QUALITY_METRIC  # DiffSynth's layout: a folder per model, other models too
    return Case(DIFFSYNTH_REPO, PART.huggingface, repo, repo / PART.folder, tuple(PART.paths(pick=0)),
                f"{QUALITY_METRIC}/{PART.folder}", f"{PART.folder}/model.safetensors")


def predictor_case(root: Path) -> Case:
    from devkit.factories import aesthetic_predictor

    from aesthete.scoring.registry import DEFAULT_PREDICTOR, KNOWN_PREDICTORS

    known = KNOWN_PREDICTORS[DEFAULT_PREDICTOR]
    repo = root / "predictor-repo"  # as published: a model card and the hub's configuration beside the model
    if not repo.exists():
        shutil.copytree(aesthetic_predictor("tiny"), repo)
        (repo / "README.md").write_text("# aesthetic predictor\n")
        (repo / "configuration.json").write_text('{"framework": "pytorch"}\n')
    return Case(known.modelscope_id, known.huggingface_id, repo, aesthetic_predictor("tiny"),
                ("config.json", "model.safetensors", "preprocessor_config.json"), f"aesthetic/{known.name}",
                "model.safetensors")


def kolors_case(root: Path) -> Case:
    from devkit.kolors_models import tiny_kolors

    from aesthete.kolors.download import KOLORS_REPO, wanted_files

    folder = tiny_kolors("kolors", "fp16")
    files = wanted_files([p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()])
    return Case(KOLORS_REPO, KOLORS_REPO, folder, folder, tuple(files), "kolors/Kolors",
                "unet/diffusion_pytorch_model.fp16.safetensors")


def run_scorer(models: Path, progress) -> Path:
    return ensure_scorer_files(CLIPSCORE, models, progress)


def run_predictor(models: Path, progress) -> Path:
    from aesthete.scoring.registry import DEFAULT_PREDICTOR, ensure_predictor

    return ensure_predictor(DEFAULT_PREDICTOR, models / "aesthetic", progress)


def run_kolors(models: Path, progress) -> Path:
    from aesthete.kolors.download import ensure_kolors

    return ensure_kolors(models / "kolors", progress=progress)


CASES = {"scorer": (scorer_case, run_scorer), "predictor": (predictor_case, run_predictor),
         "kolors": (kolors_case, run_kolors)}


@pytest.fixture(scope="module")
def hubs(tmp_path_factory):
    """Every case, and a ModelScope hub and a Hugging Face mirror serving all of them (a pause between chunks, so
    that a download of a few MB takes several progress steps)."""
    root = tmp_path_factory.mktemp("sources")
    cases = {name: make(root) for name, (make, _) in CASES.items()}
    with running_modelscope_mirror({c.modelscope_repo: c.modelscope_folder for c in cases.values()},
                                   pause_s=0.03) as ms, \
            running_hub_mirror({c.huggingface_repo: c.huggingface_folder for c in cases.values()}) as hf:
        yield cases, ms, hf


@pytest.fixture()
def hubs_online(monkeypatch, tmp_path, hubs):
    from huggingface_hub import constants

    cases, ms, hf = hubs
    go_online(monkeypatch)
    modelscope_at(monkeypatch, "MODELSCOPE_ENDPOINT", ms.url, cache=tmp_path / "modelscope-cache")
    huggingface_at(monkeypatch, hf.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    ms.served.clear()
    hf.served.clear()
    yield cases, ms, hf
    ms.truncated.clear()


def downloaded(ms) -> list[str]:
    return [path for what, path in ms.served if what == "file"]


def leftovers(models: Path, landed: Path) -> list[Path]:
    """Anything under ``models`` beside the landed folder's own files: staging folders, partial files."""
    return [p for p in models.rglob("*") if not (p == landed or landed in p.parents or p in landed.parents)
            or p.name.endswith((".incomplete", ".partial"))]


@pytest.mark.parametrize("name", list(CASES))
def test_modelscope_is_asked_first_and_its_files_land_in_place(hubs_online, tmp_path, name):
    cases, ms, hf = hubs_online
    case, run = cases[name], CASES[name][1]
    models = tmp_path / "models"
    seen = []
    landed = run(models, lambda done, total, what: seen.append((done, total)))
    assert landed == models / case.landed
    assert sorted(downloaded(ms)) == sorted(f"{case.modelscope_repo}/{f}" for f in case.files)
    assert hf.served == []  # ModelScope had everything: Hugging Face is not asked
    for f in case.files:
        rel = f[len(PART.folder) + 1:] if name == "scorer" else f  # DiffSynth's path, under QualityMetric
        assert (landed / rel).read_bytes() == (case.modelscope_folder / f).read_bytes(), f
    assert sorted(p.relative_to(landed).as_posix() for p in landed.rglob("*") if p.is_file()) == sorted(
        f[len(PART.folder) + 1:] if name == "scorer" else f for f in case.files)  # nothing else of the repository
    total = sum((case.modelscope_folder / f).stat().st_size for f in case.files)  # the files asked for, no more
    assert {t for _, t in seen} == {total}
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[0] == 0 and done[-1] == total
    if name != "predictor":  # a few MB: several steps in between
        assert len([d for d in done if 0 < d < total]) >= 2, seen
    assert leftovers(models, landed) == []

    ms.served.clear()
    seen.clear()
    assert run(models, lambda done, total, what: seen.append((done, total))) == landed
    assert ms.served == [] and hf.served == [] and seen == []  # on disk: nothing is fetched, nothing shown


@pytest.mark.parametrize("name", list(CASES))
def test_a_truncated_modelscope_file_falls_through_to_hugging_face(hubs_online, tmp_path, caplog, name):
    cases, ms, hf = hubs_online
    case, run = cases[name], CASES[name][1]
    ms.truncated.add(f"{case.modelscope_repo}/{case.weights}")
    models = tmp_path / "models"
    with caplog.at_level(logging.WARNING, logger="aesthete"):
        landed = run(models, None)
    failed = [r.getMessage() for r in caplog.records if "ModelScope failed" in r.getMessage()]
    assert len(failed) == 1 and f"{case.weights} of {case.modelscope_repo}: " in failed[0], failed
    assert "truncated" in failed[0]
    assert f"{case.modelscope_repo}/{case.weights}" in downloaded(ms)
    assert any(path.startswith(f"{case.huggingface_repo}/") for _, path in hf.served)
    weights = case.weights[len(PART.folder) + 1:] if name == "scorer" else case.weights
    assert (landed / weights).read_bytes() == (case.huggingface_folder / weights).read_bytes()
    assert leftovers(models, landed) == []


def test_when_both_fail_the_error_names_the_truncated_file_and_the_folder(hubs_online, monkeypatch, tmp_path):
    import socket

    cases, ms, _ = hubs_online
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    huggingface_at(monkeypatch, closed)
    case = cases["scorer"]
    ms.truncated.add(f"{case.modelscope_repo}/{case.weights}")
    with pytest.raises(ScorerUnavailable) as e:
        run_scorer(tmp_path / "models", None)
    message = str(e.value)
    assert f"ModelScope: {case.weights} of {DIFFSYNTH_REPO}: " in message
    assert f"Hugging Face is not reachable ({closed}" in message
    assert str(tmp_path / "models" / QUALITY_METRIC) in message
    assert list((tmp_path / "models" / QUALITY_METRIC).iterdir()) == []


def test_the_listing_gives_files_not_folders(hubs_online):
    """The hub lists folders too, and modelscope no longer says which entries they are."""
    from aesthete.common.downloads import modelscope_files

    cases, _, _ = hubs_online
    folder = cases["scorer"].modelscope_folder
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert modelscope_files(DIFFSYNTH_REPO) == files


def test_a_cancel_during_a_modelscope_download_stops_the_file_midway(hubs_online, monkeypatch, tmp_path):
    """The user's cancel, raised by the progress bar once the weights file has begun: modelscope's progress hook asks
    at every piece, so the download stops inside that file; no further file is fetched, Hugging Face is not tried,
    nothing is left."""
    import modelscope_hub._download as ms_download

    cases, ms, hf = hubs_online
    monkeypatch.setattr(ms_download, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)  # pieces as the 1 MB pieces of a big file
    monkeypatch.setattr(ms, "pause_s", 0.08)  # the weights take about 2 s to arrive
    weights = f"{DIFFSYNTH_REPO}/{cases['scorer'].weights}"
    cancel = type("InterruptProcessingException", (Exception,), {})

    def progress(done, total, what):
        if done > 0 and downloaded(ms)[-1:] == [weights]:
            raise cancel()

    with pytest.raises(cancel):
        run_scorer(tmp_path / "models", progress)
    assert downloaded(ms)[-1] == weights and len(downloaded(ms)) < len(cases["scorer"].files)
    size = (cases["scorer"].modelscope_folder / cases["scorer"].weights).stat().st_size
    assert 0 < ms.sent[weights] < size / 2, ms.sent
    assert hf.served == []
    assert list((tmp_path / "models" / QUALITY_METRIC).iterdir()) == []


def test_a_publishers_modelscope_repository_lands_in_its_quality_metric_folder(hubs_online, tmp_path):
    """SigLIP comes from its own ModelScope repository, whose files sit at its top: they land in DiffSynth's folder
    for it (V2.5's head is already in place, so only SigLIP is fetched)."""
    from devkit.scorer_models import tiny_aesthetic_v25_root

    _, ms, hf = hubs_online
    head, siglip = SPECS["aesthetic-v2.5"].parts
    source = tiny_aesthetic_v25_root() / QUALITY_METRIC
    ms.repos[siglip.modelscope] = source / siglip.folder
    models = tmp_path / "models"
    (models / QUALITY_METRIC / head.folder).mkdir(parents=True)
    for name in head.files:
        shutil.copy(source / head.folder / name, models / QUALITY_METRIC / head.folder / name)
    try:
        assert ensure_scorer_files("aesthetic-v2.5", models) == models / QUALITY_METRIC / head.folder
    finally:
        del ms.repos[siglip.modelscope]
    assert sorted(downloaded(ms)) == sorted(f"{siglip.modelscope}/{name}" for name in siglip.files)
    assert hf.served == []
    for name in siglip.files:
        assert (models / QUALITY_METRIC / siglip.folder / name).read_bytes() == (
            source / siglip.folder / name).read_bytes()
    assert sorted(p.name for p in (models / QUALITY_METRIC).iterdir()) == sorted([head.folder, siglip.folder])
