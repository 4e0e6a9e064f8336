"""Train LoRA's run inside ComfyUI: the one place that wires ComfyUI's model management to the domain trainer
(``aesthete.training``). :func:`train_lora` takes the node's MODEL, CLIP, VAE and the run's job and does the rest:
the model clone being trained and its encoders, the progress bar, the text encoder and VAE leaving the training's
memory, the per-epoch validation (on the generate-and-judge path of nodes/generate.py), ComfyUI's training switches
while the steps run (and not while validation samples), cancels, and out-of-memory errors that name the phase and stay
the exception type ComfyUI's own handler recognises. The node only gathers the user's settings."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
from comfy_execution.graph import ExecutionBlocker

from ..common.images import pil_to_tensor, tensor_to_pil
from ..common.parking import ParkedWeights, park_on_disk
from ..training.dataset import LoraDataset
from ..training.job import TrainingJob
from ..training.loop import NonFiniteLossError, TrainSettings
from ..training.loss_graph import draw_loss_graph
from ..training.memory import PhaseMemory
from ..training.save import TrainedLora, read_lora
from ..training.trainer import ConvLayout, RunHooks, RunSpec, TrainingCache, TrainingRun, build_cache, run_training
from ..training.validation import ValidationHistory, ValidationSpec, draw_score_graph, draw_validation_grid
from . import compat
from .generate import encode_prompts, generate, image_prompts, judge

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


@dataclass
class TrainedModel:
    """What Train LoRA outputs: the MODEL with the output LoRA applied, the LoRA, the losses, the validation grid and
    score graph (blocked without validation), the report, and each validated epoch for the node's UI."""

    model: Any
    lora: TrainedLora
    losses: list[float]
    grid: Any
    graph: Any
    report: str
    epochs: list[dict] | None = field(default=None)

    def ui(self) -> dict:
        return {"text": [self.report], "loss": self.losses,
                **({"validation": self.epochs} if self.epochs is not None else {})}


def train_lora(model, clip, vae, job: TrainingJob, rank: int, alpha: float, validation: ValidationSpec | None,
               node_id: str | None) -> TrainedModel:
    """Train ``job``'s LoRA on a clone of ``model`` (the graph's MODEL stays as it was), validating every epoch when
    ``validation`` is given; a cancel raises ComfyUI's interrupt after keeping what was trained."""
    settings, dataset = job.settings, job.dataset
    with torch.inference_mode(False), torch.enable_grad():
        trained = model.clone()
        base, device = trained.model, trained.load_device
        meter = PhaseMemory(device)
        encode_images, encode_caption = model_encoders(base, clip, vae, device)
        with meter.phase("encoding"), out_of_memory_named("encoding"):
            cache = build_cache(dataset, settings, encode_images, encode_caption, job.resume_epochs,
                                encoders=(vae, clip, base))
            log.info("Aesthete trainer: %s", cache.describe())
            progress = LossProgress(node_id, settings, dataset)
            validator = EpochValidator(validation, clip, vae, trained, job, progress) if validation else None
        offload = EncoderOffload(trained, clip, vae, device)
        layout = ConvLayout(base.diffusion_model, device, chosen=getattr(base, LAYOUT_ATTRIBUTE, None))
        steps = TrainingSteps(base.diffusion_model)

        def on_epoch_end(epoch, network, result):
            job.on_epoch_end(epoch, network, result)
            if validator is not None:
                with meter.phase("validation"), out_of_memory_named("validation"), layout.usual_while(), \
                        steps.paused():
                    validator(epoch, network, result)
                offload.after_validation()

        hooks = RunHooks(on_step=progress.on_step, should_stop=comfy.model_management.processing_interrupted,
                         on_epoch_end=on_epoch_end,
                         # ComfyUI's layers raise on an interrupt: a cancel, not an error
                         stop_exceptions=(comfy.model_management.InterruptProcessingException,))
        spec = RunSpec(settings, rank, alpha, job.targets, job.resume or None, job.resume_state, hooks)
        with meter.phase("training"), out_of_memory_named("training"), clear_training_errors(), \
                inference_only_layers_named(), cancelled_during_validation(job, validator), steps:
            run = run_training(base, dataset, cache, spec, device=device, conv_layout=layout,
                               transformer_options=compat.training_transformer_options(
                                   trained.model_options.get("transformer_options", {})),
                               compute_dtype=compat.compute_dtype(base),
                               copy_inference_weights=not compat.is_dynamic(trained))
        setattr(base, LAYOUT_ATTRIBUTE, layout.chosen)
        lora = job.finish(run)
        if run.result.cancelled:
            if run.result.stop_error is not None:
                raise run.result.stop_error
            comfy.model_management.throw_exception_if_processing_interrupted()
    return trained_outcome(model, lora, run, cache, validator, validation, f"{meter.describe()}; {offload.describe()}")


