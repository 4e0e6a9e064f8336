"""The training loop: optimizer, learning-rate schedule with warm-up, gradient accumulation, precision (fp32, bf16,
fp16 autocast; loss scaling wherever the model computes in fp16), a stop on a NaN/inf loss, no step applied from
non-finite gradients, cancel (returns what was trained so far), a callback per epoch, and the
state a resumed run continues from (:class:`LoopState`: optimizer, schedule position, noise generator)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

log = logging.getLogger("aesthete.training")

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
class LoopState:
    """What a run needs beyond the LoRA weights to continue exactly where another stopped: the optimizer's state
    (moments, step counts), the optimizer steps done (the schedule's position), the noise generator's state, the
    fp16 loss scaler's, and where in an epoch it stopped (``epoch`` in progress, ``epoch_steps`` done in it; 0 at
    an epoch's end). Stored as tensors plus JSON (:meth:`to_tensors`), never as pickled objects."""

    optimizer: dict
    steps_done: int
    generator: torch.Tensor
    epoch: int = 0
    epoch_steps: int = 0
    scaler: dict | None = None
    names: list[str] = field(default_factory=list)  # the optimizer's parameters by name, in its order
    optimizer_name: str = ""  # TrainSettings.optimizer of the run that saved it

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, string metadata) for a safetensors file; :meth:`from_tensors` reads them back."""
        tensors = {"generator": self.generator.clone()}
        plain_state: dict[str, dict] = {}
        for index, values in self.optimizer["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous().clone()
                else:
                    plain_state.setdefault(str(index), {})[name] = value
        meta = {"steps_done": self.steps_done, "epoch": self.epoch, "epoch_steps": self.epoch_steps,
                "scaler": self.scaler, "names": self.names, "optimizer_name": self.optimizer_name,
                "param_groups": self.optimizer["param_groups"], "plain_state": plain_state}
        return tensors, {"aesthete.loop_state": json.dumps(meta)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoopState:
        meta = json.loads(metadata["aesthete.loop_state"])
        state: dict[int, dict] = {int(i): dict(v) for i, v in meta["plain_state"].items()}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        return cls({"state": state, "param_groups": meta["param_groups"]}, int(meta["steps_done"]),
                   tensors["generator"], int(meta["epoch"]), int(meta["epoch_steps"]), meta.get("scaler"),
                   list(meta.get("names") or []), meta.get("optimizer_name", ""))


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per optimizer step (mean of its micro-batches)
    steps: int = 0
    epochs_done: int = 0
    cancelled: bool = False
    # the exception that stopped a cancelled run from inside a step (one of ``train``'s ``stop_exceptions``)
    stop_error: BaseException | None = field(default=None, repr=False, compare=False)
    seconds: float = 0.0
    skipped_steps: int = 0  # optimizer steps left out because their gradients were not finite (see OptimizerSteps)
    # the state to continue from after the last finished optimizer step (set by ``train``)
    loop_state: Callable[[], LoopState] | None = field(default=None, repr=False, compare=False)


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


def needs_loss_scaling(autocast: torch.dtype | None, compute_dtype: torch.dtype | None) -> bool:
    """Whether the backward pass runs in fp16, whose gradients underflow without loss scaling: under fp16 autocast,
    or without autocast on a model that computes in fp16 (ComfyUI loads SD1.5, SDXL and Kolors UNets in fp16 on most
    GPUs). Per-element gradients of a mean over a 128x128 latent are near fp16's smallest numbers."""
    return autocast == torch.float16 or (autocast is None and compute_dtype == torch.float16)


