"""The judges of an image: the LAION aesthetic heads and the preference and alignment scorers people rank generated
images with today. ``CATALOG`` lists what each is, ``ensure_scorer_files`` finds or downloads its files,
``load_scorer`` gives a ``Scorer``. No ComfyUI import: the nodes wrap what is loaded here in a ModelPatcher."""

from __future__ import annotations

from pathlib import Path

from ...common.downloads import DownloadProgress
from .base import PromptScorer, Scorer
from .catalog import CATALOG, QUALITY_METRIC, SPECS, ScorerInfo
from .errors import PromptRequired, ScorerFileError, ScorerUnavailable
from .files import ensure_scorer_files, locate

__all__ = ["CATALOG", "QUALITY_METRIC", "PromptRequired", "PromptScorer", "Scorer", "ScorerFileError", "ScorerInfo",
           "ScorerUnavailable", "ensure_scorer_files", "load_scorer"]


def _load_pickscore(info, parts, device, dtype):
    from .clip_pair import load_clip_pair

    return load_clip_pair(info, parts[0], parts[1], logit_scaled=True, device=device, dtype=dtype)


def _load_clipscore_l(info, parts, device, dtype):
    from .clip_pair import load_clip_pair

    return load_clip_pair(info, parts[0], parts[0], logit_scaled=False, device=device, dtype=dtype)


def _load_mps(info, parts, device, dtype):
    from .mps import load_mps

    return load_mps(info, parts[0] / "MPS_overall_checkpoint_diffsynth.safetensors", parts[1], device, dtype)


def _load_openclip(file_name: str):
    def load(info, parts, device, dtype):
        from .clip_pair import load_openclip_pair
        from .files import present

        return load_openclip_pair(info, present(parts[0], file_name), parts[1] / "bpe_simple_vocab_16e6.txt.gz",
                                  device, dtype)
    return load


def _load_imagereward(info, parts, device, dtype):
    from .imagereward import load_imagereward

    return load_imagereward(info, parts[0] / "ImageReward.safetensors", parts[0] / "med_config.json", parts[1],
                            device, dtype)


def _load_aesthetic_v25(info, parts, device, dtype):
    from .aesthetic_v25 import load_aesthetic_v25

    return load_aesthetic_v25(info, parts[0] / "aesthetic_predictor_v2_5.pth", parts[1], device, dtype)


# scorer id -> (ScorerInfo, the folder of each of its parts in SPECS order, device, dtype) -> Scorer
LOADERS = {"pickscore-v1": _load_pickscore, "clipscore-vit-l-14": _load_clipscore_l, "mps-overall": _load_mps,
           "imagereward-v1": _load_imagereward,
           "aesthetic-v2.5": _load_aesthetic_v25,
           "hpsv2": _load_openclip("HPS_v2_compressed.safetensors"),
           "hpsv2.1": _load_openclip("HPS_v2.1_compressed.safetensors"),
           "clipscore-vit-h-14": _load_openclip("open_clip_pytorch_model.bin|open_clip_model.safetensors")}


def load_scorer(scorer_id: str, models_root: Path, device="cpu", dtype="auto",
                progress: DownloadProgress | None = None) -> Scorer:
    """The scorer ``scorer_id`` (a CATALOG key), its files found or downloaded first (``progress(done, total,
    what)`` while downloading). Nothing is cached here: the caller owns the model."""
    from ..predictor import load_predictor

    if scorer_id not in CATALOG:
        raise ScorerUnavailable(f"unknown scorer {scorer_id!r}; pick one of {', '.join(CATALOG)}")
    folder = ensure_scorer_files(scorer_id, Path(models_root), progress)
    if scorer_id not in SPECS:  # a LAION head
        return load_predictor(folder, device, dtype)
    found, _ = locate(scorer_id, Path(models_root))
    parts = [found[p] for p in SPECS[scorer_id].parts]
    return LOADERS[scorer_id](CATALOG[scorer_id], parts, device, dtype)
