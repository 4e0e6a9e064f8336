"""The one place where Aesthete touches ComfyUI internals that differ between the versions it supports.

Tested: ComfyUI 0.3.75 (the tree the test suite runs). Read against: the newest ComfyUI source (the README's
"Supported ComfyUI" section says which). What moved, and how each function here copes:

- Model detection: 0.3.75 calls ``model_config.matches(unet_config, state_dict)``; the newest calls
  ``matches(unet_config, state_dict, unet_key_prefix=...)`` on every entry of ``comfy.supported_models.models``, so
  an entry that raises stops every checkpoint load in the process. :func:`register_model_config` puts a config at the
  front of that list once, with a ``matches`` that takes whatever core passes and never raises.
- Extension start-up: the newest ComfyUI awaits ``ComfyExtension.on_load()`` before ``get_node_list()``; 0.3.75 never
  calls ``on_load``. :func:`run_once` lets both hooks call the same registration, which then runs exactly once.
- Interrupts: ``InterruptProcessingException`` derives from ``Exception`` in 0.3.75 and from ``BaseException`` in the
  newest. :func:`interrupt_exception` reads the class at call time, so ``except interrupt_exception()`` catches it in
  both, and no ``except Exception`` in the pack is relied on to catch a cancel.
- Node signatures: the newest core ``TrainLoraNode.execute`` takes more required inputs than 0.3.75's (and returns
  no MODEL). :func:`schema_defaults` fills a core node's inputs a caller does not give from its own schema.

Kolors add-ons (ControlNet, IP-Adapter), read against the newest source, where the same calls stand today:
- :func:`controlnet_operations` (``comfy.ops.pick_operations``: the newest dropped ``scaled_fp8`` and added
  ``model_config``; ours passes only the weight and compute dtypes and ``disable_fast_fp8``), :data:`ControlNetModel`
  (``comfy.cldm.cldm.ControlNet``, whose forward core calls as ``control_model(x=, hint=, timesteps=, context=,
  **extra)`` in both), :func:`core_controlnet` (``comfy.controlnet.ControlNet(model, load_device=,
  manual_cast_dtype=)``, the same keywords in both).
- :func:`replace_cross_attention` (``ModelPatcher.set_model_attn2_replace(patch, block, number, transformer_index)``);
  core calls the patch ``patch(q, k, v, extra_options)`` after ``to_q/to_k/to_v`` and before ``to_out``, with
  ``extra_options["n_heads"]`` and ``["cond_or_uncond"]``, in both.
- :func:`image_encoder_states` (``comfy.clip_vision.clip_preprocess(image, size=, mean=, std=)``: the newest adds
  ``border_ratio`` and ``value_range``, with defaults that keep 0.3.75's result; the encoder's own
  ``image_size/image_mean/image_std`` and ``model(pixel_values=, intermediate_output=-2)[1]``, the penultimate
  hidden states, in both).
- :func:`attention` (``comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, transformer_options=)``: a MODEL's
  ``optimized_attention_override`` in its transformer options wins, as in core's own cross-attention, in both) and
  :func:`timestep_embedding` (``comfy.ldm.modules.diffusionmodules.util.timestep_embedding(t, dim,
  repeat_only=False)``, unchanged).

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

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

import comfy.cldm.cldm
import comfy.clip_vision
import comfy.controlnet
import comfy.ldm.modules.attention
import comfy.ldm.modules.diffusionmodules.util
import comfy.model_management
import comfy.ops
import comfy.supported_models

log = logging.getLogger("aesthete")


def interrupt_exception() -> type[BaseException]:
    """ComfyUI's cancel exception, read when called (0.3.75: an Exception; the newest: a BaseException)."""
    return comfy.model_management.InterruptProcessingException


def never_raising_matches(matches: Callable[..., bool], name: str) -> Callable[..., bool]:
    """``matches`` as a detection entry must behave: it takes whatever core's detection passes (0.3.75:
    ``(unet_config, state_dict)``; the newest adds ``unet_key_prefix=``) and a failure inside it is logged once and
    answered "no match", so core's detection goes on to the next entry instead of failing every load."""
    warned = []

    @functools.wraps(matches)
    def guarded(unet_config, state_dict=None, *args, **kwargs):
        try:
            return bool(matches(unet_config, state_dict))
        except Exception:  # noqa: BLE001 - our entry must never stop core's model detection
            if not warned:
                warned.append(True)
                log.exception("Aesthete: %s model detection failed; ComfyUI's other model types are tried", name)
            return False

    return guarded


