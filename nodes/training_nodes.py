"""LoRA training inside the graph: a captioned dataset folder, the trainer on the loaded MODEL, the loss graph, and
the save node. The work is done by ``aesthete.training``; these classes adapt it to ComfyUI."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui
from comfy_execution.graph import ExecutionBlocker

from ..common.images import pil_to_tensor, tensor_to_pil
from ..common.parking import ParkedWeights, park_on_disk
from ..common.paths import path_inside
from ..lora.files import numbered_path
from ..scoring import judge
from ..training.captions import CaptionRecipe
from ..training.dataset import CROP_MODES, LoraDataset, load_dataset
from ..training.job import TrainingJob
from ..training.lora_network import TARGET_PRESETS
from ..training.loop import OPTIMIZERS, PRECISIONS, SCHEDULES, NonFiniteLossError, TrainSettings
from ..training.loss_graph import draw_loss_graph
from ..training.memory import PhaseMemory
from ..training.save import COPY_FORMATS, SaveError, TrainedLora, read_lora, save_copy, save_lora
from ..training.trainer import ConvLayout, build_cache, run_training
from ..training.validation import (OUTPUT_CHOICES, RECIPE_NEGATIVE, RECIPE_TEST_PROMPT, ValidationHistory,
                                   ValidationSpec, draw_score_graph, draw_validation_grid, parse_prompts)
from . import compat
from .scoring_nodes import AestheticModel, LoadedPredictor
from .training_adapter import LAYOUT_ATTRIBUTE, TrainingSteps, inference_only_layers_named, out_of_memory_named

log = logging.getLogger("aesthete.training")

Dataset = io.Custom("AESTHETE_DATASET")
Lora = io.Custom("AESTHETE_LORA")
Validation = io.Custom("AESTHETE_VALIDATION")
LossMap = io.Custom("LOSS_MAP")  # the type of ComfyUI's own trainer: {"loss": [...]}, so both graph nodes accept both
NO_LORA = "[None]"
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dataset_folder(folder: str, allow_outside: bool) -> Path:
    """``folder`` inside ComfyUI's input directory; an absolute or escaping path only when ``allow_outside``."""
    return path_inside(folder_paths.get_input_directory(), folder, what="folder", where="ComfyUI's input directory",
                       hint="move the images there, or turn on allow_outside_input", allow_outside=allow_outside)


def aesthetic_scorer(aesthetic_model: LoadedPredictor):
    """``score(pil_images, captions) -> list[float]`` from a scorer's or a judge's value (loaded to its device
    first); a prompt-aware one reads each image's caption as its prompt."""
    scorer = aesthetic_model.ready()
    prompt_aware = aesthetic_model.prompt_aware

    def score(images, captions):
        return scorer.score_images(images, prompts=list(captions) if prompt_aware else None)
    return score


def loras_root() -> Path:
    return Path(folder_paths.get_folder_paths("loras")[0])


