"""Where an image's caption comes from, the one rule for training datasets and for scorers that read prompts from
captions: kohya's ``name.txt`` beside the image, a tag list in ``name.json``, or DiffSynth's ``metadata.csv``."""

from __future__ import annotations

import csv
import json
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
        reader = csv.DictReader(f)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        if "file_name" not in fields or "text" not in fields:
            raise CaptionError(f"{path}: needs the columns file_name,text (found {reader.fieldnames})")
        return {row[fields["file_name"]].strip(): (row[fields["text"]] or "").strip() for row in reader
                if row.get(fields["file_name"])}


def read_json_tags(path: Path) -> list[str]:
    """A tag file: a JSON list of tags, or an object whose ``tags`` (or ``text``/``caption``) holds them."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CaptionError(f"{path}: not a readable JSON tag file ({e})") from e
    if isinstance(data, dict):
        data = next((data[k] for k in ("tags", "text", "caption") if k in data), None)
    if isinstance(data, str):
        return split_tags(data)
    if isinstance(data, list) and all(isinstance(t, str) for t in data):
        return [t.strip() for t in data if t.strip()]
    raise CaptionError(f"{path}: expected a list of tags or {{\"tags\": [...]}}")


def find_caption(image: Path, metadata: dict[str, str], relative: str | None = None) -> tuple[list[str], str]:
    """The tags of ``image`` and where they came from (``txt``, ``json``, ``csv`` or ``none``).
    A ``name.txt`` beside the image wins over ``name.json``, which wins over ``metadata.csv`` (whose file_name is
    the path relative to the dataset folder, ``relative``, or the bare file name)."""
    txt = image.with_suffix(".txt")
    if txt.is_file():
        return split_tags(txt.read_text(encoding="utf-8", errors="replace")), "txt"
    js = image.with_suffix(".json")
    if js.is_file():
        return read_json_tags(js), "json"
    for key in (relative, image.name):
        if key and key in metadata:
            return split_tags(metadata[key]), "csv"
    return [], "none"
