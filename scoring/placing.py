"""Placing the images a filter keeps into DST, with their captions (``aesthete filter``'s second half).

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
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..common.captions import METADATA_CSV
from ..common.files import write_atomic

if TYPE_CHECKING:
    from .store import ScoreRecord

CAPTION_SIDECARS = (".txt", ".caption", ".json", ".tags")  # stem + suffix beside an image
FILE_NAME_COLUMN = "file_name"  # Hugging Face imagefolder / DiffSynth metadata.csv


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


def place_kept(src_root: Path, dst_root: Path, kept: Sequence[ScoreRecord], mode: str = "copy",
               recursive: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """Place the kept images and their caption files under ``dst_root`` at their paths relative to ``src_root``.
    Returns what happened to each image (as ``place_file`` says), and to each caption file and metadata.csv."""
    captions: list[tuple[str, str]] = []
    kept_names: set[str] = set()
    placed: list[str] = []
    for rec in kept:
        src, rel = Path(rec.path), Path(rec.name)  # the name is the path relative to src_root
        kept_names.add(rel.as_posix())
        placed.append(place_file(src, dst_root / rel, mode))
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
    return placed, captions
