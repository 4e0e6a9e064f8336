"""Finding a scorer's files on disk, or downloading them: ModelScope first (DiffSynth's repository, every file at
DiffSynth's path), the publishers' Hugging Face repositories second.

A part (files that sit in one folder) is found in the first of: ``<models>/QualityMetric/<folder>`` (DiffSynth's
README layout), ``<models>/DiffSynth-Studio/QualityMetric_reward_pretrained/<folder>`` (what DiffSynth's own
``download_preference_model(cache_dir="models")`` writes), the same under ``QualityMetric/``, and the publisher's
layout (``<models>/<repository name>``, a Hugging Face repository downloaded as its own folder). What is missing is
downloaded whole into a hidden staging folder (``common.downloads.download_into_place``: atomic, offline fails fast)
whose files are then moved into place one by one (``os.replace``); files already there are never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ...common.downloads import (DownloadFailed, DownloadProgress, Fetcher, download_into_place,
                                 fetch_huggingface_files, fetch_modelscope_files, progress_in_bytes,
                                 require_reachable)
from ..registry import KNOWN_PREDICTORS, PredictorUnavailable, ensure_predictor
from .catalog import DIFFSYNTH_REPO, QUALITY_METRIC, SPECS, Part, ScorerSpec
from .errors import ScorerUnavailable

log = logging.getLogger("aesthete.scoring")


def spec_of(scorer_id: str) -> ScorerSpec:
    if scorer_id not in SPECS:
        known = ", ".join(list(SPECS) + list(KNOWN_PREDICTORS))
        raise ScorerUnavailable(f"unknown scorer {scorer_id!r}; pick one of {known}")
    return SPECS[scorer_id]


def candidate_folders(part: Part, models_root: Path) -> list[Path]:
    """Where ``part``'s files may already be, in the order they are looked for."""
    qm = Path(models_root) / QUALITY_METRIC
    sub = [part.folder] if part.folder else []
    return ([qm.joinpath(*sub), Path(models_root).joinpath(DIFFSYNTH_REPO, *sub), qm.joinpath(DIFFSYNTH_REPO, *sub)]
            + [Path(models_root) / e for e in part.elsewhere])


def present(folder: Path, name: str) -> Path | None:
    """The file ``name`` ("a|b": either) in ``folder``, or None."""
    return next((folder / n for n in name.split("|") if (folder / n).is_file()), None)


def find_part(part: Part, models_root: Path) -> Path | None:
    for folder in candidate_folders(part, models_root):
        if all(present(folder, f) for f in part.files):
            return folder
    return None


def locate(scorer_id: str, models_root: Path) -> tuple[dict[Part, Path], list[Part]]:
    """(the folder of each part found, the parts missing)."""
    found, missing = {}, []
    for part in spec_of(scorer_id).parts:
        folder = find_part(part, models_root)
        if folder is None:
            missing.append(part)
        else:
            found[part] = folder
    return found, missing


def fetch_from_modelscope(part: Part, dest: Path, progress: DownloadProgress) -> None:
    if part.modelscope is None:
        raise FileNotFoundError(f"no ModelScope repository publishes {', '.join(part.paths())}")
    if part.modelscope == DIFFSYNTH_REPO:  # every file at DiffSynth's path
        fetch_modelscope_files(DIFFSYNTH_REPO, part.paths(pick=0), dest, progress)
    else:  # the files at the top of the repository
        fetch_modelscope_files(part.modelscope, [f.split("|")[0] for f in part.files], dest / part.folder, progress)


def fetch_from_huggingface(part: Part, dest: Path, progress: DownloadProgress) -> None:
    if part.huggingface is None:
        raise FileNotFoundError(f"no Hugging Face repository publishes {', '.join(part.paths())} in this format")
    # the safe format where there is a choice
    fetch_huggingface_files(part.huggingface, [f.split("|")[-1] for f in part.files], dest / part.folder, progress)