def lora_choices() -> list[str]:
    return [NO_LORA] + [n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors")]


class AestheteLoraDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteLoraDataset",
            display_name="LoRA Dataset (Folder)",
            category="Aesthete/training",
            description="Reads a folder of images with captions (name.txt beside each image, name.json tag lists, or "
                        "a metadata.csv with file_name,text) into a training set: trigger word, tag order and "
                        "shuffle, caption dropout, repeats, aspect-ratio buckets or crops, and an optional aesthetic "
                        "filter. Shows what it kept, what it skipped and why, and the buckets.",
            inputs=[
                io.String.Input("folder", default="lora_dataset",
                                tooltip="Folder of training images, relative to ComfyUI's input directory"),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=8,
                             tooltip="Training size: images are resized to about resolution x resolution pixels "
                                     "(512 for SD1.5, 1024 for SDXL and Kolors)"),
                io.Combo.Input("crop_mode", options=list(CROP_MODES), default="buckets",
                               tooltip="buckets: keep each image's aspect ratio (sizes grouped in buckets); centre "
                                       "or random crop: square crops"),
                io.String.Input("trigger_word", default="",
                                tooltip="Put first in every caption (and kept when a caption is dropped)"),
                io.Int.Input("keep_first_tags", default=1, min=0, max=256,
                             tooltip="The first N tags stay in place; the others may be shuffled"),
                io.Boolean.Input("shuffle_tags", default=True,
                                 tooltip="Shuffle the tags after the kept ones, anew each epoch"),
                io.Float.Input("caption_dropout", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Chance that a caption is left out (only the trigger word stays)"),
                io.Int.Input("repeats", default=1, min=1, max=1000,
                             tooltip="How many times each image is seen per epoch"),
                io.Boolean.Input("require_captions", default=False,
                                 tooltip="Skip images that have no caption"),
                io.Boolean.Input("allow_outside_input", default=False,
                                 tooltip="Allow a folder outside ComfyUI's input directory (an absolute path)"),
                AestheticModel.Input("aesthetic_model", optional=True,
                                     tooltip="Optional scorer or judge: images scoring below min_score are "
                                             "dropped (a prompt-aware one reads each image's caption; images "
                                             "without one are skipped)"),
                io.Float.Input("min_score", default=5.0, min=-1000.0, max=1000.0, step=0.05, optional=True,
                               tooltip="Lowest aesthetic score kept (LAION predictors score about 1-10; used only "
                                       "with an aesthetic_model)"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed of random crops, tag shuffling and caption dropout"),
            ],
            outputs=[
                Dataset.Output(display_name="dataset", tooltip="The training set, for Train LoRA"),
                io.String.Output(display_name="report",
                                 tooltip="Images kept and skipped (with the reason), caption sources and buckets"),
            ],
        )

    @classmethod
    def execute(cls, folder, resolution, crop_mode, trigger_word, keep_first_tags, shuffle_tags, caption_dropout,
                repeats, require_captions, allow_outside_input, seed, aesthetic_model=None,
                min_score=5.0) -> io.NodeOutput:
        path = resolve_dataset_folder(folder, allow_outside_input)
        recipe = CaptionRecipe(trigger_word, keep_first_tags, shuffle_tags, caption_dropout)
        dataset = load_dataset(path, resolution=resolution, crop_mode=crop_mode, recipe=recipe, repeats=repeats,
                               require_captions=require_captions, seed=seed, min_score=min_score,
                               score=aesthetic_scorer(aesthetic_model) if aesthetic_model is not None else None,
                               score_needs_captions=aesthetic_model is not None and aesthetic_model.prompt_aware)
        report = dataset.report()
        log.info("Aesthete dataset: %s", report)
        return io.NodeOutput(dataset, report, ui=ui.PreviewText(report))


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


class AestheteTrainLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteTrainLora",
            display_name="Train LoRA (Aesthete)",
            category="Aesthete/training",
            description="Trains a LoRA on the loaded MODEL from a dataset: latents and captions are encoded once, "
                        "then the LoRA layers (attention q, k, v, out by default) learn to denoise. Shows the loss "
                        "as it goes; cancel keeps what was trained (saved under models/loras). Outputs the MODEL "
                        "with the LoRA applied, the LoRA for Save LoRA, and the loss history. With Validation "
                        "Settings connected, every epoch's LoRA generates and scores images, every epoch is saved "
                        "and the best-scoring one is output. Once everything is encoded the text encoder and the "
                        "VAE leave the training's memory (on the CPU their weights wait on disk, in ComfyUI's temp "
                        "folder).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to train on (SD1.5 or SDXL architecture, "
                                                "Kolors included)"),
                io.Clip.Input("clip", tooltip="The model's text encoder, for the captions"),
                io.Vae.Input("vae", tooltip="The model's VAE, to encode the images once"),
                Dataset.Input("dataset", tooltip="From LoRA Dataset (Folder)"),
                io.Int.Input("epochs", default=5, min=1, max=10000,
                             tooltip="Passes over the dataset (5 made the recipe's LoRAs stable)"),
                io.Int.Input("rank", default=16, min=1, max=256,
                             tooltip="LoRA rank: 16 for a style, 4 for one subject"),
                io.Float.Input("alpha", default=4.0, min=0.01, max=1024.0, step=0.01,
                               tooltip="LoRA alpha: the update is scaled by alpha/rank (4 was the most stable)"),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6,
                               tooltip="Step size of the optimizer"),
                io.Int.Input("batch_size", default=1, min=1, max=256,
                             tooltip="Images per step (of one bucket). Lower it if memory runs out"),
                io.Int.Input("grad_accumulation", default=1, min=1, max=1024,
                             tooltip="Batches whose gradients are summed before each optimizer step: a larger "
                                     "effective batch without more memory"),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="AdamW",
                               tooltip="Optimizer of the LoRA weights"),
                io.Combo.Input("lr_schedule", options=list(SCHEDULES), default="constant",
                               tooltip="Learning rate after the warm-up: constant, or decaying to 0"),
                io.Int.Input("warmup_steps", default=0, min=0, max=100000,
                             tooltip="Optimizer steps over which the learning rate rises from 0"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed of the LoRA's initial weights, noise, noise levels and order"),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp32",
                               tooltip="fp32: each layer computes in the MODEL's own dtype, the LoRA in fp32 (on fp16 "
                                       "weights, ComfyUI's default on most GPUs, the loss is scaled so gradients do "
                                       "not vanish); bf16: autocast, less memory on fp32 weights, but on fp16 weights "
                                       "it keeps a bf16 copy of every weight for the backward pass: more memory; "
                                       "fp16 autocast: with loss scaling"),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute activations in the backward pass: much less memory, about "
                                         "30% slower. Turn on when memory runs out"),
                io.Combo.Input("target_layers", options=list(TARGET_PRESETS), default="attention q,k,v,out",
                               tooltip="Which Linear layers get a LoRA (attention q, k, v, out as the recipe)"),
                io.Int.Input("save_every_n_epochs", default=0, min=0, max=10000,
                             tooltip="Save the LoRA every N epochs under models/loras/<checkpoint_name> "
                                     "(0: never)"),
                io.String.Input("checkpoint_name", default="aesthete/lora_training",
                                tooltip="Name under models/loras for the LoRAs saved every N epochs and on "
                                        "cancel"),
                io.Combo.Input("resume_from", options=lora_choices(), default=NO_LORA,
                               tooltip="Continue training a LoRA saved by Aesthete (models/loras) for `epochs` "
                                       "more epochs; its rank and alpha are kept. A checkpoint of this node (every "
                                       "N epochs, or _interrupted) also continues its optimizer, learning-rate "
                                       "schedule and noise from the .training_state file beside it, so the loss "
                                       "goes on as in one run"),
                Validation.Input("validation", optional=True,
                                 tooltip="From Validation Settings: after every epoch, generate images with the "
                                         "epoch's LoRA and score them; every epoch's LoRA is saved and the "
                                         "best-scoring one is output"),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The MODEL with the trained LoRA applied (with "
                                                             "validation: the output epoch's LoRA)"),
                Lora.Output(display_name="lora", tooltip="The trained LoRA, for Save LoRA (with validation: the "
                                                         "best-scoring epoch's, or the last as the settings say)"),
                LossMap.Output(display_name="loss", tooltip="Loss per optimizer step, for the loss graph"),
                io.Image.Output(display_name="validation_grid",
                                tooltip="The validation images, one row per epoch, scores drawn on (nothing runs "
                                        "from it without validation)"),
                io.Image.Output(display_name="score_graph",
                                tooltip="The loss curve with the mean validation score per epoch beside it"),
                io.String.Output(display_name="report",
                                 tooltip="Epoch, mean loss, mean score and saved LoRA per epoch; the epoch output; "
                                         "the memory encoding and training took"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset: LoraDataset, epochs, rank, alpha, learning_rate, batch_size,
                grad_accumulation, optimizer, lr_schedule, warmup_steps, seed, precision, gradient_checkpointing,
                target_layers, save_every_n_epochs, checkpoint_name, resume_from,
                validation: ValidationSpec | None = None) -> io.NodeOutput:
        settings = TrainSettings(epochs=epochs, batch_size=batch_size, grad_accumulation=grad_accumulation,
                                 learning_rate=learning_rate, optimizer=optimizer, schedule=lr_schedule,
                                 warmup_steps=warmup_steps, seed=seed, precision=precision,
                                 gradient_checkpointing=gradient_checkpointing, save_every_n_epochs=save_every_n_epochs)
        settings.check()
        if validation is not None:
            validation.check()
        job = TrainingJob(dataset, settings, TARGET_PRESETS[target_layers], type(model.model.model_config).__name__,
                          loras_root(), checkpoint_name, keep_every_epoch=validation is not None,
                          unet_config=dict(model.model.model_config.unet_config))
        if resume_from and resume_from != NO_LORA:
            job.resume_from(resume_from, folder_paths.get_full_path_or_raise("loras", resume_from))
        with torch.inference_mode(False), torch.enable_grad():
            patcher = model.clone()
            base, device = patcher.model, patcher.load_device
            meter = PhaseMemory(device)
            encode_images, encode_caption = model_encoders(base, clip, vae, device)
            with meter.phase("encoding"), out_of_memory_named("encoding"):
                cache = build_cache(dataset, settings, encode_images, encode_caption, job.resume_epochs,
                                    encoders=(vae, clip, base))
                log.info("Aesthete trainer: %s", cache.describe())
                progress = LossProgress(cls.hidden.unique_id, settings, dataset)
                validator = EpochValidator(validation, clip, vae, patcher, job, progress) \
                    if validation is not None else None
            offload = EncoderOffload(patcher, clip, vae, device)
            layout = ConvLayout(base.diffusion_model, device, chosen=getattr(base, LAYOUT_ATTRIBUTE, None))
            steps = TrainingSteps(base.diffusion_model)

            def on_epoch_end(epoch, network, result):
                job.on_epoch_end(epoch, network, result)
                if validator is not None:
                    with meter.phase("validation"), out_of_memory_named("validation"), layout.usual_while(), \
                            steps.paused():
                        validator(epoch, network, result)
                    offload.after_validation()

            with meter.phase("training"), out_of_memory_named("training"), clear_training_errors(), \
                    inference_only_layers_named(), cancelled_during_validation(job, validator), steps:
                run = run_training(base.diffusion_model, base, dataset, cache, settings, rank=rank, alpha=alpha,
                                   targets=job.targets, resume=job.resume or None, resume_state=job.resume_state,
                                   device=device,
                                   on_step=progress.on_step,
                                   should_stop=comfy.model_management.processing_interrupted,
                                   on_epoch_end=on_epoch_end,
                                   # ComfyUI's layers raise on an interrupt: a cancel, not an error
                                   stop_exceptions=(comfy.model_management.InterruptProcessingException,),
                                   transformer_options=compat.training_transformer_options(
                                       patcher.model_options.get("transformer_options", {})),
                                   conv_layout=layout, compute_dtype=compat.compute_dtype(base),
                                   copy_inference_weights=not compat.is_dynamic(patcher))
            setattr(base, LAYOUT_ATTRIBUTE, layout.chosen)
            lora = job.finish(run)
            if run.result.cancelled:
                if run.result.stop_error is not None:
                    raise run.result.stop_error
                comfy.model_management.throw_exception_if_processing_interrupted()
        result = run.result
        validating = sum(validator.seconds) if validator is not None else 0.0
        training = max(result.seconds - validating, 1e-9)
        lines = [f"{result.steps} steps in {training:.1f}s ({result.steps / training:.2f} steps/s), loss "
                 f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}; {cache.describe()}"
                 + (f"; {result.skipped_steps} steps left out for non-finite gradients" if result.skipped_steps
                    else "")]
        grid = graph = ExecutionBlocker(None)
        ui_extra = {}
        if validator is not None:
            history, output = validator.history, validation.output
            chosen = history.choose(output)
            lora = read_lora(chosen.path)  # the chosen epoch's file, as saved
            lines += [f"validation: {validation.images_per_epoch} image(s) per epoch, "
                      f"{validating / max(1, len(validator.seconds)):.1f}s per epoch; output: {history.why(output)}",
                      history.table(output)]
            grid = pil_to_tensor(draw_validation_grid(history, output))
            graph = pil_to_tensor(draw_score_graph(history, result.losses, output))
            ui_extra["validation"] = [{"epoch": e.epoch, "mean_loss": e.mean_loss, "scores": e.scores,
                                       "scorer_scores": e.columns,
                                       "lora": e.lora_name} for e in history.epochs]
        else:
            graph = pil_to_tensor(draw_loss_graph(result.losses))
        lines.append(f"{meter.describe()}; {offload.describe()}")
        report = "\n".join(lines)
        log.info("Aesthete trainer: %s", report)
        # the same loader as core LoraLoaderModelOnly, so the output MODEL equals loading the saved file
        trained_model, _ = comfy.sd.load_lora_for_models(model, None, lora.tensors, 1.0, 0)
        return io.NodeOutput(trained_model, lora, {"loss": list(result.losses)}, grid, graph, report,
                             ui={"text": [report], "loss": list(result.losses), **ui_extra})


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


