"""Named composer presets: one JSON file per name in a folder the caller gives (the node gives a subfolder of
ComfyUI's user directory). A name never writes outside that folder; files are written atomically. The pack's own
presets (``prompts/presets/*.json``) are read-only defaults that a user preset of the same name shadows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..common.files import write_atomic
from ..common.paths import path_inside
from .composer import Composition

log = logging.getLogger("aesthete.prompts")

SHIPPED_DIR = Path(__file__).resolve().parent / "presets"
FORMAT = "aesthete-prompt-composer"
VERSION = 1
MAX_NAME_LENGTH = 100
_FORBIDDEN = set('/\\:*?"<>|')


def check_name(name: str) -> str:
    """The preset name, stripped; ValueError when it is empty, too long, or could name a path."""
    clean = (name or "").strip()
    if not clean:
        raise ValueError("preset name is empty: type a name such as 'ganyu-portrait'")
    if len(clean) > MAX_NAME_LENGTH:
        raise ValueError(f"preset name {clean[:20]!r}... is longer than {MAX_NAME_LENGTH} characters")
    bad = sorted({c for c in clean if c in _FORBIDDEN or ord(c) < 32})
    if bad or clean.startswith(".") or clean in {".", ".."}:
        raise ValueError(f"preset name {clean!r} may not start with '.' or contain {''.join(bad) or '.'} or any of "
                         "/ \\ : * ? \" < > |; use letters, digits, spaces, '-' or '_'")
    return clean


def preset_path(folder: Path, name: str) -> Path:
    """Where preset ``name`` lives in ``folder``; never outside it."""
    # check_name refuses separators and leading dots, so the file is directly in ``folder``
    return path_inside(folder, f"{check_name(name)}.json", what="preset name")


def list_presets(folder: Path | None) -> list[str]:
    """Names of the user's presets in ``folder`` and of the pack's own, sorted, without duplicates."""
    names = set()
    for d in (folder, SHIPPED_DIR):
        if d is not None and Path(d).is_dir():
            names.update(p.stem for p in Path(d).glob("*.json") if _is_valid_name(p.stem))
    return sorted(names, key=str.casefold)


def _is_valid_name(name: str) -> bool:
    try:
        return check_name(name) == name
    except ValueError:
        return False


def find_preset(folder: Path | None, name: str) -> Path:
    """The file of preset ``name``: the user's folder first, then the pack's own presets."""
    for d in (folder, SHIPPED_DIR):
        if d is None:
            continue
        path = preset_path(Path(d), name)
        if path.is_file():
            return path
    where = f"{folder} or {SHIPPED_DIR}" if folder is not None else str(SHIPPED_DIR)
    raise FileNotFoundError(f"composer preset {name!r} not found in {where}; save one with the Save Prompt Preset "
                            "node or pick a listed name")


def save_preset(folder: Path, name: str, comp: Composition, overwrite: bool = True) -> Path:
    """Write ``comp`` as preset ``name`` in ``folder`` (created if needed), atomically; returns the file."""
    path = preset_path(folder, name)
    if path.exists() and not overwrite:
        raise FileExistsError(f"composer preset {name!r} already exists ({path}); switch overwrite on or pick "
                              "another name")
    data = {"format": FORMAT, "version": VERSION, "name": check_name(name), **comp.to_dict()}
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    log.info("saved composer preset %r to %s", name, path)
    return path


def load_preset(folder: Path | None, name: str) -> Composition:
    """Read preset ``name`` (the user's folder first, then the pack's own); errors name the file."""
    path = find_preset(folder, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON composer preset: {e}") from e
    if isinstance(data, dict) and data.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
    return Composition.from_dict(data, source=str(path))
