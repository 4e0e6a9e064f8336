"""Where an image's caption comes from, the one rule for training datasets and for scorers that read prompts from
captions: kohya's ``name.txt`` beside the image, a tag list in ``name.json``, or DiffSynth's ``metadata.csv``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from .tags import split_tags


METADATA_CSV = "metadata.csv"


class CaptionError(ValueError):
    """A caption file exists but cannot be read; the message names the file."""


def read_metadata_csv(folder: Path) -> dict[str, str]:
    """``metadata.csv`` (columns ``file_name,text``, DiffSynth's layout) as {file name: caption}; {} when absent."""
    path = folder / METADATA_CSV
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        return parse_metadata_csv(f.read(), str(path))


def parse_metadata_csv(text: str, where: str) -> dict[str, str]:
    """The text of a ``metadata.csv`` (read from ``where``, which the error names) as {file name: caption}."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    fields = {name.strip().lower(): name for name in reader.fieldnames or []}
    if "file_name" not in fields or "text" not in fields:
        raise CaptionError(f"{where}: needs the columns file_name,text (found {reader.fieldnames})")
    return {row[fields["file_name"]].strip(): (row[fields["text"]] or "").strip() for row in reader
            if row.get(fields["file_name"])}


def read_json_tags(path: Path) -> list[str]:
    """A tag file: a JSON list of tags, or an object whose ``tags`` (or ``text``/``caption``) holds them."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CaptionError(f"{path}: not a readable JSON tag file ({e})") from e
    return parse_json_tags(text, str(path))


def parse_json_tags(text: str, where: str) -> list[str]:
    """The tags of a JSON tag file's text (read from ``where``, which the error names)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionError(f"{where}: not a readable JSON tag file ({e})") from e
    if isinstance(data, dict):
        data = next((data[k] for k in ("tags", "text", "caption") if k in data), None)
    if isinstance(data, str):
        return split_tags(data)
    if isinstance(data, list) and all(isinstance(t, str) for t in data):
        return [t.strip() for t in data if t.strip()]
    raise CaptionError(f"{where}: expected a list of tags or {{\"tags\": [...]}}")


def find_caption(image: Path, metadata: dict[str, str], relative: str | None = None) -> tuple[list[str], str]:
    """The tags of ``image`` and where they came from (``txt``, ``json``, ``csv`` or ``none``).
    A ``name.txt`` beside the image wins over ``name.json``, which wins over ``metadata.csv`` (whose file_name is
    the path relative to the dataset folder, ``relative``, or the bare file name)."""

    def sidecar(suffix: str) -> str | None:
        path = image.with_suffix(suffix)
        if not path.is_file():
            return None
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CaptionError(f"{path}: cannot be read ({e})") from e

    return caption_from(sidecar, str(image.with_suffix("")), image.name, metadata, relative)


def caption_from(sidecar: Callable[[str], str | None], stem: str, name: str, metadata: dict[str, str],
                 relative: str | None = None) -> tuple[list[str], str]:
    """``find_caption``'s rule over any storage: ``sidecar(".txt")`` gives the text of the file beside the image with
    that suffix, or None where there is none; ``stem`` names those files in errors, ``name`` is the image's file
    name (a ``metadata`` key, as is ``relative``)."""
    text = sidecar(".txt")
    if text is not None:
        return split_tags(text), "txt"
    text = sidecar(".json")
    if text is not None:
        return parse_json_tags(text, stem + ".json"), "json"
    for key in (relative, name):
        if key and key in metadata:
            return split_tags(metadata[key]), "csv"
    return [], "none"
