"""Filtering a dataset by aesthetic score: score every image under SRC and put those that pass into DST, with their
caption files, keeping relative paths (``aesthete filter``).

- Scores come from an engine: ``local`` (``score_files`` of scoring/folder.py, in batches) or ``ray``
  (scoring/ray_engine.py, the same opener, preprocessing and forward on a Ray cluster). Both give ``ScoreRecord``s.
- ``ResultsStore`` keeps every file's score or skip reason keyed by path, size, modification time and predictor, so a
  re-run skips what is already scored and an interrupted run resumes: ``scores.jsonl`` (the local engine appends
  one line per file after every batch) and ``parquet/*.parquet`` (the Ray engine's shards).
- Placing never overwrites a file that differs: a new file appears under its final name in one step (a hard link
  of a complete temporary copy, or of the source), so a reader never sees half a file.
- Captions travel with their image: ``stem.txt``, ``stem.caption``, ``stem.json``, ``stem.tags`` beside it, and
  the image's rows of a ``metadata.csv`` (the ``file_name`` column, relative to the csv's folder).
"""

from __future__ import annotations

import csv
import errno
import filecmp
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from ..common.files import write_atomic
from .folder import FolderReport, NothingScorable, score_files
from ..common.images import DEFAULT_MAX_PIXELS, open_image
from .predictor import ScoreProgress
from .ranking import rank_by_score

log = logging.getLogger("aesthete.scoring")

RESULTS_DIR = ".aesthete"  # inside DST: hidden, so it is never scored or listed as data
CAPTION_SIDECARS = (".txt", ".caption", ".json", ".tags")  # stem + suffix beside an image
METADATA_CSV = "metadata.csv"
FILE_NAME_COLUMN = "file_name"  # Hugging Face imagefolder / DiffSynth metadata.csv


@dataclass(frozen=True)
class SourceFile:
    """One file to score: where it is, its name in reports (relative to SRC, posix), and its size and mtime (the
    results store's key, with ``path``)."""
    path: str
    name: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScoreRecord:
    """A file's result: a score, or the reason it was skipped (``score`` None). ``note``: scored with a remark."""
    path: str
    name: str
    size: int
    mtime_ns: int
    model: str
    score: float | None
    reason: str = ""
    note: str = ""
    scores: dict[str, float] | None = None  # a judge of several scorers: each one's score (``score`` combines them)

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.path, self.size, self.mtime_ns, self.model)


def source_files(paths: Iterable[Path | str], recursive: bool = False, root: Path | None = None) -> list[SourceFile]:
    """The files of ``paths`` as ``score`` lists them (scoring.folder.collect_files), with size and mtime. Names are
    relative to ``root`` when given. A URI (s3://...; the Ray engine reads those) lists its files through pyarrow,
    named relative to it when it is the only path."""
    from .folder import collect_files
    from .remote import is_uri, list_uri

    paths = list(paths)
    files = []
    for uri in (str(p) for p in paths if is_uri(p)):
        files.extend(SourceFile(path, name if len(paths) == 1 else path, size, mtime)
                     for path, name, size, mtime in list_uri(uri, recursive))
    for path in collect_files([p for p in paths if not is_uri(p)], recursive):
        try:
            st = path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # the opener reports why; an unreadable file is not cached
            size, mtime = -1, -1
        name = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else str(path)
        # the store's key: the absolute path, so a run from another folder still finds what was scored
        files.append(SourceFile(os.path.abspath(path), name, size, mtime))
    return files


def model_key(folder: Path, dtype: str) -> str:
    """What identifies a predictor's scores: its folder, weights (size and mtime) and dtype."""
    folder = Path(folder).resolve()
    stamp = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.iterdir())
             if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()]
    return f"{folder}|{dtype}|{','.join(stamp)}"


class ResultsStore:
    """Scores already computed, in ``folder`` (see the module docstring). Lines cut short by an interrupted run and
    Parquet files that cannot be read are ignored (those files are scored again)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.jsonl = self.folder / "scores.jsonl"
        self.parquet_dir = self.folder / "parquet"

    def load(self) -> dict[tuple, ScoreRecord]:
        records: dict[tuple, ScoreRecord] = {}
        if self.jsonl.is_file():
            with open(self.jsonl, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = ScoreRecord(**json.loads(line))
                    except (ValueError, TypeError):
                        continue
                    records[rec.key] = rec
        shards = sorted(self.parquet_dir.glob("*.parquet")) if self.parquet_dir.is_dir() else []
        if shards:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                log.warning("%s: Parquet results need pyarrow (pip install pyarrow); those files are scored again",
                            self.parquet_dir)
                shards = []
            for shard in shards:
                try:
                    rows = pq.read_table(shard).to_pylist()
                except Exception as e:  # noqa: BLE001 - a shard cut short: score its files again
                    log.warning("%s: unreadable (%s); its files are scored again", shard, e)
                    continue
                for row in rows:
                    rec = record_from_row(row)
                    records[rec.key] = rec
        return records

    def append(self, records: Sequence[ScoreRecord]) -> None:
        """Add records to scores.jsonl, on disk before this returns (a crash loses at most the batch in flight)."""
        if not records:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def record_from_row(row: dict) -> ScoreRecord:
    score = row.get("score")
    if score is not None and not math.isfinite(score):
        score = None
    scores = json.loads(row["scores"]) if row.get("scores") else None
    return ScoreRecord(path=row["path"], name=row["name"], size=int(row["size"]), mtime_ns=int(row["mtime_ns"]),
                       model=row["model"], score=score, reason=row.get("reason") or "", note=row.get("note") or "",
                       scores=scores)


# (files done, files in all) -> None


def scorer_key(scorer) -> str:
    """What identifies a scorer's scores: a predictor folder's ``model_key``, a catalog scorer's id and dtype, a
    judge's scorers with their weights."""
    from .judge import Judge, scorer_id
    from .predictor import DTYPES

    if isinstance(scorer, Judge):
        if len(scorer.entries) == 1:
            return scorer_key(scorer.entries[0][0])
        return "judge:" + ";".join(f"{w:g}*{scorer_key(s)}" for s, w in scorer.entries)
    dtype = next((k for k, v in DTYPES.items() if v == scorer.dtype), str(scorer.dtype))
    folder = getattr(scorer, "folder", None)
    return model_key(folder, dtype) if folder is not None else f"{scorer_id(scorer)}|{dtype}"


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


