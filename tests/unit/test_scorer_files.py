"""A scorer's files: found where DiffSynth or the publishers put them (never fetched again), downloaded atomically
when missing, a clear error offline naming the files and the folder, a broken weight file named."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from devkit.factories import aesthetic_predictor
from devkit.scorer_models import tiny_clip_scorers_root

from aesthete.scoring.scorers import (CATALOG, QUALITY_METRIC, ScorerFileError, ScorerUnavailable,
                                      ensure_scorer_files, load_scorer)
from aesthete.scoring.scorers.base import Scorer
from aesthete.scoring.scorers.catalog import SPECS

PICK = "pickscore-v1"


def never(dest, progress):
    raise AssertionError("files on disk must not be downloaded again")


def copy_part(src_root, dest_root, folder):
    shutil.copytree(src_root / QUALITY_METRIC / folder, dest_root / folder)


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip_scorers_root()


@pytest.mark.parametrize("layout", ["QualityMetric", "DiffSynth-Studio/QualityMetric_reward_pretrained",
                                    "QualityMetric/DiffSynth-Studio/QualityMetric_reward_pretrained", "publisher"])
def test_files_already_in_diffsynths_or_the_publishers_layout_are_found_not_fetched(tiny, tmp_path, layout):
    base = tmp_path if layout == "publisher" else tmp_path / layout
    for folder in ("PickScore_v1", "CLIP-ViT-H-14-laion2B-s32B-b79K"):
        copy_part(tiny, base, folder)
    folder = ensure_scorer_files(PICK, tmp_path, fetchers=[("ModelScope", never)])
    assert folder == base / "PickScore_v1"
    assert load_scorer(PICK, tmp_path).score_images([torch.zeros(3, 40, 40, dtype=torch.uint8)], ["a fox"])


def test_missing_files_download_atomically_beside_files_already_there(tiny, tmp_path):
    """The processor is there, the model is not: only the model is fetched (ModelScope failing half-way, Hugging
    Face working), nothing half-written stays, the files already there are untouched."""
    copy_part(tiny, tmp_path / QUALITY_METRIC, "CLIP-ViT-H-14-laion2B-s32B-b79K")
    kept = (tmp_path / QUALITY_METRIC / "CLIP-ViT-H-14-laion2B-s32B-b79K" / "vocab.json").stat().st_mtime_ns
    calls, seen = [], []

    def broken(dest, progress):
        calls.append("modelscope")
        (dest / "PickScore_v1").mkdir()
        (dest / "PickScore_v1" / "config.json").write_text("{}")
        raise ConnectionError("reset by peer")

    def working(dest, progress):
        calls.append("huggingface")
        assert not (tmp_path / QUALITY_METRIC / "PickScore_v1").exists()  # nothing visible until complete
        shutil.copytree(tiny / QUALITY_METRIC / "PickScore_v1", dest / "PickScore_v1")
        progress(1, 1, "model.safetensors")

    folder = ensure_scorer_files(PICK, tmp_path, lambda d, t, w: seen.append(w),
                                 fetchers=[("ModelScope", broken), ("Hugging Face", working)])
    assert calls == ["modelscope", "huggingface"] and seen
    assert folder == tmp_path / QUALITY_METRIC / "PickScore_v1"
    assert sorted(p.name for p in (tmp_path / QUALITY_METRIC).iterdir()) == [
        "CLIP-ViT-H-14-laion2B-s32B-b79K", "PickScore_v1"]  # no staging or partial folders left
    assert (tmp_path / QUALITY_METRIC / "CLIP-ViT-H-14-laion2B-s32B-b79K" / "vocab.json").stat().st_mtime_ns == kept
    assert ensure_scorer_files(PICK, tmp_path, fetchers=[("ModelScope", never)]) == folder


def test_offline_the_error_names_the_files_and_the_folder_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AESTHETE_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ScorerUnavailable) as e:
        load_scorer(PICK, tmp_path)
    assert time.perf_counter() - started < 5
    message = str(e.value)
    assert "PickScore_v1/model.safetensors" in message and "CLIP-ViT-H-14-laion2B-s32B-b79K/vocab.json" in message
    assert str(tmp_path / QUALITY_METRIC) in message and "ModelScope" in message and "Hugging Face" in message


def test_a_truncated_weight_file_is_named(tiny, tmp_path):
    for folder in ("PickScore_v1", "CLIP-ViT-H-14-laion2B-s32B-b79K"):
        copy_part(tiny, tmp_path / QUALITY_METRIC, folder)
    weights = tmp_path / QUALITY_METRIC / "PickScore_v1" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) - 1000])
    with pytest.raises(ScorerFileError, match="PickScore_v1/model.safetensors.*cut short"):
        load_scorer(PICK, tmp_path)


def test_another_models_weights_are_named_not_loaded_half_random(tiny, tmp_path):
    for folder in ("PickScore_v1", "CLIP-ViT-H-14-laion2B-s32B-b79K"):
        copy_part(tiny, tmp_path / QUALITY_METRIC, folder)
    shutil.copy(aesthetic_predictor("tiny") / "model.safetensors",
                tmp_path / QUALITY_METRIC / "PickScore_v1" / "model.safetensors")
    with pytest.raises(ScorerFileError, match="PickScore_v1/model.safetensors: not this scorer's weights"):
        load_scorer(PICK, tmp_path)


def test_the_laion_predictor_is_a_scorer_that_ignores_prompts(tmp_path):
    name = "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"
    shutil.copytree(aesthetic_predictor("tiny"), tmp_path / "aesthetic" / name)
    predictor = load_scorer(name, tmp_path, dtype="fp32")
    assert isinstance(predictor, Scorer) and not predictor.prompt_aware
    assert predictor.info == CATALOG[name] and predictor.modules() == [predictor.model]
    batch = torch.rand(3, 40, 40, 3, generator=torch.Generator().manual_seed(1))
    plain = predictor.score_tensor(batch)
    assert predictor.score_tensor(batch, ["x", "y", "z"], batch_size=2) == pytest.approx(plain, rel=1e-6)
    assert predictor.score_tensor(batch, 2) == pytest.approx(plain, rel=1e-6)  # callers passing batch size second


def test_every_catalog_entry_says_what_users_see_and_unknown_ids_are_refused(tmp_path):
    for scorer_id, info in CATALOG.items():
        assert info.id == scorer_id and info.display_name and info.measures and info.licence and info.size_mb > 0
        assert info.typical_range[0] < info.typical_range[1]
        assert info.folder.startswith(f"{QUALITY_METRIC}/" if scorer_id in SPECS else "aesthetic/")
    with pytest.raises(ScorerUnavailable, match="unknown scorer 'nope'"):
        load_scorer("nope", tmp_path)
