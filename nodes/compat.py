"""The ComfyUI internals the pack uses that differ between ComfyUI 0.3.75 (what the tests run) and the newest ComfyUI
(read from its source), each behind one small function, so that the next change to ComfyUI is one place here.

Training (Train LoRA):
- ``comfy.model_management.in_training``: the newest ComfyUI switches its layers to their differentiable paths while it
  is True (its own trainer sets it); 0.3.75 has no such flag. :func:`training_mode` sets it while training steps run,
  where it exists, and puts back the value it found.
- Dynamic models (``ModelPatcher.is_dynamic()``, DynamicVRAM in the newest ComfyUI): their weights stay in RAM and are
  streamed to the GPU layer by layer. The newest core trainer then loads the model without ``force_full_load`` and
  trains in "bypass mode" (the LoRA added beside each layer's output instead of merged into its weight), which is the
  only way Aesthete's trainer applies a LoRA. :func:`load_for_training` loads as core does.
- Attention: sampling runs whatever attention ComfyUI was started with (``--use-sage-attention``,
  ``--use-flash-attention``: the module-level ``comfy.ldm.modules.attention.optimized_attention``) or a MODEL's
  ``transformer_options["optimized_attention_override"]``; some of them have no backward pass.
  :func:`training_attention` runs PyTorch's SDPA in both places while training steps run.
- fp8 layers: ``comfy.ops.fp8_ops`` (``--fast`` fp8 matrix multiplication) take an inference-only path unless the
  layer is in training mode; :func:`fp8_layers_in_training_mode` sets them so while training steps run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

import comfy.model_management

log = logging.getLogger("aesthete.training")


def is_dynamic(patcher) -> bool:
    """Whether ComfyUI streams this model's weights to the GPU layer by layer (the newest ComfyUI's DynamicVRAM);
    always False on ComfyUI versions without it (0.3.75)."""
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def compute_dtype(base_model) -> torch.dtype:
    """The dtype a ComfyUI model (``ModelPatcher.model``) computes in: its manual-cast dtype where its weights are
    stored in another one (fp8 weights computed in fp16, say), else its weights' dtype."""
    return getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype()


def load_for_training(patcher) -> None:
    """Load the trained model for the steps, alone in the device's memory (everything else ComfyUI holds there is
    offloaded first), as ComfyUI's own trainer does: fully, or for a dynamic model, streamed as ComfyUI chooses."""
    comfy.model_management.load_models_gpu([patcher], memory_required=1e20, force_full_load=not is_dynamic(patcher))


@contextmanager
def training_mode() -> Iterator[None]:
    """``comfy.model_management.in_training = True`` while inside, where that flag exists; the value found is put
    back on leaving. On ComfyUI versions without the flag nothing is changed."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    was = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = was


def _sdpa_override(func, *args, **kwargs):
    """An ``optimized_attention_override``: PyTorch's SDPA through ComfyUI's own ``attention_pytorch`` (the
    arguments and shapes of every ComfyUI attention function), whatever attention ``func`` is."""
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def training_transformer_options(options: dict) -> dict:
    """The MODEL's transformer options for the training steps: its attention override replaced by PyTorch's SDPA,
    which has a backward pass (the MODEL's own options are not changed)."""
    return dict(options, optimized_attention_override=_sdpa_override)


@contextmanager
def training_attention() -> Iterator[None]:
    """ComfyUI's process-wide attention functions (``optimized_attention`` and ``optimized_attention_masked`` of
    ``comfy.ldm.modules.attention``, chosen at start-up, replaced by some packs) are PyTorch's SDPA while inside, and
    exactly what they were on leaving: sage and flash attention kernels have no backward pass. Where the module has
    no such names, nothing changes."""
    import comfy.ldm.modules.attention as attention

    names = [n for n in ("optimized_attention", "optimized_attention_masked") if hasattr(attention, n)]
    sdpa = getattr(attention, "attention_pytorch", None)
    if sdpa is None or not names:
        yield
        return
    saved = {n: getattr(attention, n) for n in names}
    for n in names:
        setattr(attention, n, sdpa)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(attention, n, f)


def _fp8_layer_classes() -> tuple[type, ...]:
    import comfy.ops

    fp8_ops = getattr(comfy.ops, "fp8_ops", None)
    linear = getattr(fp8_ops, "Linear", None)
    return (linear,) if isinstance(linear, type) else ()


@contextmanager
def fp8_layers_in_training_mode(model: torch.nn.Module) -> Iterator[int]:
    """ComfyUI's fp8 layers (``comfy.ops.fp8_ops``, chosen with ``--fast``) multiply in fp8 with a kernel that has
    no backward pass, except in training mode: their layers are put in training mode while inside (only they: the
    rest of the model stays as it was), then back. Yields how many there are."""
    classes = _fp8_layer_classes()
    layers = [m for m in model.modules() if classes and isinstance(m, classes) and not m.training]
    for m in layers:
        m.training = True
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.training = False
