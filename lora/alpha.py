"""Which alpha a low-rank layer is applied with, and how the report says where it came from.

ComfyUI's loader scales a low-rank update by alpha/rank when the file stores ``<module>.alpha`` and by 1.0
otherwise. Files that store no alpha were trained with one all the same: DiffSynth 1.x files by peft at
lora_alpha 4 (the recipe's), diffusers/peft/DiffSynth 2.x files usually at alpha = rank (scale 1.0).
"""

from __future__ import annotations

from typing import Protocol

# DiffSynth 1.x trains with peft at lora_alpha 4 and stores no alpha; the recipe behind this pack does too
DEFAULT_TRAINING_ALPHA = 4.0


class LowRankLayer(Protocol):
    @property
    def alpha(self) -> float | None: ...

    @property
    def rank(self) -> int: ...


def resolve_alpha(layer: LowRankLayer, alpha: float | None, fmt: str) -> tuple[float, str]:
    """(alpha to use, where it came from) for a layer of a file in format ``fmt``.

    A stored alpha wins; else ``alpha`` when > 0; else the format's own convention ("automatic"): DiffSynth 1.x
    files were trained by peft at lora_alpha 4 (the recipe's), every other alpha-less file is applied at scale 1.0
    (alpha = rank) as ComfyUI, diffusers and DiffSynth 2.x (which trains with lora_alpha = rank) apply them."""
    if layer.alpha is not None:
        return layer.alpha, "file"
    if alpha is not None and alpha > 0:
        return float(alpha), "given"
    if fmt == "diffsynth":
        return DEFAULT_TRAINING_ALPHA, "diffsynth-recipe"
    return float(layer.rank), "rank"


def alpha_note(layers: list[LowRankLayer], alpha: float, fmt: str) -> str:
    """One line for the loader's report: the ranks, and which alpha was used where (file, given or automatic).
    Layers that are not low-rank (LoHa, LoKr, full differences) take what their file says, as in ComfyUI."""
    low_rank = [layer for layer in layers if layer.rank]
    if not low_rank:
        return "no low-rank layers: applied as stored"
    resolved = {resolve_alpha(layer, alpha, fmt) for layer in low_rank}
    sources = {source for _, source in resolved}
    assumed = ", ".join(f"{a:g}" for a in sorted({a for a, source in resolved if source != "file"}))
    assumed = f"alpha {assumed}" + (" (automatic)" if alpha <= 0 else "")
    note = ("alpha from the file" if sources == {"file"} else
            f"{assumed} (the file stores none)" if "file" not in sources else
            f"alpha from the file where stored, else {assumed}")
    ranks = sorted({layer.rank for layer in low_rank})
    return f"rank {','.join(map(str, ranks))}, {note}"


def alpha_hint(layers: list[LowRankLayer], alpha: float, fmt: str) -> str | None:
    """A note for files whose missing alpha was filled from the node's input although their trainers usually
    train with alpha = rank; None when it does not apply."""
    given = any(resolve_alpha(layer, alpha, fmt)[1] == "given" for layer in layers if layer.rank)
    if given and fmt != "diffsynth":
        return ("Note: this file stores no alpha and is not a DiffSynth 1.x file; its trainers (diffusers, peft, "
                "DiffSynth 2.x) usually train with alpha = rank: set alpha to 0 (automatic) for that.")
    return None
