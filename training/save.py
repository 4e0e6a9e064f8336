"""A trained LoRA (tensors in ComfyUI's key format plus metadata) and its atomic safetensors files under a folder
that user-typed names never leave."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..common.files import write_safetensors
from ..common.paths import path_inside

log = logging.getLogger("aesthete.training")

SUFFIX = ".safetensors"


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


def numbered_path(root: str | Path, prefix: str, suffix: str = SUFFIX) -> Path:
    """The first free ``<prefix>_NNNNN<suffix>`` inside ``root`` (the folders of the prefix are created)."""
    base = path_inside(root, prefix, what="save name")
    base.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(base.name) + r"_(\d{5})" + re.escape(suffix) + "$")
    taken = [int(m[1]) for p in base.parent.iterdir() if (m := pattern.match(p.name))]
    return base.with_name(f"{base.name}_{max(taken, default=0) + 1:05d}{suffix}")


def save_lora(lora: TrainedLora, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``lora`` to ``path`` (optionally cast to ``dtype``; ``.alpha`` scalars too)."""
    tensors = lora.tensors if dtype is None else {k: v.to(dtype) for k, v in lora.tensors.items()}
    path = write_safetensors(path, tensors, lora.metadata)
    log.info("Aesthete: saved LoRA %s (%d tensors, rank %d)", path, len(tensors), lora.rank)
    return path


def read_lora(path: str | Path) -> TrainedLora:
    """A LoRA file back (tensors on the CPU; safetensors never runs code)."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return TrainedLora({k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {}))


def diffsynth_base(base_model: str) -> str | None:
    """The converter's base name for ComfyUI's model config name (Kolors is SDXL-architecture)."""
    name = base_model.lower()
    if "sdxl" in name or "kolors" in name:
        return "sdxl"
    return "sd15" if name in ("sd15", "sd15_instructpix2pix") else None


def save_diffsynth_copy(lora: TrainedLora, path: str | Path) -> tuple[Path, dict[str, str]]:
    """A copy in DiffSynth's key format (via the LoRA area's converter), beside the ComfyUI file. Returns the path
    and the converter's metadata (``aesthete.dropped_keys`` counts what DiffSynth's layout cannot hold)."""
    from ..lora.convert import convert_lora  # imported late: the conversion is optional

    base = diffsynth_base(lora.metadata.get("aesthete.base_model", ""))
    tensors, metadata = convert_lora(dict(lora.tensors), to="diffsynth", base=base)
    meta = {**lora.metadata, **{k: str(v) for k, v in (metadata or {}).items()}}
    return write_safetensors(path, tensors, meta), meta
