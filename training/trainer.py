"""One LoRA training run on a diffusion model: cache the latents and the text conditioning once per dataset, inject
the LoRA, run the loop. The caller (the ComfyUI node, or a test) supplies the image and caption encoders."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .dataset import LoraDataset
from .lora_network import (TARGET_PRESETS, LoraGradientError, LoraNetwork, checkpoint_blocks,
                           release_inference_tensors)
from .loop import Batch, LoopState, TrainResult, TrainSettings, autocast_dtype, train
from .memory import give_back_free_memory, steady_step_memory
from .objective import DenoisingLoss

log = logging.getLogger("aesthete.training")

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]  # [B, H, W, 3] 0..1 -> latents [B, C, h, w]
CaptionEncoder = Callable[[str, tuple[int, int]], Mapping[str, torch.Tensor]]  # caption, (w, h) -> model conds


@dataclass
class TrainingCache:
    """What is computed once per dataset before training: the epochs' batch plans, latents, caption encodings."""

    plans: dict[int, list[Batch]]
    latents: list[torch.Tensor]
    conds: dict[tuple[str, tuple[int, int]], dict[str, torch.Tensor]]
    seconds: float

    def describe(self) -> str:
        return (f"cached {len(self.latents)} latents and {len(self.conds)} caption encodings "
                f"in {self.seconds:.1f}s")


@dataclass
class TrainingRun:
    network: LoraNetwork
    result: TrainResult
    start_epoch: int