def encode_text(clip, text: str):
    """CONDITIONING of ``text``, as CLIPTextEncode makes it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


class EpochValidator:
    """After an epoch: the validation images generated by ComfyUI's own sampling (KSampler's noise and sampler) on
    the model being trained, the epoch's LoRA added to its layers' outputs as in training (so the model's weights are
    never patched or moved for it: no transfer of the UNet per epoch), decoded by the VAE and scored by the Aesthetic
    Score node's code. The prompts are encoded once, before training."""

    def __init__(self, spec: ValidationSpec, clip, vae, training_patcher, job: TrainingJob, progress: LossProgress):
        self.spec, self.vae, self.training_patcher = spec, vae, training_patcher
        self.job, self.progress = job, progress
        with torch.no_grad():
            self.positive = [encode_text(clip, p) for p in spec.prompts]
            self.negative = encode_text(clip, spec.negative)
        self.history = ValidationHistory()
        self.epoch = 0  # the epoch being validated, 0 outside validation
        self.seconds: list[float] = []  # each epoch's validation time

    def generate(self, model, positive) -> torch.Tensor:
        spec = self.spec
        latent = torch.zeros([spec.images_per_prompt, 4, spec.height // 8, spec.width // 8],
                             device=comfy.model_management.intermediate_device())  # EmptyLatentImage
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, spec.seed)  # the same noise every epoch
        samples = comfy.sample.sample(model, noise, spec.steps, spec.cfg, spec.sampler, spec.scheduler, positive,
                                      self.negative, latent, denoise=1.0, disable_pbar=True, seed=spec.seed)
        images = self.vae.decode(samples)
        return images.reshape(-1, *images.shape[-3:]) if images.ndim == 5 else images

    def __call__(self, epoch: int, network, result) -> None:
        self.epoch = epoch
        started = time.perf_counter()
        with back_to_training(self.training_patcher), torch.no_grad():
            images = torch.cat([self.generate(self.training_patcher, positive) for positive in self.positive])
            scores, columns = None, None
            if self.spec.predictor is not None:  # the Aesthetic Score node's path: a scorer or a judge
                scorer = judge.as_judge(self.spec.predictor.ready())
                # a prompt-aware scorer reads each image's validation prompt (images are in prompt order)
                prompts = [p for p in self.spec.prompts for _ in range(self.spec.images_per_prompt)]
                table = scorer.score_table(images, prompts if scorer.prompt_aware else None,
                                           interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
                scores, columns = table.combined, table.columns
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


class AestheteValidationSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteValidationSettings",
            display_name="Validation Settings (Aesthete)",
            category="Aesthete/training",
            description="What Train LoRA generates after every epoch to judge it: the prompts, the same seed and "
                        "noise every epoch, the sampler settings, and the scorer or judge that scores the images. "
                        "Connect it to Train LoRA's validation input; the best-scoring epoch's LoRA is output and "
                        "every epoch's is saved. Pick by an Aesthete Judge that combines an aesthetic or preference "
                        "score with a prompt-aware one (each image is scored against its validation prompt): an "
                        "aesthetic score alone rewards a LoRA that draws one pleasing style whatever the prompt. The "
                        "score graph shows every scorer's mean per epoch beside the combination.",
            inputs=[
                io.String.Input("prompts", default=RECIPE_TEST_PROMPT, multiline=True,
                                tooltip="One prompt per line (the recipe's test prompt by default)"),
                io.String.Input("negative", default=RECIPE_NEGATIVE, multiline=True,
                                tooltip="Negative prompt of every validation image (the recipe's list by default)"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seed of the validation noise: the same every epoch, so the images change "
                                     "only because the LoRA did"),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps per image"),
                io.Int.Input("width", default=1024, min=16, max=8192, step=8, tooltip="Image width"),
                io.Int.Input("height", default=1024, min=16, max=8192, step=8, tooltip="Image height"),
                io.Int.Input("images_per_prompt", default=1, min=1, max=64,
                             tooltip="Images per prompt (one batch, as KSampler with this batch size)"),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale"),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="The sampler, as in KSampler"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The scheduler, as in KSampler"),
                io.Combo.Input("output_lora", options=list(OUTPUT_CHOICES), default="best score",
                               tooltip="Which epoch's LoRA Train LoRA outputs: the best mean score, or the last "
                                       "epoch (every epoch stays saved either way)"),
                AestheticModel.Input("predictor", optional=True,
                                     tooltip="From Aesthete Judge (an aesthetic or preference scorer plus a "
                                             "prompt-aware one, the default that does not reward style collapse), "
                                             "a scorer loader or Aesthetic Predictor Loader. Without one the images "
                                             "are shown unscored and the last epoch is output"),
            ],
            outputs=[Validation.Output(display_name="validation", tooltip="For Train LoRA's validation input")],
        )

    @classmethod
    def execute(cls, prompts, negative, seed, steps, width, height, images_per_prompt, cfg, sampler_name, scheduler,
                output_lora, predictor: LoadedPredictor | None = None) -> io.NodeOutput:
        spec = ValidationSpec(prompts=parse_prompts(prompts), negative=negative, seed=seed, steps=steps, width=width,
                              height=height, images_per_prompt=images_per_prompt, cfg=cfg, sampler=sampler_name,
                              scheduler=scheduler, output=output_lora, predictor=predictor)
        spec.check()
        if predictor is None:
            log.warning("Validation Settings: no aesthetic predictor; the images are shown unscored and Train LoRA "
                        "outputs the last epoch")
        elif not predictor.prompt_aware and output_lora == "best score":
            log.warning("Validation Settings: %s reads no prompt, so the best epoch is picked by looks alone and a "
                        "LoRA collapsing into one style can win; combine it with a prompt-aware scorer in an "
                        "Aesthete Judge", predictor.name)
        return io.NodeOutput(spec)


