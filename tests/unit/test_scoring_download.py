"""Getting a predictor onto disk: atomic, source order, fast and clear when offline, names stay in their folder."""

from __future__ import annotations

import shutil
import time

import pytest
from devkit.factories import aesthetic_predictor

from aesthete.scoring import registry
from aesthete.scoring.predictor import detect_head
from aesthete.scoring.registry import DEFAULT_PREDICTOR, PredictorUnavailable, ensure_predictor


def copy_tiny(dest, progress):
    for f in aesthetic_predictor("tiny").iterdir():
        shutil.copy(f, dest / f.name)
        progress(1, 1, f.name)


def test_first_working_source_wins_and_lands_atomically(tmp_path):
    calls, seen = [], []

    def broken(dest, progress):
        calls.append("modelscope")
        (dest / "config.json").write_text("{}")  # a partial download
        raise ConnectionError("reset by peer")

    def working(dest, progress):
        calls.append("huggingface")
        assert not (tmp_path / DEFAULT_PREDICTOR).exists()  # nothing visible until complete
        copy_tiny(dest, progress)

    folder = ensure_predictor(DEFAULT_PREDICTOR, tmp_path, lambda d, t, w: seen.append(w),
                              fetchers=[("ModelScope", broken), ("Hugging Face", working)])
    assert calls == ["modelscope", "huggingface"] and seen
    assert folder == tmp_path / DEFAULT_PREDICTOR and registry.is_predictor_folder(folder)
    assert detect_head(folder) == "v2-linear"
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_PREDICTOR]  # no partial folders left
    # present now: no source is asked again
    assert ensure_predictor(DEFAULT_PREDICTOR, tmp_path, fetchers=[]) == folder


@pytest.mark.parametrize("base", [Exception, BaseException])
def test_a_cancel_from_the_progress_bar_stops_the_download_and_tries_no_other_source(tmp_path, base):
    """ComfyUI's progress bar raises the user's cancel (an Exception in ComfyUI 0.3.75, a BaseException in the
    newest): the download stops with it, no other source is tried, nothing is left half in place."""
    cancel = type("InterruptProcessingException", (base,), {})
    calls = []

    def modelscope(dest, progress):
        calls.append("modelscope")
        (dest / "config.json").write_text("{}")
        progress(0, 3, "config.json")

    def huggingface(dest, progress):
        calls.append("huggingface")
        copy_tiny(dest, progress)

    def progress(done, total, what):
        raise cancel()

    with pytest.raises(cancel):
        ensure_predictor(DEFAULT_PREDICTOR, tmp_path, progress,
                         fetchers=[("ModelScope", modelscope), ("Hugging Face", huggingface)])
    assert calls == ["modelscope"] and list(tmp_path.iterdir()) == []


def test_every_source_failing_names_the_files_and_the_folder(tmp_path):
    def incomplete(dest, progress):
        (dest / "config.json").write_text("{}")

    with pytest.raises(PredictorUnavailable) as e:
        ensure_predictor(DEFAULT_PREDICTOR, tmp_path, fetchers=[("ModelScope", incomplete)])
    message = str(e.value)
    for needed in ("config.json", "preprocessor_config.json", "model.safetensors", str(tmp_path / DEFAULT_PREDICTOR),
                   "huggingface.co/shunk031/", "modelscope.cn/models/AI-ModelScope/"):
        assert needed in message
    assert list(tmp_path.iterdir()) == []


def test_offline_fails_fast_with_the_default_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("AESTHETE_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(PredictorUnavailable, match="ModelScope is not reachable.*Hugging Face is not reachable"):
        ensure_predictor(DEFAULT_PREDICTOR, tmp_path)
    assert time.monotonic() - start < 5


def test_unknown_names_and_escaping_names_are_refused(tmp_path):
    with pytest.raises(PredictorUnavailable, match="neither a folder"):
        ensure_predictor("no-such-model", tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(PredictorUnavailable, match="missing preprocessor_config.json or processor_config.json, model.safetensors"):
        ensure_predictor("half", tmp_path)
    for bad in ("../x", "/etc", "..", "a/../../b"):
        with pytest.raises(ValueError):
            ensure_predictor(bad, tmp_path / "models")


def test_symlinked_predictor_folder_is_accepted(tmp_path):
    (tmp_path / "linked").symlink_to(aesthetic_predictor("tiny"), target_is_directory=True)
    assert ensure_predictor("linked", tmp_path, fetchers=[]) == tmp_path / "linked"


def test_head_is_detected_from_weights_when_config_has_no_architecture(tmp_path):
    import json

    for head in ("v1", "v2-relu"):
        dest = tmp_path / head
        shutil.copytree(aesthetic_predictor("tiny", head=head), dest)
        config = json.loads((dest / "config.json").read_text())
        config.pop("architectures", None)
        (dest / "config.json").write_text(json.dumps(config))
        assert detect_head(dest) == head
