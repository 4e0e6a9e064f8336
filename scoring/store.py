"""Scores already computed: the files to score (``SourceFile``), each file's result (``ScoreRecord``) and the store
that keeps them keyed by path, size, modification time and scorer, so a re-run skips what is already scored and an
interrupted run resumes: ``scores.jsonl`` (the local engine appends one line per file after every batch) and
``parquet/*.parquet`` (the Ray engine's shards).
"""


from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


log = logging.getLogger("aesthete.scoring")


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
