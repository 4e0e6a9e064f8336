"""The published LAION aesthetic predictors, and getting one onto disk.

A predictor lives in ``<models>/aesthetic/<name>/`` in the hub layout (config.json, model.safetensors or
pytorch_model.bin, preprocessor_config.json). A known name that is not there is downloaded from ModelScope
first, Hugging Face second, into a temporary folder beside it that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..common.paths import path_inside

log = logging.getLogger("aesthete.scoring")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
# the image processor's settings: transformers 4 saves preprocessor_config.json, a transformers 5 processor
# saves processor_config.json (the image processor nested inside); either makes a predictor folder
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
REQUIRED_FILES = (CONFIG_FILE, PROCESSOR_FILES[0])  # what a download fetches and a message asks for


@dataclass(frozen=True)
class KnownPredictor:
    name: str  # folder name under models/aesthetic
    huggingface_id: str
    modelscope_id: str | None = None


DEFAULT_PREDICTOR = "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"

KNOWN_PREDICTORS: dict[str, KnownPredictor] = {p.name: p for p in (
    KnownPredictor(DEFAULT_PREDICTOR, f"shunk031/{DEFAULT_PREDICTOR}",
                   f"AI-ModelScope/{DEFAULT_PREDICTOR}"),
    KnownPredictor("aesthetics-predictor-v2-ava-logos-l14-linearMSE",
                   "shunk031/aesthetics-predictor-v2-ava-logos-l14-linearMSE"),
    KnownPredictor("aesthetics-predictor-v2-ava-logos-l14-reluMSE",
                   "shunk031/aesthetics-predictor-v2-ava-logos-l14-reluMSE"),
    KnownPredictor("aesthetics-predictor-v1-vit-large-patch14",
                   "shunk031/aesthetics-predictor-v1-vit-large-patch14"),
    KnownPredictor("aesthetics-predictor-v1-vit-base-patch16",
                   "shunk031/aesthetics-predictor-v1-vit-base-patch16"),
    KnownPredictor("aesthetics-predictor-v1-vit-base-patch32",
                   "shunk031/aesthetics-predictor-v1-vit-base-patch32"),
)}

# (done, total, what) -> None; called as files arrive
DownloadProgress = Callable[[int, int, str], None]
# (model id, destination folder, progress) -> None; raises when it cannot fetch
Fetcher = Callable[[str, Path, DownloadProgress], None]


class PredictorUnavailable(RuntimeError):
    """The predictor is neither on disk nor downloadable; the message says which files to put where."""


def is_predictor_folder(folder: Path) -> bool:
    """The one rule for "this folder holds an aesthetic predictor": config.json, an image processor file
    (PROCESSOR_FILES) and weights (WEIGHT_FILES). The loader lists and loads exactly these folders."""
    folder = Path(folder)
    return ((folder / CONFIG_FILE).is_file() and any((folder / f).is_file() for f in PROCESSOR_FILES)
            and any((folder / f).is_file() for f in WEIGHT_FILES))



def missing_files_message(name: str, folder: Path, reasons: list[str]) -> str:
    known = KNOWN_PREDICTORS.get(name)
    source = (f" from https://huggingface.co/{known.huggingface_id}"
              + (f" or https://modelscope.cn/models/{known.modelscope_id}" if known.modelscope_id else "")
              if known else "")
    why = "; ".join(reasons) if reasons else "not downloadable"
    return (f"aesthetic predictor {name!r} is not in {folder} and could not be downloaded ({why}). "
            f"Put config.json, preprocessor_config.json and model.safetensors (or pytorch_model.bin){source} "
            f"into {folder}, or pick a predictor folder that is already there.")


def host_reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick TCP probe so that an offline machine fails in seconds, not after a minute of download retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_forced() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("AESTHETE_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_from_modelscope(model_id: str, dest: Path, progress: DownloadProgress) -> None:
    if offline_forced() or not host_reachable("www.modelscope.cn"):
        raise ConnectionError("ModelScope is not reachable")
    from modelscope import snapshot_download

    progress(0, 1, f"ModelScope {model_id}")
    snapshot_download(model_id, local_dir=str(dest))
    progress(1, 1, f"ModelScope {model_id}")


def fetch_from_huggingface(repo_id: str, dest: Path, progress: DownloadProgress) -> None:
    if offline_forced() or not host_reachable("huggingface.co"):
        raise ConnectionError("Hugging Face is not reachable")
    from huggingface_hub import HfApi, hf_hub_download

    files = [f for f in HfApi().list_repo_files(repo_id) if f in REQUIRED_FILES + WEIGHT_FILES]
    if "model.safetensors" in files and "pytorch_model.bin" in files:
        files.remove("pytorch_model.bin")  # the safe format is enough
    for i, name in enumerate(files):
        progress(i, len(files), name)
        hf_hub_download(repo_id, name, local_dir=str(dest))
    progress(len(files), len(files), repo_id)


def ensure_predictor(name: str, aesthetic_dir: Path, progress: DownloadProgress | None = None,
                     fetchers: list[tuple[str, Fetcher]] | None = None) -> Path:
    """The folder of predictor ``name`` under ``aesthetic_dir``, downloading a known one if it is missing.

    ``fetchers`` (label, function) are tried in order; by default ModelScope (where the predictor has a
    ModelScope id), then Hugging Face. The files land in a temporary folder that is renamed into place only
    when complete, so an interrupted download never leaves a half model behind."""
    aesthetic_dir = Path(aesthetic_dir)
    folder = path_inside(aesthetic_dir, name, what="predictor")
    if is_predictor_folder(folder):
        return folder
    known = KNOWN_PREDICTORS.get(name)
    if known is None:
        if folder.is_dir():
            missing = [] if (folder / CONFIG_FILE).is_file() else [CONFIG_FILE]
            if not any((folder / f).is_file() for f in PROCESSOR_FILES):
                missing.append(" or ".join(PROCESSOR_FILES))
            if not any((folder / f).is_file() for f in WEIGHT_FILES):
                missing.append("model.safetensors")
            raise PredictorUnavailable(f"{folder}: missing {', '.join(missing)}; put the files of a Hugging Face or "
                                       f"ModelScope aesthetic predictor there, or pick a listed model")
        raise PredictorUnavailable(f"{name!r} is neither a folder under {aesthetic_dir} nor a known predictor "
                                   f"({', '.join(KNOWN_PREDICTORS)})")
    if fetchers is None:
        fetchers = []
        if known.modelscope_id:
            fetchers.append(("ModelScope", lambda d, p, m=known.modelscope_id: fetch_from_modelscope(m, d, p)))
        fetchers.append(("Hugging Face", lambda d, p, h=known.huggingface_id: fetch_from_huggingface(h, d, p)))
    progress = progress or (lambda done, total, what: None)
    aesthetic_dir.mkdir(parents=True, exist_ok=True)
    reasons = []
    for label, fetch in fetchers:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=aesthetic_dir))
        try:
            log.info("downloading aesthetic predictor %s from %s into %s", name, label, folder)
            fetch(tmp, progress)
            if not is_predictor_folder(tmp):
                raise FileNotFoundError(f"the download lacks {', '.join(REQUIRED_FILES)} or the weights")
            if folder.exists():  # an incomplete folder from before: replace it whole
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            return folder
        except Exception as e:  # noqa: BLE001 - every failure falls through to the next source
            log.warning("aesthetic predictor %s: %s failed: %s", name, label, e)
            reasons.append(f"{label}: {e}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    raise PredictorUnavailable(missing_files_message(name, folder, reasons))
