"""What the LoRA loader tells the user: the format, what it placed of how many tensors, each kind by naming
("kohya LoHa"), the alpha used, and what it could not place and why."""

from __future__ import annotations

from .alpha import alpha_hint, alpha_note
from .formats import ParsedLora

REPORT_EXAMPLES = 5


class LoraApplyError(ValueError):
    """A layer could be placed but not applied completely; nothing of the file was applied."""


def report_text(name: str, parsed: ParsedLora, alpha: float, missed: list | tuple = (),
                file_keys: int | None = None) -> str:
    """The loader's report (its summary line is :func:`summary`). ``file_keys``: how many tensors the file holds,
    when ComfyUI's converter (which runs first, as in core's loader) may have split or dropped some: the counts
    are then the converted tensors', and a line says so."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in parsed.kinds().items())
    lines = [f"LoRA: {name}",
             f"Format: {parsed.describe()}",
             f"Base: {parsed.base or 'unknown'}",
             summary(parsed, alpha),
             f"Layers by kind: {kinds}"]
    if parsed.unplaced:
        lines.append(f"Not placed: {len(parsed.unplaced)} tensors, for example:")
        lines += [f"  {key}: {why}" for key, why in list(parsed.unplaced.items())[:REPORT_EXAMPLES]]
    hint = alpha_hint(parsed.layers, alpha, parsed.format)
    if hint:
        lines.append(hint)
    if file_keys is not None and file_keys != parsed.total_keys:
        lines.append(f"ComfyUI's LoRA converter turned the file's {file_keys} tensors into {parsed.total_keys} "
                     f"(fused q/k/v split per projection, unused duplicates dropped); the counts above are those")
    if missed:
        lines.append(f"ComfyUI did not apply {len(missed)} placed layers, e.g. {list(missed)[:3]}")
    return "\n".join(lines)


def summary(parsed: ParsedLora, alpha: float) -> str:
    """One line: what was applied of how many tensors, UNet and text-encoder layers, the alpha used (the log's)."""
    unet_layers = sum(layer.is_unet for layer in parsed.layers)
    return (f"Applied {parsed.placed_keys} of {parsed.total_keys} tensors: {unet_layers} UNet layers, "
            f"{len(parsed.layers) - unet_layers} text-encoder layers; {alpha_note(parsed.layers, alpha, parsed.format)}")


def nothing_placed_message(where: str, parsed: ParsedLora) -> str:
    examples = "; ".join(f"{k}: {v}" for k, v in list(parsed.unplaced.items())[:3])
    return (f"{where}: none of its {parsed.total_keys} tensors fits this model (the file looks like "
            f"{parsed.describe()}, base {parsed.base or 'unknown'}). For example {examples}")


def unread_message(where: str, unread: dict[str, str]) -> str:
    """``unread``: {tensor name: its layer} that ComfyUI's loader did not use although the layer was placed."""
    key, layer = next(iter(unread.items()))
    more = f" (and {len(unread) - 1} more)" if len(unread) > 1 else ""
    return (f"{where}: tensor {key}{more} belongs to layer {layer}, but ComfyUI's LoRA loader has no use for it; "
            f"applying {layer} without it would give wrong weights, so nothing was applied. Convert the file "
            f"with the tool that made it to a LyCORIS/kohya or peft LoRA without it.")
