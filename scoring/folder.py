"""Scoring every image of folders (the reference ``evaluate(folder)``), skipping bad files with a reason."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import logging

from ..common.files import write_atomic
from ..common.images import DEFAULT_MAX_PIXELS, list_images, open_image
from ..common.captions import CaptionError, find_caption, read_metadata_csv
from .predictor import ScoreProgress



log = logging.getLogger("aesthete.scoring")


class NothingScorable(ValueError):
    """No file could be scored; the message lists why each one was skipped (``skipped``: file, reason)."""

    def __init__(self, message: str, skipped: list | None = None):
        super().__init__(message)
        self.skipped = skipped or []


@dataclass
class FolderReport:
    scored: list[tuple[Path, float]] = field(default_factory=list)  # a judge's combined score
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)  # scored, with a remark (animated: first frame)
    root: Path | None = None
    # every scorer's own score of the scored files, in order (a judge of several: one column each)
    columns: dict[str, list[float]] = field(default_factory=dict)

    @property
    def per_scorer(self) -> bool:
        """Whether the report has more than the one score per file (a judge of several scorers)."""
        return len(self.columns) > 1

    @property
    def count(self) -> int:
        return len(self.scored)

    @property
    def mean(self) -> float:
        return sum(s for _, s in self.scored) / len(self.scored) if self.scored else math.nan

    def name_of(self, path: Path) -> str:
        if self.root is not None and path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        return str(path)

    def table(self) -> str:
        """One ``score<TAB>file`` line per scored file, in file order; with a judge of several scorers a header and
        ``combined<TAB>each scorer's score...<TAB>file`` lines."""
        if not self.per_scorer:
            return "\n".join(f"{s:.4f}\t{self.name_of(p)}" for p, s in self.scored)
        head = "\t".join(["combined", *self.columns, "file"])
        return "\n".join([head] + ["\t".join([f"{s:.4f}", *(f"{c[i]:.4f}" for c in self.columns.values()),
                                              self.name_of(p)]) for i, (p, s) in enumerate(self.scored)])

    def column_means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.columns.items() if v}

    def skipped_text(self) -> str:
        return "\n".join(f"{self.name_of(p)}: {r}" for p, r in self.skipped)

    def summary(self) -> str:
        head = (f"mean {self.mean:.4f} over {self.count} image(s)" if self.count else "no image scored")
        return head + (f", {len(self.skipped)} skipped" if self.skipped else "")

    def as_dict(self) -> dict:
        return {"mean": self.mean if self.count else None, "count": self.count,
                "files": [{"file": self.name_of(p), "score": s,
                           **({"scores": {k: c[i] for k, c in self.columns.items()}} if self.per_scorer else {})}
                          for i, (p, s) in enumerate(self.scored)],
                **({"scorer_means": self.column_means()} if self.per_scorer else {}),
                "skipped": [{"file": self.name_of(p), "reason": r} for p, r in self.skipped],
                "notes": [{"file": self.name_of(p), "note": r} for p, r in self.notes]}

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        extra = list(self.columns) if self.per_scorer else []
        writer.writerow(["file", "score", *extra, "skipped_reason"])
        writer.writerows([self.name_of(p), f"{s:.6f}", *(f"{self.columns[k][i]:.6f}" for k in extra), ""]
                         for i, (p, s) in enumerate(self.scored))
        writer.writerows([self.name_of(p), "", *([""] * len(extra)), r] for p, r in self.skipped)
        return buf.getvalue()