def fetch_from_url(part: Part, dest: Path, progress: DownloadProgress) -> None:
    """The publisher's own link to a single file."""
    import urllib.parse
    import urllib.request

    host = urllib.parse.urlparse(part.url).hostname or ""
    require_reachable(host, lambda: part.url)
    target = dest / part.paths(pick=0)[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(part.url, timeout=30) as response:  # noqa: S310 - fixed https
        size = int(response.headers.get("Content-Length") or 0) or None
        with progress_in_bytes(target.parent, size, progress, target.name) as check, open(target, "wb") as f:
            while chunk := response.read(1 << 20):
                check()  # the user's cancel, between pieces
                f.write(chunk)


def default_fetchers(part: Part) -> list[tuple[str, Fetcher]]:
    fetchers = [("ModelScope", lambda d, p: fetch_from_modelscope(part, d, p)),
                ("Hugging Face", lambda d, p: fetch_from_huggingface(part, d, p))]
    if part.url:
        fetchers.append(("the publisher's link", lambda d, p: fetch_from_url(part, d, p)))
    return fetchers


def _check(parts: list[Part]):
    def check(folder: Path) -> None:
        absent = [p for part in parts for p in part.paths() if not present(folder, p)]
        if absent:
            raise FileNotFoundError(f"the download lacks {', '.join(absent)}")
    return check


def _move_into_place(staging: Path, parts: list[Part], qm: Path) -> None:
    for part in parts:
        for rel in part.paths():
            source = present(staging, rel)
            target = qm / source.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    shutil.rmtree(staging, ignore_errors=True)


def missing_message(scorer_id: str, models_root: Path, parts: list[Part], reasons: list[str]) -> str:
    qm = Path(models_root) / QUALITY_METRIC
    files = ", ".join(p.replace("|", " or ") for part in parts for p in part.paths())
    why = "; ".join(reasons) if reasons else "not downloadable"
    return (f"scorer {scorer_id!r}: {files} not found under {qm} and could not be downloaded ({why}). Put those files "
            f"there (at those paths), then try again.")


def ensure_scorer_files(scorer_id: str, models_root: Path, progress: DownloadProgress | None = None,
                        fetchers: list[tuple[str, Fetcher]] | None = None) -> Path:
    """The folder of the scorer's weights (its first part, or the LAION predictor's folder), downloading whatever
    is missing, part by part. ``fetchers`` (label, function(dest, progress)) replace the default sources (tests):
    each writes the part's files at their QualityMetric path under ``dest``."""
    models_root = Path(models_root)
    if scorer_id in KNOWN_PREDICTORS:
        try:
            return ensure_predictor(scorer_id, models_root / "aesthetic", progress, fetchers)
        except PredictorUnavailable as e:
            raise ScorerUnavailable(str(e)) from None
    spec = spec_of(scorer_id)
    found, missing = locate(scorer_id, models_root)
    qm = models_root / QUALITY_METRIC
    failed: list[Part] = []
    reasons: list[str] = []
    for part in missing:
        staging = qm / f".download-{scorer_id}-{spec.parts.index(part)}"
        check = _check([part])
        try:  # a download whose files were not all moved into place before an interruption
            check(staging)
        except FileNotFoundError:
            try:
                download_into_place(staging, fetchers if fetchers is not None else default_fetchers(part), check,
                                    progress)
            except DownloadFailed as e:
                failed.append(part)
                reasons.extend(e.reasons)
                continue
        _move_into_place(staging, [part], qm)
    if failed:
        raise ScorerUnavailable(missing_message(scorer_id, models_root, failed, list(dict.fromkeys(reasons))))
    found, missing = locate(scorer_id, models_root)
    if missing:  # cannot happen unless the folder changed meanwhile
        raise ScorerUnavailable(missing_message(scorer_id, models_root, missing, ["moved, then not found"]))
    return found[spec.parts[0]]
