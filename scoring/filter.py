"""Filtering a dataset by aesthetic score: score every image under SRC and put those that pass into DST, with their
caption files, keeping relative paths (``aesthete filter``).

- Scores come from an engine: ``local`` (``score_files`` of scoring/folder.py, in batches) or ``ray``
  (scoring/ray_engine.py, the same opener, preprocessing and forward on a Ray cluster). Both give ``ScoreRecord``s.
- ``ResultsStore`` (scoring/store.py) keeps every file's score or skip reason, so a re-run skips what is already
  scored and an interrupted run resumes.
- The files that pass are placed into DST with their captions by scoring/placing.py.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..common.files import write_atomic
from .folder import FolderReport, NothingScorable, score_files
from ..common.images import DEFAULT_MAX_PIXELS, open_image
from .store import ResultsStore, ScoreRecord, SourceFile, scorer_key, source_files
from ..common.captions import METADATA_CSV
from .placing import CAPTION_SIDECARS, place_kept
from .predictor import ScoreProgress
from .ranking import rank_by_score

log = logging.getLogger("aesthete.scoring")

RESULTS_DIR = ".aesthete"  # inside DST: hidden, so it is never scored or listed as data


class LocalEngine:
    """The local engine: ``score_files`` (scoring/folder.py) on ``batch_size`` files at a time, each batch stored
    before the next is read. Engines are context managers (the Ray engine connects to its cluster) and callables:
    ``engine(files, store, progress)`` gives one record per file; ``engine.model`` identifies the predictor.
    A prompt-aware scorer or judge reads ``prompt`` for every file, else each file's caption (``root``: where
    metadata.csv's names start); ``reuse`` is False then, as a caption may change without its image."""

    def __init__(self, predictor, batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS,
                 prompt: str | None = None, root: Path | None = None):
        import hashlib

        self.predictor = predictor
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.prompt = (prompt or "").strip() or None
        self.root = root
        self.model = scorer_key(predictor)
        self.reuse = True
        if getattr(predictor, "prompt_aware", False):
            if self.prompt is not None:
                self.model += "|prompt:" + hashlib.sha256(self.prompt.encode()).hexdigest()[:16]
            else:
                self.model += "|captions"
                self.reuse = False

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __call__(self, files: Sequence[SourceFile], store: ResultsStore | None = None,
                 progress: ScoreProgress | None = None) -> list[ScoreRecord]:
        records: list[ScoreRecord] = []
        for start in range(0, len(files), self.batch_size):
            chunk = files[start:start + self.batch_size]
            batch = _score_chunk(self.predictor, chunk, self.model, self.batch_size, self.max_pixels, self.prompt,
                                 self.root)
            if store is not None:
                store.append(batch)
            records.extend(batch)
            if progress is not None:
                progress(len(records), len(files))
        return records


def _score_chunk(predictor, chunk: Sequence[SourceFile], model: str, batch_size: int,
                 max_pixels: int, prompt: str | None = None, root: Path | None = None) -> list[ScoreRecord]:
    by_path = {Path(f.path): f for f in chunk}
    try:
        report = score_files(predictor, list(by_path), batch_size=batch_size, max_pixels=max_pixels, prompt=prompt,
                             root=Path(os.path.abspath(root)) if root is not None else None)
    except NothingScorable as e:  # every file of this chunk is bad: each one's reason, one by one
        report = FolderReport(skipped=e.skipped or [(p, open_image(p, max_pixels=max_pixels).reason)
                                                    for p in by_path])
    notes = dict(report.notes)
    each = [{k: c[i] for k, c in report.columns.items()} if report.per_scorer else None
            for i in range(len(report.scored))]
    out = {p: _record(by_path[p], model, score=s, note=notes.get(p, ""), scores=e)
           for (p, s), e in zip(report.scored, each)}
    out.update({p: _record(by_path[p], model, reason=r) for p, r in report.skipped})
    return [out[p] for p in by_path]


def _record(f: SourceFile, model: str, score: float | None = None, reason: str = "", note: str = "",
            scores: dict[str, float] | None = None) -> ScoreRecord:
    return ScoreRecord(f.path, f.name, f.size, f.mtime_ns, model, score, reason, note, scores)