class OptimizerSteps:
    """Turns accumulated micro-batch losses into optimizer steps: the optimizer, the learning-rate schedule over
    ``total`` steps, loss scaling where the backward pass runs in fp16 (``compute_dtype``: the model's), gradient
    clipping, and no step from non-finite gradients (the scaler skips them; without one they are checked here)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], settings: TrainSettings, device: torch.device,
                 total: int, resume: LoopState | None = None, names: Sequence[str] = (),
                 compute_dtype: torch.dtype | None = None):
        self.params = list(params)
        self.names = list(names)
        self.settings = settings
        self.optimizer = make_optimizer(settings.optimizer, self.params, settings.learning_rate,
                                        settings.weight_decay)
        done = 0
        if resume is not None:
            done = resume.steps_done
            if resume.optimizer_name in ("", settings.optimizer):
                self._load_optimizer(resume.optimizer, resume.names)
            else:
                log.warning("Aesthete trainer: the run resumed used %s, this one %s: its optimizer state is not "
                            "carried over (the schedule and the noise are)", resume.optimizer_name, settings.optimizer)
        self.done = done  # optimizer steps before this run: the schedule goes on from there, over done + total
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s + done, done + total, settings.schedule, settings.warmup_steps))
        self.device_type = device.type
        self.autocast = autocast_dtype(settings.precision)  # the micro-batches' autocast dtype (None: fp32)
        scaling = needs_loss_scaling(self.autocast, compute_dtype)
        self.scaler = torch.amp.GradScaler(device.type) if scaling else None
        self.skipped = 0  # steps left out for non-finite gradients
        if self.scaler is not None and resume is not None and resume.scaler:
            self.scaler.load_state_dict(resume.scaler)
        self.discard()

    def _load_optimizer(self, state: dict, names: list[str]) -> None:
        groups = state["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params) or (
                names and self.names and sorted(names) != sorted(self.names)):
            raise ValueError(f"the saved optimizer state is for {sum(len(g['params']) for g in groups)} other LoRA "
                             f"tensors than this LoRA's {len(self.params)}: resume from the LoRA file it was saved with")
        if names and self.names:  # the same parameters, perhaps in another order: move each state to its own
            where = {name: i for i, name in enumerate(self.names)}
            state = {"state": {where[names[int(i)]]: s for i, s in state["state"].items()},
                     "param_groups": [{**groups[0], "params": list(range(len(self.params)))}]}
            groups = state["param_groups"]
        device = self.params[0].device
        # copies made here, under the trainer's inference_mode(False): a file read inside ComfyUI's inference mode
        # gives inference tensors, which the optimizer could not update in place
        self.optimizer.load_state_dict({"state": {i: {k: (v.clone() if k == "step" else v.to(device).clone())
                                                      if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                                                  for i, s in state["state"].items()},
                                        "param_groups": groups})
        for group in self.optimizer.param_groups:  # this run's settings win over the saved ones
            group["lr"] = group["initial_lr"] = self.settings.learning_rate
            if "weight_decay" in group and self.settings.optimizer == "AdamW":
                group["weight_decay"] = self.settings.weight_decay

    def state(self, generator_state: torch.Tensor, epoch: int, epoch_steps: int, steps: int) -> LoopState:
        """The loop's state after ``steps`` optimizer steps of this run."""
        return LoopState(self.optimizer.state_dict(), self.done + steps, generator_state.clone(), epoch, epoch_steps,
                         self.scaler.state_dict() if self.scaler else None, self.names, self.settings.optimizer)

    def backward(self, loss: torch.Tensor, share: int) -> None:
        """Accumulate the gradient of ``loss / share`` (one of ``share`` micro-batches of a step)."""
        scaled = loss / share
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()

    def step(self) -> None:
        """Apply the accumulated gradients, unless one of them is not finite (an fp16 overflow): then the step is
        left out (counted in ``skipped``; the scaler lowers its scale) and the parameters stay as they were."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        limit = self.settings.max_grad_norm if self.settings.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, limit)
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped when unscale_ found an inf or NaN
            self.scaler.update()
            self.skipped += int(self.scaler.get_scale() < scale)
        elif math.isfinite(float(norm)):
            self.optimizer.step()
        else:
            self.skipped += 1
            log.warning("Aesthete trainer: gradients were not finite (norm %s); that step was left out", float(norm))
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
          start_epoch: int = 0, resume: LoopState | None = None, names: Sequence[str] = (),
          stop_exceptions: tuple[type[BaseException], ...] = (), compute_dtype: torch.dtype | None = None,
          check_gradients: Callable[[], None] | None = None) -> TrainResult:
    """Train ``params`` for ``settings.epochs`` epochs (counted from ``start_epoch``, for a resumed LoRA).

    ``resume``: the :class:`LoopState` of the run this one continues (saved with its LoRA): the optimizer, the
    schedule and the noise go on from there, and an epoch it stopped in is continued after its done steps, so the
    two runs together follow the same losses as one uninterrupted run (``result.loop_state()`` gives the state).
    ``names``: the names of ``params`` (the optimizer state is matched by name when both runs give them).

    ``loss_of_batch(batch, generator)`` returns the scalar loss of one micro-batch; ``plan_epoch(epoch)`` the
    micro-batches of an epoch. ``on_step(step, total, loss)`` follows every optimizer step; ``should_stop()`` is
    asked before every micro-batch and ends training early (``cancelled``; the parameters keep what was trained).
    A NaN or infinite loss raises :class:`NonFiniteLossError` before it reaches the parameters.
    ``stop_exceptions``: exceptions a step may raise to cancel (ComfyUI interrupts inside its layers): the partial step
    is dropped and the run ends ``cancelled`` as with ``should_stop``, the exception kept in ``stop_error``.
    ``compute_dtype``: the dtype the model computes in (fp16 turns loss scaling on, see :func:`needs_loss_scaling`).
    ``check_gradients()`` is called once, with the first optimizer step's gradients in place, before it is applied
    (it may raise to stop a run whose gradients cannot train)."""
    settings.check()
    device = torch.device(device)
    plans, skip, total = _plan(plan_epoch, settings, start_epoch, resume)
    accum = settings.grad_accumulation
    params = list(params)
    names = [n for n, p in zip(names, params) if p.requires_grad] if names else []
    steps = OptimizerSteps([p for p in params if p.requires_grad], settings, device, total, resume, names,
                           compute_dtype)
    generator = _generator(settings.seed, resume)
    result = TrainResult()
    at = {"rng": generator.get_state(), "epoch": start_epoch, "epoch_steps": skip}  # the last step boundary
    result.loop_state = lambda: steps.state(at["rng"], at["epoch"], at["epoch_steps"], result.steps)
    started = time.perf_counter()
    try:
        for epoch_index, batches in enumerate(plans):
            epoch = start_epoch + epoch_index
            for first in range(skip * accum if epoch_index == 0 else 0, len(batches), accum):
                step_loss = _accumulate(batches[first:first + accum], loss_of_batch, generator, steps, should_stop,
                                        f"step {result.steps + 1} of {total} (epoch {epoch + 1})", stop_exceptions,
                                        result)
                if step_loss is None:
                    result.cancelled = True
                    return result
                if check_gradients is not None and result.steps == 0:
                    check_gradients()
                steps.step()
                result.skipped_steps = steps.skipped
                result.steps += 1
                result.losses.append(step_loss)
                at.update(rng=generator.get_state(), epoch=epoch, epoch_steps=first // accum + 1)
                if on_step is not None:
                    on_step(result.steps, total, step_loss)
            at.update(epoch=epoch + 1, epoch_steps=0)
            result.epochs_done = epoch_index + 1
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, result)
        return result
    finally:
        result.seconds = time.perf_counter() - started


def _plan(plan_epoch: Callable[[int], list[Batch]], settings: TrainSettings, start_epoch: int,
          resume: LoopState | None) -> tuple[list[list[Batch]], int, int]:
    """The epochs' micro-batches, the optimizer steps a resumed run already did in its first epoch, the steps left."""
    plans = [plan_epoch(e) for e in range(start_epoch, start_epoch + settings.epochs)]
    skip = resume.epoch_steps if resume is not None and resume.epoch == start_epoch else 0
    return plans, skip, sum(math.ceil(len(p) / settings.grad_accumulation) for p in plans) - skip


def _generator(seed: int, resume: LoopState | None) -> torch.Generator:
    generator = torch.Generator().manual_seed(seed)
    if resume is not None:
        generator.set_state(resume.generator.clone())
    return generator


def _accumulate(group: Sequence[Batch], loss_of_batch: Callable[[Batch, torch.Generator], torch.Tensor],
                generator: torch.Generator, steps: OptimizerSteps, should_stop: Callable[[], bool] | None,
                where: str, stop_exceptions: tuple[type[BaseException], ...], result: TrainResult) -> float | None:
    """The gradients of one optimizer step's micro-batches; their mean loss, or None when ``should_stop`` says so or
    a step raises one of ``stop_exceptions`` (kept in ``result.stop_error``); the partial gradients are dropped."""
    try:
        return _accumulate_group(group, loss_of_batch, generator, steps, should_stop, where)
    except stop_exceptions as e:
        steps.discard()
        result.stop_error = e
        return None


def _accumulate_group(group: Sequence[Batch], loss_of_batch: Callable[[Batch, torch.Generator], torch.Tensor],
                      generator: torch.Generator, steps: OptimizerSteps, should_stop: Callable[[], bool] | None,
                      where: str) -> float | None:
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
