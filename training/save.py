"""A trained LoRA (tensors in ComfyUI's key format plus metadata) and what the trainer writes into it. The files
themselves (reading, atomic writing, numbering, the DiffSynth copy) are the LoRA area's: ``lora.files``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..lora.files import read_lora_file, write_converted_copy, write_safetensors

log = logging.getLogger("aesthete.training")

class SaveError(ValueError):
    """A save name or file cannot be used; the message names it."""


@dataclass
class TrainedLora:
    """What the trainer hands to the save node: ComfyUI-format tensors and string metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return max((v.shape[0] for k, v in self.tensors.items() if k.endswith(".lora_down.weight")), default=0)


def build_metadata(*, base_model: str, rank: int, alpha: float, epochs: int, steps: int, dataset_size: int,
                   settings: dict, targets: list[str] | tuple[str, ...], extra: dict | None = None) -> dict[str, str]:
    """safetensors metadata (strings only); ``ss_network_dim``/``ss_network_alpha`` are what other LoRA tools read."""
    meta = {
        "aesthete.format": "comfyui-lora",
        "aesthete.base_model": base_model,
        "aesthete.rank": str(rank),
        "aesthete.alpha": f"{alpha:g}",
        "aesthete.epochs": str(epochs),
        "aesthete.steps": str(steps),
        "aesthete.dataset_size": str(dataset_size),
        "aesthete.targets": ",".join(targets),
        "aesthete.settings": json.dumps(settings, sort_keys=True, default=str),
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_lora(lora: TrainedLora, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``lora`` to ``path`` (optionally cast to ``dtype``; ``.alpha`` scalars too)."""
    tensors = lora.tensors if dtype is None else {k: v.to(dtype) for k, v in lora.tensors.items()}
    path = write_safetensors(path, tensors, lora.metadata)
    log.info("Aesthete: saved LoRA %s (%d tensors, rank %d)", path, len(tensors), lora.rank)
    return path


def read_lora(path: str | Path) -> TrainedLora:
    """A LoRA file back, read by the LoRA area's reader (tensors on the CPU; safetensors never runs code)."""
    tensors, metadata = read_lora_file(path)
    return TrainedLora(tensors, metadata)


# the formats Save LoRA writes beside the ComfyUI file: file suffix, what the copy is for
COPY_FORMATS = {"diffsynth": (".diffsynth.safetensors", "DiffSynth-Studio 1.x (its Kolors/SD LoRA loading)"),
                "diffusers": (".diffusers.safetensors", "diffusers/peft (pipe.load_lora_weights)")}


def save_copy(lora: TrainedLora, comfy_file: str | Path, to: str,
              dtype: torch.dtype | None = None) -> tuple[Path, dict[str, str]]:
    """A copy of ``lora`` in ``to``'s key format ("diffsynth" or "diffusers", see ``COPY_FORMATS``) beside the
    ComfyUI file ``comfy_file`` (``lora.files.write_converted_copy``), its tensors cast to ``dtype`` as the ComfyUI
    file's are. Returns its path and metadata."""
    comfy_file = Path(comfy_file)
    path = comfy_file.with_name(comfy_file.stem + COPY_FORMATS[to][0])
    tensors = lora.tensors if dtype is None else {k: v.to(dtype) for k, v in lora.tensors.items()}
    return write_converted_copy(tensors, lora.metadata, path, to)
