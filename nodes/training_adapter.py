"""What Train LoRA's steps need from ComfyUI around the domain trainer (``aesthete.training``): ComfyUI's training
switches while the steps run (and not while validation samples), and out-of-memory errors that name the phase and
stay the exception type ComfyUI's own handler recognises."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from . import compat

log = logging.getLogger("aesthete.training")

# where a run's convolution-layout choice is kept: on the loaded model (the torch module all clones of a MODEL share),
# so that training the same model again trains with the same numbers
LAYOUT_ATTRIBUTE = "aesthete_channels_last"

OOM_ADVICE = {
    "encoding": "lower the dataset's resolution, or start ComfyUI with --lowvram",
    "training": "lower batch_size (grad_accumulation keeps the effective batch), turn on gradient_checkpointing, "
                "or lower the dataset's resolution",
    "validation": "lower the validation's width, height or images_per_prompt",
}


class TrainingSteps:
    """ComfyUI set up for training steps, on while they run and off (:meth:`paused`) while validation samples with
    the model: ComfyUI's ``in_training`` flag where it has one, PyTorch's SDPA as the attention (every other attention
    ComfyUI may run lacks a backward pass or may), and ComfyUI's fp8 layers in training mode (their fast path has no
    backward pass). Everything is put back exactly as found when off."""

    def __init__(self, model):
        self.model = model
        self._stack: ExitStack | None = None

    def __enter__(self) -> TrainingSteps:
        stack = ExitStack()
        stack.enter_context(compat.training_mode())
        stack.enter_context(compat.training_attention())
        fp8 = stack.enter_context(compat.fp8_layers_in_training_mode(self.model))
        if fp8:
            log.info("Aesthete trainer: %d fp8 layers train through their cast path (their fp8 matrix "
                     "multiplication has no backward pass)", fp8)
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Off while inside (sampling runs as the graph's KSampler would), on again afterwards."""
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()


@contextmanager
def out_of_memory_named(phase: str) -> Iterator[None]:
    """An out-of-memory error inside is raised again as the same exception type (ComfyUI's handler then unloads its
    models and gives its advice, as for any node), its message saying which phase of Train LoRA ran out and what to
    change. Phases nest (validation inside training): the innermost names it."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        if getattr(e, "aesthete_phase", None):
            raise
        advice = OOM_ADVICE.get(phase, "")
        named = type(e)(f"Train LoRA ran out of memory during {phase}: {e}. {advice}".rstrip())
        named.aesthete_phase = phase
        raise named from e


# what autograd says when an operation of the forward pass has no backward formula (fp8 matrix multiplication)
_NO_BACKWARD = ("derivative for", "does not require grad and does not have a grad_fn", "not implemented for 'Float8")


@contextmanager
def inference_only_layers_named() -> Iterator[None]:
    """A backward pass that fails because a layer ran an operation without a backward formula (ComfyUI's fp8
    matrix multiplication of scaled-fp8 or quantized checkpoints, chosen with --fast, is one) is told in words that
    say what to change; other errors pass unchanged."""
    try:
        yield
    except RuntimeError as e:
        if not any(text in str(e) for text in _NO_BACKWARD):
            raise
        raise RuntimeError(f"Train LoRA cannot train through one of this model's layers: it runs an operation that "
                           f"has no backward pass ({str(e).splitlines()[0][:300]}). fp8 matrix multiplication is "
                           "one: load the model with weight_dtype default (fp16/bf16), or start ComfyUI without "
                           "--fast") from e
