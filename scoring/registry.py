"""The published LAION aesthetic predictors, and getting one onto disk.

A predictor lives in ``<models>/aesthetic/<name>/`` in the hub layout (config.json, model.safetensors or
pytorch_model.bin, preprocessor_config.json). A known name that is not there is downloaded from ModelScope
first, Hugging Face second, into a temporary folder beside it that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..common.downloads import (DownloadFailed, DownloadProgress, Fetcher, download_into_place,
                               fetch_huggingface_files, fetch_modelscope_files, modelscope_files,
                               require_huggingface, require_modelscope)
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


def predictor_files(listed) -> list[str]:
    """What a download fetches of a repository listing ``listed``: the predictor's files, the weights in the safe
    format where the repository has both (a repository also carries a README, a model card, other formats)."""
    files = [f for f in listed if f in REQUIRED_FILES + WEIGHT_FILES]
    if "model.safetensors" in files and "pytorch_model.bin" in files:
        files.remove("pytorch_model.bin")
    return files


def fetch_from_modelscope(model_id: str, dest: Path, progress: DownloadProgress) -> None:
    require_modelscope()
    fetch_modelscope_files(model_id, predictor_files(modelscope_files(model_id)), dest, progress)


def fetch_from_huggingface(repo_id: str, dest: Path, progress: DownloadProgress) -> None:
    require_huggingface()
    from huggingface_hub import HfApi

    fetch_huggingface_files(repo_id, predictor_files(HfApi().list_repo_files(repo_id)), dest, progress)


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
    def check(tmp: Path) -> None:
        if not is_predictor_folder(tmp):
            raise FileNotFoundError(f"the download lacks {', '.join(REQUIRED_FILES)} or the weights")

    try:
        return download_into_place(folder, fetchers, check, progress)
    except DownloadFailed as e:
        raise PredictorUnavailable(missing_files_message(name, folder, e.reasons)) from None