def trained_outcome(model, lora: TrainedLora, run: TrainingRun, cache: TrainingCache,
                    validator: EpochValidator | None, validation: ValidationSpec | None, memory: str) -> TrainedModel:
    """The outputs and the report of a finished run; with validation, the chosen epoch's LoRA as saved."""
    result = run.result
    validating = sum(validator.seconds) if validator is not None else 0.0
    training = max(result.seconds - validating, 1e-9)
    lines = [f"{result.steps} steps in {training:.1f}s ({result.steps / training:.2f} steps/s), loss "
             f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}; {cache.describe()}"
             + (f"; {result.skipped_steps} steps left out for non-finite gradients" if result.skipped_steps else "")]
    grid = graph = ExecutionBlocker(None)
    epochs = None
    if validator is not None:
        history, output = validator.history, validation.output
        lora = read_lora(history.choose(output).path)  # the chosen epoch's file, as saved
        lines += [f"validation: {validation.images_per_epoch} image(s) per epoch, "
                  f"{validating / max(1, len(validator.seconds)):.1f}s per epoch; output: {history.why(output)}",
                  history.table(output)]
        grid = pil_to_tensor(draw_validation_grid(history, output))
        graph = pil_to_tensor(draw_score_graph(history, result.losses, output))
        epochs = [{"epoch": e.epoch, "mean_loss": e.mean_loss, "scores": e.scores, "scorer_scores": e.columns,
                   "lora": e.lora_name} for e in history.epochs]
    else:
        graph = pil_to_tensor(draw_loss_graph(result.losses))
    lines.append(memory)
    report = "\n".join(lines)
    log.info("Aesthete trainer: %s", report)
    # the same loader as core LoraLoaderModelOnly, so the output MODEL equals loading the saved file
    trained_model, _ = comfy.sd.load_lora_for_models(model, None, lora.tensors, 1.0, 0)
    return TrainedModel(trained_model, lora, list(result.losses), grid, graph, report, epochs)