def score_with_store(files: Sequence[SourceFile], engine, store: ResultsStore | None = None,
                     progress: ScoreProgress | None = None) -> list[ScoreRecord]:
    """One record per file, in file order: from the store where a file (same path, size, mtime, predictor) was
    scored before, from ``engine`` for the others. Logs files per second of the new ones."""
    model = engine.model
    known = store.load() if store is not None and getattr(engine, "reuse", True) else {}
    records: dict[str, ScoreRecord] = {}
    todo = []
    for f in files:
        rec = known.get((f.path, f.size, f.mtime_ns, model)) if f.size >= 0 else None
        if rec is not None:
            records[f.path] = ScoreRecord(f.path, f.name, f.size, f.mtime_ns, model, rec.score, rec.reason, rec.note,
                                          rec.scores)
        else:
            todo.append(f)
    if records:
        log.info("%d file(s) already scored (%s), %d to score", len(records), store.folder, len(todo))
    if todo:
        start = time.perf_counter()
        done = 0

        def progress_all(n: int, _total: int) -> None:
            if progress is not None:
                progress(len(records) + n, len(files))

        for rec in engine(todo, store, progress_all):
            records[rec.path] = rec
            done += 1
        seconds = time.perf_counter() - start
        log.info("scored %d file(s) in %.1f s: %.2f files/s", done, seconds, done / seconds if seconds > 0 else 0.0)
    missing = [f.name for f in files if f.path not in records]
    if missing:
        raise RuntimeError(f"the scoring engine returned no result for {len(missing)} file(s), e.g. {missing[:3]}")
    return [records[f.path] for f in files]


def folder_report(records: Sequence[ScoreRecord]) -> FolderReport:
    """The records as ``aesthete score`` reports them (scores, skips with reasons, notes), in file order, each named
    as it was listed (``SourceFile.name``)."""
    report = FolderReport()
    names = list(dict.fromkeys(k for r in records if r.score is not None and r.scores for k in r.scores))
    if len(names) > 1:
        report.columns = {k: [] for k in names}
    for r in records:
        path = Path(r.name)
        if r.score is None:
            report.skipped.append((path, r.reason))
        else:
            report.scored.append((path, r.score))
            for k in report.columns:
                report.columns[k].append((r.scores or {}).get(k, math.nan))
            if r.note:
                report.notes.append((path, r.note))
    return report


def score_report(files: Sequence[SourceFile], engine, store: ResultsStore | None = None, root: Path | None = None,
                 progress: ScoreProgress | None = None) -> FolderReport:
    """What ``aesthete score`` reports, through an engine and a results store. Raises NothingScorable as
    ``score_files`` does."""
    report = folder_report(score_with_store(files, engine, store, progress))
    if not report.scored:
        where = root if root is not None else "the given paths"
        raise NothingScorable(f"{where}: no image could be scored; {report.skipped_text() or 'it holds no files'}")
    return report


# ---- choosing and placing ----

@dataclass
class FileOutcome:
    name: str
    score: float | None
    kept: bool = False
    reason: str = ""  # why it was skipped (not scored) or not kept
    placed: str = ""  # copied, linked, already there, or why it was left alone
    note: str = ""
    scores: dict[str, float] | None = None  # a judge of several scorers: each one's score


@dataclass
class FilterReport:
    source: str
    destination: str
    min_score: float | None
    top_k: int
    files: list[FileOutcome] = field(default_factory=list)
    captions: list[tuple[str, str]] = field(default_factory=list)  # (caption file, what happened)

    @property
    def scored(self) -> list[FileOutcome]:
        return [f for f in self.files if f.score is not None]

    @property
    def kept(self) -> list[FileOutcome]:
        return [f for f in self.files if f.kept]

    @property
    def mean_before(self) -> float:
        return _mean([f.score for f in self.scored])

    @property
    def mean_after(self) -> float:
        return _mean([f.score for f in self.kept])

    @property
    def conflicts(self) -> list[str]:
        return [f.name for f in self.kept if f.placed.startswith("differs")] + \
            [name for name, what in self.captions if what.startswith("differs")]

    def summary(self) -> str:
        skipped = len(self.files) - len(self.scored)
        return (f"kept {len(self.kept)} of {len(self.scored)} scored image(s) ({skipped} skipped); mean before "
                f"{self.mean_before:.4f}, after {self.mean_after:.4f}")

    def as_dict(self) -> dict:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"source": self.source, "destination": self.destination, "min_score": self.min_score,
                "top_k": self.top_k or None, "count": len(self.scored), "kept": len(self.kept),
                "skipped": len(self.files) - len(self.scored),
                "mean_before": num(self.mean_before), "mean_after": num(self.mean_after),
                "files": [{"file": f.name, "score": f.score, "kept": f.kept, "reason": f.reason,
                           **({"scores": f.scores} if f.scores else {}),
                           **({"placed": f.placed} if f.placed else {}), **({"note": f.note} if f.note else {})}
                          for f in self.files],
                "captions": [{"file": n, "placed": w} for n, w in self.captions]}

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        names = list(dict.fromkeys(k for f in self.files if f.scores for k in f.scores))
        writer.writerow(["file", "score", *names, "kept", "placed", "reason", "note"])
        writer.writerows([f.name, "" if f.score is None else f"{f.score:.6f}",
                          *("" if not f.scores or k not in f.scores else f"{f.scores[k]:.6f}" for k in names),
                          int(f.kept), f.placed, f.reason, f.note] for f in self.files)
        return buf.getvalue()

    def write(self, path: Path, fmt: str) -> None:
        """The report as ``json`` or ``csv``, written atomically."""
        text = json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n" if fmt == "json" else self.csv_text()
        write_atomic(path, text)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def choose(records: Sequence[ScoreRecord], min_score: float | None, top_k: int = 0) -> list[FileOutcome]:
    """Which scored files pass (``ranking.rank_by_score``), with the reason for each one that does not."""
    scores = [math.nan if r.score is None else r.score for r in records]
    kept = set(rank_by_score(scores, top_k, min_score).kept)
    out = []
    for i, r in enumerate(records):
        if r.score is None:
            reason = r.reason
        elif i in kept:
            reason = ""
        elif min_score is not None and r.score < min_score:
            reason = f"below --min-score {min_score:g}"
        else:
            reason = f"not among the --top-k {top_k} best"
        out.append(FileOutcome(r.name, r.score, i in kept, reason, note=r.note, scores=r.scores))
    return out