def same_file_content(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def place_file(src: Path, dst: Path, mode: str = "copy") -> str:
    """Put ``src`` at ``dst`` (``copy``, or ``link``: a hard link, a symbolic link across filesystems) unless a file is
    there already. Returns what happened: "copied", "linked", "already there" (same content), or "differs: left
    alone". The file appears complete under its final name in one step, never replacing one that is there."""
    if dst.exists() or dst.is_symlink():
        return "already there" if same_file_content(src, dst) else "differs in DST: left alone"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if mode == "link":
            try:
                os.link(src, dst)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                    raise
                os.symlink(src.resolve(), dst)
            return "linked"
        _copy_new(src, dst)
        return "copied"
    except FileExistsError:  # appeared meanwhile (another run): the same rule applies
        return "already there" if same_file_content(src, dst) else "differs in DST: left alone"


def _copy_new(src: Path, dst: Path) -> None:
    """Copy into a temporary file beside ``dst``, then give it its name with a hard link, which fails if the name is
    taken (on filesystems without hard links: a rename after checking the name is free)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        shutil.copystat(src, tmp)
        try:
            os.link(tmp, dst)
        except FileExistsError:
            raise
        except OSError:
            if dst.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
            os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def caption_files(image: Path) -> list[Path]:
    """The caption files that belong to ``image``: same stem, a caption suffix, in the same folder."""
    return [image.with_suffix(s) for s in CAPTION_SIDECARS if image.with_suffix(s).is_file()]


def merge_metadata(src_csv: Path, dst_csv: Path, keep: set[str]) -> str:
    """Write into ``dst_csv`` the rows of ``src_csv`` whose ``file_name`` (relative to the csv's folder) is in ``keep``,
    after the rows ``dst_csv`` already has (a row already there with other values is left as it is). Returns what
    happened, or "" when no row was kept."""
    with open(src_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    header, body = rows[0], rows[1:]
    col = header.index(FILE_NAME_COLUMN) if FILE_NAME_COLUMN in header else 0
    wanted = [r for r in body if len(r) > col and Path(r[col]).as_posix() in keep]
    if not wanted:
        return ""
    existing: list[list[str]] = []
    if dst_csv.is_file():
        with open(dst_csv, encoding="utf-8", newline="") as f:
            old = list(csv.reader(f))
        if old and old[0] != header:
            return f"differs in DST (columns {old[0]} vs {header}): left alone"
        existing = old[1:]
    have = {r[col]: r for r in existing if len(r) > col}
    added = [r for r in wanted if r[col] not in have]
    differing = [r[col] for r in wanted if r[col] in have and have[r[col]] != r]
    if added:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *existing, *added])
        write_atomic(dst_csv, buf.getvalue())
    what = f"{len(added)} row(s) added" if added else "rows already there"
    if differing:
        what += f"; differs in DST for {', '.join(differing[:5])}: left alone"
    return what


def place_kept(src_root: Path, dst_root: Path, records: Sequence[ScoreRecord], outcomes: Sequence[FileOutcome],
               mode: str = "copy", recursive: bool = False) -> list[tuple[str, str]]:
    """Place the kept images and their caption files under ``dst_root`` at their paths relative to ``src_root``;
    sets each outcome's ``placed``. Returns what happened to each caption file and metadata.csv."""
    captions: list[tuple[str, str]] = []
    kept_names: set[str] = set()
    for rec, out in zip(records, outcomes):
        if not out.kept:
            continue
        src, rel = Path(rec.path), Path(rec.name)  # the name is the path relative to src_root
        kept_names.add(rel.as_posix())
        out.placed = place_file(src, dst_root / rel, mode)
        for cap in caption_files(src):
            cap_rel = rel.with_name(cap.name)
            captions.append((cap_rel.as_posix(), place_file(cap, dst_root / cap_rel, mode)))
    pattern = f"**/{METADATA_CSV}" if recursive else METADATA_CSV
    for meta in sorted(src_root.glob(pattern)):
        rel_dir = meta.parent.relative_to(src_root)
        if any(part.startswith(".") for part in rel_dir.parts):
            continue
        prefix = "" if rel_dir == Path(".") else rel_dir.as_posix() + "/"
        keep = {n[len(prefix):] for n in kept_names if n.startswith(prefix)}
        what = merge_metadata(meta, dst_root / rel_dir / METADATA_CSV, keep) if keep else ""
        if what:
            captions.append(((rel_dir / METADATA_CSV).as_posix(), what))
    return captions


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
            report.captions = place_kept(Path(stage), dst, staged, report.files, "copy", recursive)
    else:
        report.captions = place_kept(src, dst, records, report.files, mode, recursive)
    for name in report.conflicts:
        log.warning("%s: a different file of that name is in %s already: left alone", name, dst)
    return report
