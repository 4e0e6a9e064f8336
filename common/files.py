"""Writing files so that a crash, a full disk or a cancel never leaves half a file under the final name: the
content goes to a hidden temporary file in the same folder, which is then renamed over the target (``os.replace``
is atomic on one file system). Hidden names (``.name.XXXX.tmp``) are never listed as images or models."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[Path], None], *,
                 encoding: str = "utf-8") -> Path:
    """Write ``content`` to ``path`` atomically and return the path; its folder is created. ``content`` is text,
    bytes, or a function that writes the temporary file whose path it is given (``image.save``, ``save_file``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if callable(content):
            os.close(fd)
            content(Path(tmp))
        else:
            data = content.encode(encoding) if isinstance(content, str) else content
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, object] | None = None) -> Path:
    """``tensors`` (moved to the CPU, made contiguous) and ``metadata`` to a .safetensors file, atomically.
    safetensors metadata holds strings only: any other value is stored as JSON."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return write_atomic(path, lambda tmp: save_file(cpu, str(tmp), metadata=meta))
