"""Getting Kolors onto disk: ``Kwai-Kolors/Kolors`` from ModelScope first, Hugging Face second, only the files the
loader reads, one file at a time (the node's progress bar counts the bytes written against the sizes the hub lists),
into a temporary folder that is renamed into place when complete (an interrupted download never leaves half a
model). Offline, a fast error names the files and the folder to put them in."""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

from ..common.downloads import (DownloadFailed, DownloadProgress, Fetcher, download_into_place,
                               fetch_huggingface_files, fetch_modelscope_files, modelscope_files, require_huggingface,
                               require_modelscope)
from .folder import KolorsFolderError, find_kolors_folder

log = logging.getLogger("aesthete.kolors")

KOLORS_REPO = "Kwai-Kolors/Kolors"
DEFAULT_NAME = "Kolors"
# what the loader reads: configs, fp16 UNet/VAE weights, the whole ChatGLM3 text encoder with its tokenizer
FILE_PATTERNS = [
    "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/tokenizer.model", "text_encoder/tokenizer_config.json",
    "text_encoder/pytorch_model-*.bin", "text_encoder/pytorch_model.bin.index.json",
]



def wanted_files(names: list[str]) -> list[str]:
    """The repository files the loader reads, in the order of FILE_PATTERNS."""
    return [n for pattern in FILE_PATTERNS for n in sorted(names) if fnmatch.fnmatchcase(n, pattern)]


def fetch_from_modelscope(dest: Path, progress: DownloadProgress) -> None:
    require_modelscope()
    fetch_modelscope_files(KOLORS_REPO, wanted_files(list(modelscope_files(KOLORS_REPO))), dest, progress)


def fetch_from_huggingface(dest: Path, progress: DownloadProgress) -> None:
    require_huggingface()
    from huggingface_hub import HfApi

    fetch_huggingface_files(KOLORS_REPO, wanted_files(HfApi().list_repo_files(KOLORS_REPO)), dest, progress)


DEFAULT_FETCHERS: list[tuple[str, Fetcher]] = [("ModelScope", fetch_from_modelscope),
                                               ("Hugging Face", fetch_from_huggingface)]


def ensure_kolors(kolors_dir: Path, name: str = DEFAULT_NAME, progress: DownloadProgress | None = None,
                  fetchers: list[tuple[str, Fetcher]] | None = None) -> Path:
    """``kolors_dir/name``, downloading Kwai-Kolors/Kolors into it when it is not a complete Kolors folder."""
    kolors_dir = Path(kolors_dir)
    folder = kolors_dir / name
    try:
        find_kolors_folder(folder)
        return folder
    except KolorsFolderError as e:
        if folder.exists():
            log.info("Kolors folder %s is incomplete (%s); downloading", folder, e)
    try:
        return download_into_place(folder, fetchers or DEFAULT_FETCHERS, find_kolors_folder, progress)
    except DownloadFailed as e:
        raise KolorsFolderError(
            f"Kolors is not in {folder} and could not be downloaded ({e}). Put the files of {KOLORS_REPO} "
            f"(ModelScope or Hugging Face) there: {', '.join(FILE_PATTERNS)}") from None
