"""Getting Kolors onto disk: ``Kwai-Kolors/Kolors`` from ModelScope first, Hugging Face second, only the files the
loader reads, one file at a time (the node's progress bar counts them; each library shows its own byte progress in
the console), into a temporary folder that is renamed into place when complete (an interrupted download never
leaves half a model). Offline, a fast error names the files and the folder to put them in."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path

from ..common.downloads import (DownloadFailed, DownloadProgress, Fetcher, download_into_place, host_reachable,
                               offline_forced)
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


def _download_each(files: list[str], download: Callable[[str], object], source: str, progress: DownloadProgress) -> None:
    if not files:
        raise FileNotFoundError(f"{source} lists none of the files the loader needs")
    for i, name in enumerate(files):
        progress(i, len(files), f"{source}: {name}")
        download(name)
    progress(len(files), len(files), source)


def fetch_from_modelscope(dest: Path, progress: DownloadProgress) -> None:
    if offline_forced() or not host_reachable("www.modelscope.cn"):
        raise ConnectionError("ModelScope is not reachable")
    from modelscope.hub.api import HubApi
    from modelscope.hub.file_download import model_file_download

    files = wanted_files([f["Path"] for f in HubApi().get_model_files(KOLORS_REPO, recursive=True)
                          if f.get("Type") != "tree"])
    _download_each(files, lambda name: model_file_download(KOLORS_REPO, name, local_dir=str(dest)), "ModelScope",
                   progress)


def fetch_from_huggingface(dest: Path, progress: DownloadProgress) -> None:
    if offline_forced() or not host_reachable("huggingface.co"):
        raise ConnectionError("Hugging Face is not reachable")
    from huggingface_hub import HfApi, hf_hub_download

    files = wanted_files(HfApi().list_repo_files(KOLORS_REPO))
    _download_each(files, lambda name: hf_hub_download(KOLORS_REPO, name, local_dir=str(dest)), "Hugging Face",
                   progress)


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
