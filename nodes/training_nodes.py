"""LoRA training inside the graph: a captioned dataset folder, the validation settings, the trainer on the loaded
MODEL, the loss graph, and the save node. The work is done by ``aesthete.training``; Train LoRA's run in ComfyUI is
wired by nodes/training_adapter.py. These classes gather what the user set."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import comfy.samplers
import folder_paths
from comfy_api.latest import io, ui

from ..common.images import pil_to_tensor
from ..common.paths import path_inside
from ..lora.files import numbered_path
from ..training.captions import CaptionRecipe
from ..training.dataset import CROP_MODES, LoraDataset, load_dataset
from ..training.job import TrainingJob
from ..training.lora_network import TARGET_PRESETS
from ..training.loop import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainSettings
from ..training.loss_graph import draw_loss_graph
from ..training.save import COPY_FORMATS, SaveError, TrainedLora, save_copy, save_lora
from ..training.validation import (OUTPUT_CHOICES, RECIPE_NEGATIVE, RECIPE_TEST_PROMPT, ValidationSpec, parse_prompts)
from .lora_nodes import lora_choices
from .scoring_adapter import LoadedScorer
from .scorer_nodes import AestheticModel
from .training_adapter import train_lora

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


def predictor_scores(predictor: LoadedScorer):
    """``score(pil_images, captions) -> list[float]`` from a scorer's or a judge's value (loaded to its device
    first); a prompt-aware one reads each image's caption as its prompt."""
    scorer = predictor.ready()
    prompt_aware = predictor.prompt_aware

    def score(images, captions):
        return scorer.score_images(images, prompts=list(captions) if prompt_aware else None)
    return score


def loras_root() -> Path:
    return Path(folder_paths.get_folder_paths("loras")[0])


def resume_choices() -> list[str]:
    """What Train LoRA can continue: LoRAs it saved (safetensors), or none."""
    return [NO_LORA] + lora_choices((".safetensors",))


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
                               score=predictor_scores(aesthetic_model) if aesthetic_model is not None else None,
                               score_needs_captions=aesthetic_model is not None and aesthetic_model.prompt_aware)
        report = dataset.report()
        log.info("Aesthete dataset: %s", report)
        return io.NodeOutput(dataset, report, ui=ui.PreviewText(report))


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
                io.Combo.Input("resume_from", options=resume_choices(), default=NO_LORA,
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
        trained = train_lora(model, clip, vae, job, rank, alpha, validation, cls.hidden.unique_id)
        return io.NodeOutput(trained.model, trained.lora, {"loss": trained.losses}, trained.grid, trained.graph,
                             trained.report, ui=trained.ui())


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
                output_lora, predictor: LoadedScorer | None = None) -> io.NodeOutput:
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