def collect_files(paths: Iterable[Path], recursive: bool = False) -> list[Path]:
    """Files named directly, and the files of named folders (sorted, optionally recursive)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(list_images(path, recursive))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def caption_of(root: Path | None) -> Callable[[Path], str]:
    """The caption of an image as the prompt a prompt-aware scorer reads: its ``.txt`` or ``.json`` beside it, else
    its ``metadata.csv`` row (common/captions.py's rule, the one LoRA Dataset keeps); "" when it has none."""

    tables: dict[Path, dict[str, str]] = {}

    def caption(path: Path) -> str:
        folder = path.parent
        if folder not in tables:
            tables[folder] = read_metadata_csv(folder)
        metadata = dict(tables[folder])
        relative = None
        if root is not None and Path(path).is_relative_to(root):
            relative = Path(path).relative_to(root).as_posix()
            if Path(root) not in tables:
                tables[Path(root)] = read_metadata_csv(Path(root))
            metadata = {**tables[Path(root)], **metadata}
        tags, _ = find_caption(Path(path), metadata, relative)
        return ", ".join(tags)

    return caption


def score_files(predictor, files: Sequence[Path], batch_size: int = 16,
                max_pixels: int = DEFAULT_MAX_PIXELS, background: tuple[int, int, int] | None = (255, 255, 255),
                progress: ScoreProgress | None = None, interrupt: Callable[[], None] | None = None,
                root: Path | None = None, prompt: str | None = None) -> FolderReport:
    """Score ``files`` in batches of ``batch_size`` decoded images (only one batch is held in memory) with a scorer
    or a judge (scoring/judge.py). A prompt-aware one reads ``prompt`` for every file when given, else each file's
    caption (``caption_of``); a file without a caption is skipped with the reason. Bad files are skipped with a
    logged reason; raises NothingScorable when no file could be scored."""
    from .judge import as_judge

    model = as_judge(predictor)
    report = FolderReport(root=root, columns={k: [] for k in model.ids})
    caption = caption_of(root) if model.prompt_aware and not (prompt or "").strip() else None
    pending: list = []
    prompts: list[str] = []

    def flush() -> None:
        if interrupt is not None:
            interrupt()
        if pending:
            table = model.score_table([o.image for o in pending], prompts if model.prompt_aware else None,
                                      batch_size=len(pending))
            report.scored.extend((o.path, s) for o, s in zip(pending, table.combined))
            for k, v in table.columns.items():
                report.columns[k].extend(v)
            pending.clear()
            prompts.clear()

    for n, path in enumerate(files, 1):
        opened = open_image(path, max_pixels=max_pixels, background=background)
        text, why = (prompt or "").strip(), opened.reason if opened.skipped else ""
        if not why and caption is not None:
            try:
                text = caption(path)
            except CaptionError as e:
                why = str(e)
            if not text and not why:
                why = f"no caption (.txt, .json or metadata.csv): {model.name} needs the prompt of every image"
        if why:
            if not opened.skipped:  # the opener logged its own reasons
                log.warning("skipped %s: %s", path, why)
            report.skipped.append((path, why))
        else:
            if opened.reason:
                report.notes.append((path, opened.reason))
            pending.append(opened)
            prompts.append(text)
            if len(pending) >= batch_size:
                flush()
        if progress is not None and (not pending or n == len(files)):
            progress(n, len(files))
    flush()
    if progress is not None:
        progress(len(files), len(files))
    if not report.scored:
        reasons = report.skipped_text() or "it holds no files"
        where = root if root is not None else "the given paths"
        raise NothingScorable(f"{where}: no image could be scored; {reasons}", report.skipped)
    return report


def score_folder(predictor, folder: Path, recursive: bool = False, **kwargs) -> FolderReport:
    """The reference ``evaluate(folder)`` made safe: the mean over every scorable file, the per-file scores and the
    skipped files with reasons. An empty or missing folder is an error, never a mean of 0."""
    folder = Path(folder)
    return score_files(predictor, list_images(folder, recursive), root=folder, **kwargs)



def write_report(report: FolderReport, path: Path, fmt: str) -> None:
    """Write the per-file scores as ``json`` or ``csv`` (atomically)."""
    text = (json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n") if fmt == "json" else report.csv_text()
    write_atomic(path, text)