def register_model_config(config: type) -> None:
    """Put ``config`` first in ComfyUI's detection list (once); its ``matches`` must be :func:`never_raising_matches`."""
    if config not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, config)


def run_once(function: Callable[[], None]) -> Callable[[], None]:
    """``function`` run at its first call only (registration that both ``on_load`` and ``get_node_list`` ask for)."""
    done = []

    @functools.wraps(function)
    def once() -> None:
        if not done:
            function()
            done.append(True)

    return once


def schema_defaults(node_class, given: dict) -> dict:
    """``given`` plus, for every other input of a core V3 node's schema that its ``execute`` takes, the schema's
    default (wrapped in a list for a node with ``is_input_list``), so one call works with every version's inputs."""
    schema = node_class.GET_SCHEMA()
    accepted = set(inspect.signature(node_class.execute).parameters)
    kwargs = {k: v for k, v in given.items() if k in accepted}
    for item in schema.inputs:
        if item.id in kwargs or item.id not in accepted:
            continue
        default = getattr(item, "default", None)
        kwargs[item.id] = [default] if schema.is_input_list else default
    return kwargs


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


# ------------------------------------------------------------------------------------------- Kolors add-ons
ControlNetModel = comfy.cldm.cldm.ControlNet  # core's ControlNet network, subclassed by the Kolors ControlNet


def controlnet_operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype | None):
    """ComfyUI's layer classes for a ControlNet stored in ``weight_dtype`` and computed in ``compute_dtype`` (None:
    the same), without the ``--fast`` fp8 matrix multiplication (which core's own ControlNet loader also leaves off)."""
    return comfy.ops.pick_operations(weight_dtype, compute_dtype, disable_fast_fp8=True)


def core_controlnet(model: torch.nn.Module, load_device, manual_cast_dtype) -> comfy.controlnet.ControlNet:
    """A core CONTROL_NET around a ControlNet network: what core Apply ControlNet takes (strength, start/end percent),
    its weights in a ModelPatcher of its own."""
    return comfy.controlnet.ControlNet(model, load_device=load_device, manual_cast_dtype=manual_cast_dtype)


def replace_cross_attention(patcher, patch: Callable, block: tuple[str, int, int]) -> None:
    """``patcher``'s cross-attention at ``block`` = (``"input"``/``"middle"``/``"output"``, block number, transformer
    index) computed by ``patch(q, k, v, extra_options)`` (q, k, v already projected; ``extra_options["n_heads"]``,
    ``["cond_or_uncond"]``); a model option of this patcher only."""
    patcher.set_model_attn2_replace(patch, block[0], block[1], block[2])


def image_encoder_states(clip_vision, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate hidden states of a core CLIP_VISION for ``image`` [B, H, W, C] (resized and centre-cropped to
    the encoder's size, normalised with its own mean and std, as core's CLIP Vision Encode does), and for an all-zero
    encoder input of one image (the negative image embedding of diffusers' and Kwai-Kolors's IP-Adapter pipelines)."""
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    pixels = comfy.clip_vision.clip_preprocess(image.to(clip_vision.load_device), size=clip_vision.image_size,
                                               mean=clip_vision.image_mean, std=clip_vision.image_std).float()
    with torch.no_grad():
        states = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[1]
        empty = clip_vision.model(pixel_values=torch.zeros_like(pixels[:1]), intermediate_output=-2)[1]
    return states, empty


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, transformer_options: dict) -> torch.Tensor:
    """ComfyUI's attention of already projected q, k, v, as its own cross-attention computes it: the process's choice
    (``--use-pytorch-cross-attention``...), or the MODEL's ``optimized_attention_override`` in ``transformer_options``."""
    return comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, transformer_options=transformer_options)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal timestep embedding ComfyUI's UNet and ControlNet feed their ``time_embed`` with."""
    return comfy.ldm.modules.diffusionmodules.util.timestep_embedding(timesteps, dim, repeat_only=False)
