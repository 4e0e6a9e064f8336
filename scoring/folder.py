"""Scoring every image of folders (the reference ``evaluate(folder)``), skipping bad files with a reason."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..common.files import write_atomic
from .images import DEFAULT_MAX_PIXELS, list_images, open_image
from .predictor import AestheticPredictor, ScoreProgress



class NothingScorable(ValueError):
    """No file could be scored; the message lists why each one was skipped."""


@dataclass
class FolderReport:
    scored: list[tuple[Path, float]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)  # scored, with a remark (animated: first frame)
    root: Path | None = None

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
        """One ``score<TAB>file`` line per scored file, in file order."""
        return "\n".join(f"{s:.4f}\t{self.name_of(p)}" for p, s in self.scored)

    def skipped_text(self) -> str:
        return "\n".join(f"{self.name_of(p)}: {r}" for p, r in self.skipped)

    def summary(self) -> str:
        head = (f"mean {self.mean:.4f} over {self.count} image(s)" if self.count else "no image scored")
        return head + (f", {len(self.skipped)} skipped" if self.skipped else "")

    def as_dict(self) -> dict:
        return {"mean": self.mean if self.count else None, "count": self.count,
                "files": [{"file": self.name_of(p), "score": s} for p, s in self.scored],
                "skipped": [{"file": self.name_of(p), "reason": r} for p, r in self.skipped],
                "notes": [{"file": self.name_of(p), "note": r} for p, r in self.notes]}

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["file", "score", "skipped_reason"])
        writer.writerows([self.name_of(p), f"{s:.6f}", ""] for p, s in self.scored)
        writer.writerows([self.name_of(p), "", r] for p, r in self.skipped)
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


def score_files(predictor: AestheticPredictor, files: Sequence[Path], batch_size: int = 16,
                max_pixels: int = DEFAULT_MAX_PIXELS, background: tuple[int, int, int] | None = (255, 255, 255),
                progress: ScoreProgress | None = None, interrupt: Callable[[], None] | None = None,
                root: Path | None = None) -> FolderReport:
    """Score ``files`` in batches of ``batch_size`` decoded images (only one batch is held in memory). Bad files
    are skipped with a logged reason; raises NothingScorable when no file could be scored."""
    report = FolderReport(root=root)
    pending: list = []

    def flush() -> None:
        if interrupt is not None:
            interrupt()
        if pending:
            scores = predictor.forward(predictor.preprocess([o.image for o in pending])).tolist()
            report.scored.extend((o.path, s) for o, s in zip(pending, scores))
            pending.clear()

    for n, path in enumerate(files, 1):
        opened = open_image(path, max_pixels=max_pixels, background=background)
        if opened.skipped:
            report.skipped.append((path, opened.reason))
        else:
            if opened.reason:
                report.notes.append((path, opened.reason))
            pending.append(opened)
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
        raise NothingScorable(f"{where}: no image could be scored; {reasons}")
    return report


def score_folder(predictor: AestheticPredictor, folder: Path, recursive: bool = False, **kwargs) -> FolderReport:
    """The reference ``evaluate(folder)`` made safe: the mean over every scorable file, the per-file scores and the
    skipped files with reasons. An empty or missing folder is an error, never a mean of 0."""
    folder = Path(folder)
    return score_files(predictor, list_images(folder, recursive), root=folder, **kwargs)



def write_report(report: FolderReport, path: Path, fmt: str) -> None:
    """Write the per-file scores as ``json`` or ``csv`` (atomically)."""
    text = (json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n") if fmt == "json" else report.csv_text()
    write_atomic(path, text)