@dataclass
class RunHooks:
    """How a run reports and is cancelled: ``on_step(step, total, loss)`` after each optimizer step,
    ``should_stop()`` between steps, ``on_epoch_end(epoch, network, result)`` after each epoch (saving, validation),
    and the exceptions that mean a cancel rather than an error (ComfyUI's layers raise one on an interrupt)."""

    on_step: Callable[[int, int, float], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_epoch_end: Callable[[int, LoraNetwork, TrainResult], None] | None = None
    stop_exceptions: tuple[type[BaseException], ...] = ()


@dataclass
class RunSpec:
    """One training run as it was set up: the loop's settings, the LoRA (rank, alpha, the layers it targets, or the
    LoRA in ComfyUI's format it continues with the loop state saved beside it), and its hooks."""

    settings: TrainSettings
    rank: int = 16
    alpha: float = 4.0
    targets: tuple[str, ...] = TARGET_PRESETS["attention q,k,v,out"]
    resume: Mapping | None = None
    resume_state: LoopState | None = None
    hooks: RunHooks = field(default_factory=RunHooks)


def encode_latents(dataset: LoraDataset, encode_images: ImageEncoder, batch: int = 8) -> list[torch.Tensor]:
    """One latent per image, encoded once (images of a bucket together)."""
    latents: list[torch.Tensor | None] = [None] * len(dataset)
    for size in dataset.buckets():
        idx = [i for i, img in enumerate(dataset.images) if img.size == size]
        for j in range(0, len(idx), batch):
            chunk = idx[j:j + batch]
            out = encode_images(torch.stack([dataset.images[i].pixels for i in chunk]))
            for i, lat in zip(chunk, out):
                latents[i] = lat.detach().clone().float().cpu()
    return latents


def encode_captions(plans: list[list[Batch]], dataset: LoraDataset, encode_caption: CaptionEncoder,
                    known: dict | None = None) -> dict[tuple[str, tuple[int, int]], dict[str, torch.Tensor]]:
    """The conditioning of every (caption, bucket size) any epoch uses, each encoded once (``known`` ones reused)."""
    cache: dict[tuple[str, tuple[int, int]], dict[str, torch.Tensor]] = {}
    known = known if known is not None else {}
    for batches in plans:
        for batch in batches:
            for i, caption in batch:
                key = (caption, dataset.images[i].size)
                if key not in cache:
                    if key not in known:
                        known[key] = {k: v.detach().clone().float().cpu() for k, v in encode_caption(*key).items()}
                    cache[key] = known[key]
    return cache


def build_cache(dataset: LoraDataset, settings: TrainSettings, encode_images: ImageEncoder,
                encode_caption: CaptionEncoder, start_epoch: int = 0, encoders: tuple = ()) -> TrainingCache:
    """Plan every epoch (batches and their captions), then encode each image and each distinct caption once.

    ``encoders``: the objects the encoders use (VAE, text encoder, model); when given, the encodings are kept on
    the dataset for them, so training the same dataset again with the same models encodes nothing new."""
    started = time.perf_counter()
    plans = {e: dataset.plan_epoch(e, settings.batch_size, settings.seed)
             for e in range(start_epoch, start_epoch + settings.epochs)}
    memo = dataset.encodings_for(encoders) if encoders else {}
    with torch.no_grad():
        latents = memo.get("latents") or encode_latents(dataset, encode_images)
        conds = encode_captions(list(plans.values()), dataset, encode_caption, memo.setdefault("conds", {}))
    memo["latents"] = latents
    return TrainingCache(plans, latents, conds, time.perf_counter() - started)


class ConvLayout:
    """On the CPU the UNet's convolutions can train in channels-last layout (oneDNN's path), which is not faster for
    every model: a step of the medium Kolors ran 1.2x faster that way, of the small SD1.5 about 0.9x
    (benchmarks/bench_training_kolors.py, bench_training.py). So before the steps the trainer measures
    (:meth:`choose`): one pass of the first batch to warm up, one timed in the usual layout, one channels-last, and
    the layout that took less CPU time (which other processes' load moves less than wall time) is kept for the run.
    Only the layout changes, never a value. :meth:`usual_while` puts the usual layout back for a while (validation's
    sampling, so its images are the ones the graph's KSampler makes), :meth:`usual` for good (at the end, for the
    rest of the graph). ``chosen``: the choice an earlier run made for this model (the caller keeps :attr:`chosen` with
    the model), so that training it again gives the same LoRA; it is then not measured again. On a GPU nothing
    changes."""

    def __init__(self, unet: nn.Module, device: torch.device | str, clock: Callable[[], float] = time.process_time,
                 chosen: bool | None = None):
        self.unet, self.clock = unet, clock
        self.enabled = torch.device(device).type == "cpu"
        self.channels_last = False  # the layout the convolutions are in now
        self.chosen = chosen  # channels-last or not, once measured (None: not yet)

    def _set(self, channels_last: bool) -> None:
        if self.enabled and channels_last != self.channels_last:
            self.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            self.channels_last = channels_last

    def choose(self, one_pass: Callable[[], None]) -> None:
        """Time ``one_pass`` (a training step's forward and backward, leaving nothing behind) in both layouts and
        keep the faster."""
        if not self.enabled:
            return
        if self.chosen is not None:  # one choice per model: its runs train with the same numbers
            self._set(self.chosen)
            return
        one_pass()  # warm-up: first-touch allocations
        took = {}
        for channels_last in (False, True):
            self._set(channels_last)
            started = self.clock()
            one_pass()
            took[channels_last] = self.clock() - started
        self._set(took[True] < took[False])
        self.chosen = self.channels_last
        log.info("Aesthete trainer: a step took %.2fs of CPU in the usual layout, %.2fs channels-last: training "
                 "goes on %s", took[False], took[True], "channels-last" if self.channels_last else "in the usual layout")

    def usual(self) -> None:
        self._set(False)

    @contextmanager
    def usual_while(self) -> Iterator[None]:
        was = self.channels_last
        self._set(False)
        try:
            yield
        finally:
            self._set(was)


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of most of the model's floating-point weights (by count of values)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def _lora_parameter_name(network: LoraNetwork, name: str) -> str:
    """``layers.<i>.<rest>`` as ``<module path>.<rest>``: the same parameter has the same name in a resumed run,
    whose layers may be listed in another order."""
    _, index, rest = name.split(".", 2)
    return f"{network.paths[int(index)]}.{rest}"


def run_training(model, dataset: LoraDataset, cache: TrainingCache, spec: RunSpec, *,
                 device: torch.device | str = "cpu", transformer_options: Mapping | None = None,
                 conv_layout: ConvLayout | None = None, compute_dtype: torch.dtype | None = None,
                 copy_inference_weights: bool = True) -> TrainingRun:
    """Train the LoRA ``spec`` describes on ``model`` (its ``diffusion_model`` holds the layers the LoRA keys are
    relative to; the model runs the denoising, see :class:`DenoisingLoss`). The LoRA is attached to the layers only
    while training; the returned network holds it. A resumed LoRA's cache must plan from the epoch after it.
    How the model computes: ``device`` (the LoRA layers are put there whatever device the weights are on),
    ``transformer_options`` (the MODEL's ``model_options["transformer_options"]``, so that training runs the layers
    its sampling runs: an attention override, for one), ``conv_layout`` (the :class:`ConvLayout` of the layers, given
    when ``on_epoch_end`` samples with the model: it then uses :meth:`ConvLayout.usual_while`), ``compute_dtype``
    (default: the weights'; fp16 turns loss scaling on), ``copy_inference_weights`` (copy weights made in inference
    mode, see :func:`release_inference_tensors`; off for a model whose layers compute with fresh copies of their
    weights anyway: ComfyUI's dynamic models).
    At the first step every LoRA layer must have received a gradient, else :class:`LoraGradientError` names those
    that did not."""
    settings, hooks, unet = spec.settings, spec.hooks, model.diffusion_model
    settings.check()
    unet.requires_grad_(False)
    if copy_inference_weights and release_inference_tensors(unet):
        log.info("Aesthete: copied the model's inference-mode weights so autograd can use them")
    network = _new_or_resumed_network(unet, spec)
    start_epoch = min(cache.plans)
    loss = DenoisingLoss(model, cache.latents, cache.conds, [img.size for img in dataset.images], device,
                         transformer_options=transformer_options)
    network.to(device).train()
    network.requires_grad_(True)
    network.attach(unet, device)
    undo_checkpointing = checkpoint_blocks(unet) if settings.gradient_checkpointing else None
    layout = conv_layout or ConvLayout(unet, device)

    def epoch_end(epoch: int, result: TrainResult) -> None:
        hooks.on_epoch_end(epoch, network, result)
        give_back_free_memory()  # what validation (or saving) freed stays out of the next epoch's steps

    try:
        named = list(network.named_parameters())
        if cache.plans[start_epoch]:
            layout.choose(lambda: _probe_pass(loss, network, cache.plans[start_epoch][0], settings, device))
        with steady_step_memory(device):
            result = train([p for _, p in named], loss, cache.plans.__getitem__, settings, device,
                           on_step=hooks.on_step, should_stop=hooks.should_stop,
                           stop_exceptions=hooks.stop_exceptions, start_epoch=start_epoch, resume=spec.resume_state,
                           names=[_lora_parameter_name(network, n) for n, _ in named],
                           on_epoch_end=epoch_end if hooks.on_epoch_end else None,
                           compute_dtype=compute_dtype or weights_dtype(unet), check_gradients=lambda: _check_gradients(network))
    finally:
        layout.usual()
        network.detach()
        if undo_checkpointing is not None:
            undo_checkpointing()
        network.requires_grad_(False)
    return TrainingRun(network, result, start_epoch)


def _new_or_resumed_network(unet: torch.nn.Module, spec: RunSpec) -> LoraNetwork:
    if not spec.resume:
        return LoraNetwork.create(unet, spec.rank, spec.alpha, spec.targets, seed=spec.settings.seed)
    network = LoraNetwork.from_state_dict(unet, dict(spec.resume))
    log.info("Aesthete: resuming a LoRA of rank %d, alpha %g, %d layers", network.rank, network.alpha,
             len(network.paths))
    return network


def _probe_pass(loss: DenoisingLoss, network: LoraNetwork, batch, settings, device) -> None:
    """The first batch's forward and backward with noise of its own: the training's noise and LoRA stay as they
    are."""
    precision = autocast_dtype(settings.precision)
    with torch.autocast(torch.device(device).type, dtype=precision, enabled=precision is not None):
        probe = loss(batch, torch.Generator().manual_seed(0))
    probe.backward()
    network.zero_grad(set_to_none=True)


def _check_gradients(network: LoraNetwork) -> None:
    cut = network.layers_without_gradient()
    if cut:
        raise LoraGradientError(
            f"{len(cut)} of {len(network.paths)} LoRA layers received no gradient at the first step, so they "
            f"would learn nothing: {', '.join(cut[:6])}{', ...' if len(cut) > 6 else ''}. Something in the "
            "model does not pass gradients back (an inference-only attention or layer, or a patch on the MODEL "
            "that runs without gradients): train the MODEL without it")
