"""Reading a scorer's weights strictly: a truncated file, or one of another model, is a ScorerFileError naming the
file, never a model with some weights left at random (transformers' ``from_pretrained`` only warns about those)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import torch

from ...common.tensors import TensorFileError, load_pickle, read_safetensors
from .errors import ScorerFileError

REDOWNLOAD = "delete it and load the scorer again to download it, or put the publisher's file there"


def check_safetensors(path: Path) -> None:
    """The file's header is readable and its tensors end where the file ends (a download cut short does not)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError) as e:
        raise ScorerFileError(f"{path}: not a readable safetensors file ({e}); {REDOWNLOAD}") from e
    if 8 + n + end != size:
        raise ScorerFileError(f"{path}: {size} bytes where its header needs {8 + n + end} (a download cut short?); "
                              f"{REDOWNLOAD}")


def read_weights(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors; ``dtype``: a safetensors file's floating tensors come cast to it, read one at a time (the
    model's weights are never held in the file's precision and the model's at once)."""
    path = Path(path)
    try:
        if path.suffix in (".safetensors", ".sft"):
            check_safetensors(path)
            return read_safetensors(path, REDOWNLOAD, dtype)
        return load_pickle(path, "Use the safetensors file of the DiffSynth repository instead.", REDOWNLOAD)
    except TensorFileError as e:
        raise ScorerFileError(str(e)) from e


def load_strict(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], path: Path,
                ignore: Callable[[str], bool] = lambda key: False) -> torch.nn.Module:
    """``build()`` on the meta device, then the file's tensors assigned to it (no second copy, no random init);
    every weight must come from the file and every tensor of the file must fit, else ScorerFileError."""
    with torch.device("meta"):
        model = build()
    state = {k: v for k, v in state.items() if not ignore(k)}
    expected = {k for k in model.state_dict() if not ignore(k)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ScorerFileError(f"{path}: not this scorer's weights ({len(missing)} missing, e.g. {missing[:3]}; "
                              f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}); {REDOWNLOAD}")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a shape that does not fit
        raise ScorerFileError(f"{path}: tensors of other shapes than this scorer's ({str(e)[:300]}); "
                              f"{REDOWNLOAD}") from e
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (position ids) are not in files: make them as the model would
            if not name.endswith("position_ids"):
                raise ScorerFileError(f"{path}: no value for {name}; {REDOWNLOAD}")
            owner = model.get_submodule(name.rpartition(".")[0])
            setattr(owner, name.rpartition(".")[2], torch.arange(buf.shape[-1]).expand(buf.shape).clone())
    return model.eval()