def stage_remote(src: str, stage: Path, records: Sequence[ScoreRecord], outcomes: Sequence[FileOutcome],
                 recursive: bool) -> list[ScoreRecord]:
    """Download the kept images of a URI ``src``, their caption files and the metadata.csv files into ``stage``, at
    their relative paths, so the local placing code puts them into DST. Returns the records pointing at the copies."""
    from .remote import list_named, read_bytes, with_suffix

    def fetch(uri: str, rel: str) -> bool:
        try:
            data = read_bytes(uri)
        except (FileNotFoundError, OSError):
            return False
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
        return True

    staged = []
    for rec, out in zip(records, outcomes):
        if out.kept:
            if not fetch(rec.path, rec.name):
                raise OSError(f"{rec.path}: cannot read it again to copy it into DST")
            for suffix in CAPTION_SIDECARS:
                fetch(with_suffix(rec.path, suffix), str(PurePosixPath(rec.name).with_suffix(suffix)))
        staged.append(ScoreRecord(str(stage / rec.name), rec.name, rec.size, rec.mtime_ns, rec.model, rec.score))
    for uri, rel in list_named(src, METADATA_CSV, recursive):
        fetch(uri, rel)
    return staged


def _place(src_root: Path, dst_root: Path, records: Sequence[ScoreRecord], outcomes: Sequence[FileOutcome],
           mode: str, recursive: bool) -> list[tuple[str, str]]:
    """``place_kept`` for the kept files; sets each kept outcome's ``placed``. Returns what happened to the captions."""
    kept = [(rec, out) for rec, out in zip(records, outcomes) if out.kept]
    placed, captions = place_kept(src_root, dst_root, [rec for rec, _ in kept], mode, recursive)
    for (_, out), what in zip(kept, placed):
        out.placed = what
    return captions


def check_folders(src: Path, dst: Path, recursive: bool) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: no such folder (SRC must be a folder of images)")
    if dst_r == src_r:
        raise ValueError(f"{dst}: DST is SRC; choose another folder for the images that pass")
    if recursive and dst_r.is_relative_to(src_r):
        raise ValueError(f"{dst}: DST is inside SRC and --recursive would score its images next time; choose a "
                         f"folder outside {src}")


def filter_folder(src: Path, dst: Path, engine, min_score: float | None = 6.0, top_k: int = 0,
                  mode: str = "copy", recursive: bool = False, results: Path | None = None,
                  progress: ScoreProgress | None = None) -> FilterReport:
    """Score every image under ``src`` (reusing stored results) and place those that pass into ``dst``. Raises
    NothingScorable when no file could be scored."""
    from .remote import is_uri

    remote = is_uri(src)
    src, dst = (str(src) if remote else Path(src)), Path(dst)
    if remote and isinstance(engine, LocalEngine):
        raise ValueError(f"{src}: URIs are read by the Ray engine only (add --engine ray), or mount the folder")
    if remote and mode == "link":
        raise ValueError(f"{src}: files on a URI cannot be linked into DST; copy them (--copy)")
    if not remote:
        check_folders(src, dst, recursive)
    files = source_files([src], recursive, root=None if remote else src)
    store = ResultsStore(results if results is not None else dst / RESULTS_DIR)
    records = score_with_store(files, engine, store, progress)
    report = FilterReport(str(src), str(dst), min_score, top_k)
    report.files = choose(records, min_score, top_k)
    if not report.scored:
        reasons = "; ".join(f"{f.name}: {f.reason}" for f in report.files) or "it holds no files"
        raise NothingScorable(f"{src}: no image could be scored; {reasons}")
    if remote:  # the kept files are downloaded once, then placed as local ones
        dst.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".aesthete-stage-", dir=dst) as stage:
            staged = stage_remote(src, Path(stage), records, report.files, recursive)
            report.captions = _place(Path(stage), dst, staged, report.files, "copy", recursive)
    else:
        report.captions = _place(src, dst, records, report.files, mode, recursive)
    for name in report.conflicts:
        log.warning("%s: a different file of that name is in %s already: left alone", name, dst)
    return report
