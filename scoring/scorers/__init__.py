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
    info = CATALOG[scorer_id]
    if scorer_id in ("pickscore-v1", "clipscore-vit-l-14"):
        from .clip_pair import load_clip_pair

        return load_clip_pair(info, parts[0], parts[-1], logit_scaled=scorer_id == "pickscore-v1",
                              device=device, dtype=dtype)
    raise ScorerUnavailable(f"{scorer_id}: no loader")  # a SPECS entry without one is a bug caught by the tests