def model_encoders(base_model, clip, vae, device):
    """The image and caption encoders of a loaded model: VAE latents in the model's space, and the conditioning
    tensors its ``apply_model`` takes (cross-attention context, plus SDXL's size/pooled vector)."""
    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        return base_model.process_latent_in(vae.encode(pixels[..., :3]).float())

    def encode_caption(caption: str, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        cond, extra = clip.encode_from_tokens_scheduled(clip.tokenize(caption), show_pbar=False)[0]
        w, h = size
        noise = torch.zeros((1, base_model.latent_format.latent_channels, h // 8, w // 8))
        params = {k: v for k, v in extra.items() if k not in ("cross_attn",)}
        out = base_model.extra_conds(cross_attn=cond, width=w, height=h, device=device, noise=noise,
                                     prompt_type="positive", **params)
        return {k: v.cond for k, v in out.items() if isinstance(getattr(v, "cond", None), torch.Tensor)}

    return encode_images, encode_caption


class EncoderOffload:
    """Once the captions and images are encoded, only the trained model stays in the training's memory: ComfyUI's
    model management moves the text encoder and the VAE off a GPU; on the CPU, which has no other memory to offload
    to, their weights are parked on disk (in ComfyUI's temp folder) and read back when next used: by validation's
    VAE decoding (whose pages go back after each validation) and by the graph's later nodes."""

    def __init__(self, patcher, clip, vae, device: torch.device):
        compat.load_for_training(patcher)
        self.clip = clip
        self.parked: dict[str, ParkedWeights | None] = {}
        if device.type == "cpu":
            started = time.perf_counter()
            for what, module in (("text encoder", clip.patcher.model), ("VAE", vae.first_stage_model)):
                self.parked[what] = park_on_disk(module, folder_paths.get_temp_directory(),
                                                 name=what.replace(" ", "-"))
            log.info("Aesthete trainer: %s in %.1fs", self.describe(), time.perf_counter() - started)

    def after_validation(self) -> None:
        for parked in self.parked.values():
            if parked is not None:
                parked.release()

    def describe(self) -> str:
        """What became of the text encoder and the VAE, said for the report."""
        if self.parked:
            return "; ".join(f"{what} {p.describe() if p is not None else 'stays in RAM (it could not be parked: the log says why)'}"
                             for what, p in self.parked.items())
        if self.clip.patcher in comfy.model_management.loaded_models():
            return "the text encoder is still loaded beside the trained model (there was room for both)"
        return "the text encoder was offloaded after encoding (ComfyUI's model management)"


class EpochValidator:
    """After an epoch: the validation images generated and judged as a core graph would (nodes/generate.py, the path
    Judge LoRA Files takes too) on the model being trained, the epoch's LoRA added to its layers' outputs as in
    training (so the model's weights are never patched or moved for it: no transfer of the UNet per epoch). The
    prompts are encoded once, before training."""

    def __init__(self, spec: ValidationSpec, clip, vae, training_patcher, job: TrainingJob, progress: LossProgress):
        self.spec, self.vae, self.training_patcher = spec, vae, training_patcher
        self.job, self.progress = job, progress
        self.prompts = encode_prompts(clip, spec)
        self.history = ValidationHistory()
        self.epoch = 0  # the epoch being validated, 0 outside validation
        self.seconds: list[float] = []  # each epoch's validation time

    def __call__(self, epoch: int, network, result) -> None:
        self.epoch = epoch
        started = time.perf_counter()
        with back_to_training(self.training_patcher):
            images = generate(self.training_patcher, self.vae, self.prompts, self.spec)
            judgement = judge(self.spec.predictor, images, image_prompts(self.spec))
        scores, columns = (judgement.scores, judgement.columns) if judgement is not None else (None, None)
        self.epoch = 0  # left set when a cancel ends the validation, for the log line
        self.seconds.append(time.perf_counter() - started)
        saved = self.job.saved[-1] if self.job.saved else None
        name = saved.relative_to(self.job.loras_root.resolve()).as_posix() if saved else ""
        entry = self.history.add(epoch, result.losses, [tensor_to_pil(im) for im in images], scores, name, saved,
                                 columns)
        each = "".join(f", {k} {v:.3f}" for k, v in entry.column_means().items())
        score = f", mean score {entry.mean_score:.3f}{each}" if scores else " (no predictor: not scored)"
        line = f"epoch {epoch}: mean loss {entry.mean_loss:.4f}{score}; saved {name}"
        log.info("Aesthete validation: %s", line)
        self.progress.on_epoch(line)


@contextmanager
def back_to_training(patcher):
    """After validation the trained model gets the device's memory back (the VAE and the predictor are offloaded; the
    model itself was loaded all along, so nothing moves unless sampling had to evict it). When validation failed,
    its error is the one raised: a failure of this reload is only logged."""
    try:
        yield
    except BaseException:
        try:
            compat.load_for_training(patcher)
        except Exception as e:  # noqa: BLE001 - the validation's error is the one the user must see
            log.warning("Aesthete trainer: after the validation error, reloading the model for training failed "
                        "too: %s", e)
        raise
    compat.load_for_training(patcher)


@contextmanager
def cancelled_during_validation(job: TrainingJob, validator: EpochValidator | None):
    """A cancel while an epoch's images are generated: every epoch saved so far stays (the validated one
    included), said in the log; ComfyUI then reports the interrupt."""
    try:
        yield
    except comfy.model_management.InterruptProcessingException:
        if validator is not None and validator.epoch:
            log.warning("Aesthete trainer: cancelled while validating epoch %d; kept every epoch saved so far: %s",
                        validator.epoch, ", ".join(p.name for p in job.saved) or "none")
        raise


class LossProgress:
    """The node's progress bar: one tick per optimizer step, with the loss graph so far as its preview (about 25
    previews a run, and the last step's)."""

    def __init__(self, node_id: str, settings: TrainSettings, dataset: LoraDataset):
        self.node_id = node_id
        self.losses: list[float] = []
        self.bar = comfy.utils.ProgressBar(1, node_id=node_id)
        self.epochs = settings.epochs
        self.steps_per_epoch = -(-dataset.steps_per_epoch(settings.batch_size) // settings.grad_accumulation)
        self.preview_every = max(1, settings.epochs * self.steps_per_epoch // 25)
        self.total = 1
        self.last_validation = ""

    def title(self, step: int, loss: float) -> str:
        epoch = min(self.epochs, (step - 1) // max(1, self.steps_per_epoch) + 1)
        return f"epoch {epoch}/{self.epochs}  step {step}/{self.total}  loss {loss:.4f}"

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.losses.append(loss)
        self.total = total
        preview = None
        if step % self.preview_every == 0 or step == total:
            preview = ("PNG", draw_loss_graph(self.losses, width=512, height=320, title=self.title(step, loss)), 512)
        self.bar.update_absolute(step, total, preview)

    def on_epoch(self, line: str) -> None:
        """After an epoch's validation: its score on the preview and as the node's text."""
        self.last_validation = line
        step = len(self.losses)
        if step:
            preview = ("PNG", draw_loss_graph(self.losses, width=512, height=320, title=line), 512)
            self.bar.update_absolute(step, self.total, preview)
        from server import PromptServer  # here: the server module imports only inside a running ComfyUI

        if getattr(PromptServer, "instance", None) is not None and self.node_id is not None:
            PromptServer.instance.send_progress_text(line, self.node_id)


@contextmanager
def clear_training_errors():
    """A NaN loss, told in words that say what to change (running out of memory: see out_of_memory_named)."""
    try:
        yield
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}. This run's LoRA is not output (checkpoints saved every N epochs stay in "
                                 "models/loras)") from None
