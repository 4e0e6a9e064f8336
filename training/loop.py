"""The training loop: optimizer, learning-rate schedule with warm-up, gradient accumulation, precision (fp32, bf16,
fp16 autocast), a stop on a NaN/inf loss, cancel (returns what was trained so far), a callback per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch


OPTIMIZERS = ("AdamW", "Adam", "SGD", "RMSprop")
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16 autocast")

Batch = Sequence[tuple[int, str]]  # (image index, caption) pairs of one bucket


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the LoRA of the last good step is kept by the caller."""


@dataclass
class TrainSettings:
    epochs: int = 5
    batch_size: int = 1
    grad_accumulation: int = 1
    learning_rate: float = 1e-4
    optimizer: str = "AdamW"
    schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 0
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    save_every_n_epochs: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"learning-rate schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accumulation < 1:
            raise ValueError("epochs, batch size and gradient accumulation must each be at least 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning rate {self.learning_rate}: must be above 0")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per optimizer step (mean of its micro-batches)
    steps: int = 0
    epochs_done: int = 0
    cancelled: bool = False
    seconds: float = 0.0


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = list(params)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "SGD":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "RMSprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """The multiplier of the learning rate at optimizer step ``step`` (0-based): a linear warm-up over ``warmup``
    steps, then constant, linear decay to 0, or cosine decay to 0 over the remaining steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    done = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        return 1.0 - done
    return 0.5 * (1.0 + math.cos(math.pi * done))


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16 autocast": torch.float16}[precision]


class OptimizerSteps:
    """Turns accumulated micro-batch losses into optimizer steps: the optimizer, the learning-rate schedule over
    ``total`` steps, fp16 loss scaling, gradient clipping."""

    def __init__(self, params: Sequence[torch.nn.Parameter], settings: TrainSettings, device: torch.device,
                 total: int):
        self.params = list(params)
        self.settings = settings
        self.optimizer = make_optimizer(settings.optimizer, self.params, settings.learning_rate,
                                        settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total, settings.schedule, settings.warmup_steps))
        self.device_type = device.type
        self.autocast = autocast_dtype(settings.precision)  # the micro-batches' autocast dtype (None: fp32)
        self.scaler = torch.amp.GradScaler(device.type) if self.autocast == torch.float16 else None
        self.discard()

    def backward(self, loss: torch.Tensor, share: int) -> None:
        """Accumulate the gradient of ``loss / share`` (one of ``share`` micro-batches of a step)."""
        scaled = loss / share
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()

    def step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.discard()

    def discard(self) -> None:
        """Drop the accumulated gradients (a cancel or a bad loss never reaches the parameters)."""
        self.optimizer.zero_grad(set_to_none=True)


def train(params: Sequence[torch.nn.Parameter], loss_of_batch: Callable[[Batch, torch.Generator], torch.Tensor],
          plan_epoch: Callable[[int], list[Batch]], settings: TrainSettings, device: torch.device | str = "cpu", *,
          on_step: Callable[[int, int, float], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          on_epoch_end: Callable[[int, TrainResult], None] | None = None,
          start_epoch: int = 0) -> TrainResult:
    """Train ``params`` for ``settings.epochs`` epochs (counted from ``start_epoch``, for a resumed LoRA).

    ``loss_of_batch(batch, generator)`` returns the scalar loss of one micro-batch; ``plan_epoch(epoch)`` the
    micro-batches of an epoch. ``on_step(step, total, loss)`` follows every optimizer step; ``should_stop()`` is
    asked before every micro-batch and ends training early (``cancelled``; the parameters keep what was trained).
    A NaN or infinite loss raises :class:`NonFiniteLossError` before it reaches the parameters."""
    settings.check()
    device = torch.device(device)
    plans = [plan_epoch(e) for e in range(start_epoch, start_epoch + settings.epochs)]
    accum = settings.grad_accumulation
    total = sum(math.ceil(len(p) / accum) for p in plans)
    steps = OptimizerSteps([p for p in params if p.requires_grad], settings, device, total)
    generator = torch.Generator().manual_seed(settings.seed)
    result = TrainResult()
    started = time.perf_counter()
    try:
        for epoch_index, batches in enumerate(plans):
            epoch = start_epoch + epoch_index
            for first in range(0, len(batches), accum):
                step_loss = _accumulate(batches[first:first + accum], loss_of_batch, generator, steps, should_stop,
                                        f"step {result.steps + 1} of {total} (epoch {epoch + 1})")
                if step_loss is None:
                    result.cancelled = True
                    return result
                steps.step()
                result.steps += 1
                result.losses.append(step_loss)
                if on_step is not None:
                    on_step(result.steps, total, step_loss)
            result.epochs_done = epoch_index + 1
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, result)
        return result
    finally:
        result.seconds = time.perf_counter() - started


def _accumulate(group: Sequence[Batch], loss_of_batch: Callable[[Batch, torch.Generator], torch.Tensor],
                generator: torch.Generator, steps: OptimizerSteps, should_stop: Callable[[], bool] | None,
                where: str) -> float | None:
    """The gradients of one optimizer step's micro-batches; their mean loss, or None when ``should_stop`` says so
    (the partial gradients are dropped)."""
    step_loss = 0.0
    for batch in group:
        if should_stop is not None and should_stop():
            steps.discard()
            return None
        with torch.autocast(steps.device_type, dtype=steps.autocast, enabled=steps.autocast is not None):
            loss = loss_of_batch(batch, generator)
        value = float(loss.detach())
        if not math.isfinite(value):
            steps.discard()
            raise NonFiniteLossError(
                f"the loss became {value} at {where}; the LoRA was not updated with it. Lower the learning rate "
                f"({steps.settings.learning_rate:g}), or train in fp32 or bf16 instead of fp16")
        steps.backward(loss, len(group))
        step_loss += value / len(group)
    return step_loss