class AestheteLossGraph(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteLossGraph",
            display_name="LoRA Loss Graph",
            category="Aesthete/training",
            description="Draws the loss per training step, raw and smoothed, as an image (also takes the loss of "
                        "ComfyUI's own Train LoRA).",
            is_output_node=True,
            inputs=[
                LossMap.Input("loss", tooltip="Loss history from Train LoRA"),
                io.Float.Input("smoothing", default=0.9, min=0.0, max=0.999, step=0.01,
                               tooltip="Exponential smoothing of the dark curve (0: none)"),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The loss graph")],
        )

    @classmethod
    def execute(cls, loss, smoothing) -> io.NodeOutput:
        values = loss.get("loss", []) if isinstance(loss, dict) else list(loss)
        img = draw_loss_graph(values, smoothing)
        tensor = pil_to_tensor(img)
        return io.NodeOutput(tensor, ui=ui.PreviewImage(tensor, cls=cls))


class AestheteSaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteSaveLora",
            display_name="Save LoRA (Aesthete)",
            category="Aesthete/training",
            description="Saves a trained LoRA under models/loras as safetensors in ComfyUI's key format (with .alpha) "
                        "and its training metadata, numbered so nothing is overwritten; optionally also copies that "
                        "other tools load: DiffSynth-Studio 1.x's format and diffusers/peft's "
                        "(KolorsPipeline/StableDiffusionXLPipeline.load_lora_weights).",
            is_output_node=True,
            inputs=[
                Lora.Input("lora", tooltip="From Train LoRA"),
                io.String.Input("name_prefix", default="aesthete/my_lora",
                                tooltip="File name under models/loras (folders allowed); _00001 etc. is added"),
                io.Combo.Input("precision", options=list(SAVE_DTYPES), default="fp32",
                               tooltip="fp32 keeps exactly the weights of the trained MODEL output; fp16/bf16 "
                                       "halve the file"),
                io.Boolean.Input("diffsynth_copy", default=False,
                                 tooltip="Also write <name>.diffsynth.safetensors in DiffSynth-Studio 1.x's key format "
                                         "(in DiffSynth, load_lora with lora_alpha = 4 / rank gives the same strength)"),
                io.Boolean.Input("diffusers_copy", default=False, optional=True,
                                 tooltip="Also write <name>.diffusers.safetensors in diffusers/peft's format, for "
                                         "pipe.load_lora_weights of diffusers' Kolors and SDXL pipelines"),
            ],
            outputs=[io.String.Output(display_name="lora_name",
                                      tooltip="The saved file's name as LoRA loaders list it")],
        )

    @classmethod
    def execute(cls, lora: TrainedLora, name_prefix, precision, diffsynth_copy, diffusers_copy=False) -> io.NodeOutput:
        if not isinstance(lora, TrainedLora):
            raise SaveError("lora: connect the lora output of Train LoRA (Aesthete)")
        root = loras_root()
        path = save_lora(lora, numbered_path(root, name_prefix), SAVE_DTYPES[precision])
        name = path.relative_to(root.resolve()).as_posix()
        lines = [f"saved {name} (rank {lora.rank}, {lora.metadata.get('aesthete.steps', '?')} steps)"]
        for to in [f for f, wanted in (("diffsynth", diffsynth_copy), ("diffusers", diffusers_copy)) if wanted]:
            copy, meta = save_copy(lora, path, to, SAVE_DTYPES[precision])
            dropped = int(meta.get("aesthete.dropped_keys", "0") or 0)
            lines.append(f"{COPY_FORMATS[to][1]} copy: {copy.relative_to(root.resolve()).as_posix()}"
                         + (f" ({dropped} tensors that format cannot hold were left out; see the log)"
                            if dropped else ""))
        return io.NodeOutput(name, ui=ui.PreviewText("\n".join(lines)))


NODES = [AestheteLoraDataset, AestheteValidationSettings, AestheteTrainLora, AestheteLossGraph, AestheteSaveLora]
