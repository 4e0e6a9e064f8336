"""Which names a user may give for a file or folder under a root: the one rule every node and the command line use.

The rule (``path_inside``):
- The name is stripped of surrounding spaces. An empty name (or ``.``) is refused: it names no file or folder, and
  silently meaning "the root itself" made one node read the whole input directory where another refused.
- The name joined to the root and normalised must lie strictly inside the root (an absolute name is accepted
  only when it does). The check is lexical (``os.path.normpath``): ``..`` and absolute names cannot leave the
  root, but a symlink a user placed inside the root is followed, as ComfyUI's own ``folder_paths`` does (a model
  folder may be a link to a shared store): whoever can place a link in the folder could place the file itself.
- ``allow_outside=True`` (a node's "allow outside" switch, the command line) accepts absolute and climbing names;
  an empty name is still refused.
"""

from __future__ import annotations

import os
from pathlib import Path


class OutsideRootError(ValueError):
    """A name that is empty or leads outside its root; the message names it and what to give instead."""


def path_inside(root: str | os.PathLike, name: str, *, what: str = "name", where: str = "",
                hint: str = "", allow_outside: bool = False) -> Path:
    """``root / name`` as an absolute, normalised path that lies strictly inside ``root`` (see the module's rule).
    The error names the input (``what``: "save name", "folder"), the root in the user's words (``where``:
    "ComfyUI's input directory") and what else the user can do (``hint``)."""
    base = Path(os.path.normpath(os.path.abspath(root)))
    place = f"{where} ({base})" if where else str(base)
    clean = (name or "").strip()
    if not clean or clean == "." or "\x00" in clean:
        raise OutsideRootError(f"{what} {name!r}: give the name of something inside {place}, such as 'my_style' or "
                               "'styles/my_style'")
    path = Path(os.path.normpath(base / clean))  # an absolute name replaces the base
    if allow_outside:
        return path
    if not path.is_relative_to(base) or path == base:
        raise OutsideRootError(f"{what} {name!r} leads outside {place}; give a name inside it"
                               + (f", or {hint}" if hint else ""))
    return path


PACK_DIR = Path(__file__).resolve().parents[1]  # the pack's folder (the repository root)


def models_root(pack_dir: str | os.PathLike = PACK_DIR, environ: dict | None = None) -> Path:
    """The models folder the command line shares with the nodes, so a model is never fetched twice:

    1. ``$AESTHETE_MODELS_DIR``, when set;
    2. ``<ComfyUI>/models`` of the ComfyUI the pack is installed in (``<ComfyUI>/custom_nodes/<pack>``);
    3. ``.comfyui/base/models`` beside a checkout that ``make run`` set up (the folder its ComfyUI uses);
    4. ``models`` in the current folder, otherwise.
    ComfyUI's extra_model_paths.yaml is not read: set ``$AESTHETE_MODELS_DIR`` when models live elsewhere."""
    environ = os.environ if environ is None else environ
    if environ.get("AESTHETE_MODELS_DIR"):
        return Path(environ["AESTHETE_MODELS_DIR"])
    pack = Path(os.path.abspath(pack_dir))
    if pack.parent.name == "custom_nodes" and (pack.parent.parent / "models").is_dir():
        return pack.parent.parent / "models"
    if (pack / ".comfyui" / "base" / "models").is_dir():
        return pack / ".comfyui" / "base" / "models"
    return Path("models")
