"""LoRA loader for every format ComfyUI loads, plus DiffSynth-Studio 1.x/2.x, diffusers and peft names.

ComfyUI's own machinery does the work: its key map of the loaded model (``comfy.lora.model_lora_keys_unet`` /
``_clip``) places every module it knows, ``aesthete.lora`` renames the modules only this pack knows to names of
that map, and ``comfy.lora.load_lora`` builds the patches with ComfyUI's weight adapters (LoRA, LoCon, LoHa, LoKr,
DoRA, full differences...). So a file core LoraLoader applies is applied the same way; the node adds the other
formats, the alpha of files that store none, and a report of what it placed and what it could not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import comfy.lora
import comfy.lora_convert
import folder_paths
from comfy_api.latest import io, ui

from ..common.paths import path_inside
from ..lora.alpha import DEFAULT_TRAINING_ALPHA
from ..lora.files import LORA_SUFFIXES, read_lora_file
from ..lora.fitting import loader_tensors, restrict_to_model, unread_tensors
from ..lora.formats import ParsedLora, parse_lora
from ..lora.report import LoraApplyError, nothing_placed_message, report_text, summary, unread_message

log = logging.getLogger("aesthete.lora")


class _ReadLog(dict):
    """The tensors handed to ComfyUI's loader, remembering which of them it read."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.read: set[str] = set()

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.read.add(key)
        return value

    def get(self, key, default=None):
        if key in self:
            return self[key]
        return default


def lora_choices(suffixes: tuple[str, ...] = LORA_SUFFIXES) -> list[str]:
    """The files of ComfyUI's LoRA folders whose names end with one of ``suffixes``, as its loaders list them."""
    return [name for name in folder_paths.get_filename_list("loras") if name.lower().endswith(suffixes)]


def lora_path(name: str) -> Path:
    """The file ``name`` inside one of the loras folders; never a path outside them (``..`` cannot climb out;
    symlinks a user placed inside the folder are followed, as ComfyUI's own loaders do)."""
    for folder in folder_paths.get_folder_paths("loras"):
        candidate = path_inside(folder, name, what="LoRA", where="models/loras")
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"models/loras/{name}: no such LoRA file; put it in models/loras (or a folder listed "
                            f"under loras: in extra_model_paths.yaml) and pick it from the list")


def model_base(model) -> str | None:
    """"sdxl" for SDXL-architecture UNets (SDXL, Kolors, SSD-1B...), "sd15" for SD1.x/2.x, None otherwise."""
    config = getattr(model.model, "model_config", None)
    unet_config = getattr(config, "unet_config", {}) or {}
    if "num_res_blocks" not in unet_config:
        return None
    return "sdxl" if unet_config.get("adm_in_channels") else "sd15"


def weight_shapes(module, keys) -> dict[str, tuple[int, ...]]:
    """Shapes of the named weights of ``module`` (the model or the CLIP), without building its whole state dict
    (walks the submodule dicts: nn.Module.__getattr__ would cost as much as ComfyUI's key map itself)."""
    shapes = {}
    for key in keys:
        name = key[0] if isinstance(key, tuple) else key
        *path, leaf = name.split(".")
        m = module
        try:
            for part in path:
                m = m._modules[part]
        except KeyError:
            continue
        tensor = m._parameters.get(leaf)
        tensor = m._buffers.get(leaf) if tensor is None else tensor
        if tensor is not None:
            shapes[name] = tuple(tensor.shape)
    return shapes


class AestheteLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteLoraLoader",
            display_name="Load LoRA (any format)",
            category="Aesthete/lora",
            description="Applies a LoRA of any common format to a model and, optionally, its CLIP: every file core "
                        "Load LoRA applies (kohya and ComfyUI LoRA, LoCon, LoHa, LoKr, DoRA, full differences), "
                        "applied by ComfyUI's own code the same way, plus diffusers and peft names, "
                        "DiffSynth-Studio 1.x Kolors/SDXL checkpoints and DiffSynth 2.x SDXL files. Works on SD1.5, "
                        "SDXL and Kolors (SDXL-architecture) models. Reports the format, the kinds of layers, and "
                        "every tensor it could not place.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.5, SDXL or Kolors) to apply the LoRA to."),
                io.Combo.Input("lora_name", options=lora_choices(),
                               tooltip="A LoRA file in models/loras: .safetensors, or .ckpt/.pt/.bin (read without "
                                       "running any pickled code)."),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly to apply the LoRA to the diffusion model; may be negative."),
                io.Float.Input("strength_clip", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly to apply the LoRA's text-encoder layers to the CLIP."),
                io.Float.Input("alpha", default=DEFAULT_TRAINING_ALPHA, min=0.0, max=1024.0, step=0.5,
                               tooltip="The training alpha, used only for low-rank layers of files that store none "
                                       "(DiffSynth, most peft/diffusers files): the update is scaled by alpha/rank. "
                                       "DiffSynth 1.x's recipe trains with 4. 0 = automatic: 4 for DiffSynth 1.x "
                                       "files, the rank (scale 1.0, as core Load LoRA) for others, e.g. DiffSynth "
                                       "2.x, which trains with alpha = rank."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Optional CLIP model for the LoRA's text-encoder layers."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the LoRA applied."),
                io.Clip.Output(display_name="CLIP",
                               tooltip="The CLIP with the LoRA's text-encoder layers applied (None if none given)."),
                io.String.Output(display_name="report",
                                 tooltip="Format detected, tensors applied out of tensors found, layers by kind "
                                         "(e.g. kohya LoHa), and examples of any tensor that could not be placed."),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model, strength_clip, alpha, clip=None) -> io.NodeOutput:
        applied = apply_lora_file(model, clip, lora_name, strength_model, strength_clip, alpha)
        return io.NodeOutput(applied.model, applied.clip, applied.report, ui=ui.PreviewText(applied.report))


@dataclass
class AppliedLora:
    model: object  # the patched MODEL clone
    clip: object | None  # the patched CLIP clone (None without a CLIP)
    report: str
    clip_layers: int  # the file's layers placed on the text encoder


def apply_lora_file(model, clip, lora_name: str, strength_model: float, strength_clip: float,
                    alpha: float) -> AppliedLora:
    """Load LoRA (any format)'s work: the file read safely, converted by core's converter, its layers named by the
    model's own key map (other formats renamed), patches built by ComfyUI's weight adapters and added to clones as
    core LoraLoader adds them. Raises with the file's name when nothing of it fits the model or a tensor it holds
    would be left out."""
    where = f"models/loras/{lora_name}"
    tensors, _metadata = read_lora_file(lora_path(lora_name))
    converted = comfy.lora_convert.convert_lora(tensors)  # core converts first too
    parsed = parse_for_model(converted, model, clip)
    if not parsed.layers:
        raise ValueError(nothing_placed_message(where, parsed))

    handed, to_load = loader_tensors(parsed, alpha)
    handed = _ReadLog(handed)
    patches = comfy.lora.load_lora(handed, to_load, log_missing=False)
    unread = unread_tensors(parsed, handed.read)
    if unread:  # a scale or mid matrix left out would apply its layer wrongly: apply nothing
        raise LoraApplyError(unread_message(where, unread))
    new_model, new_clip, missed = add_patches(model, clip, patches, strength_model, strength_clip)
    if missed:  # ComfyUI refused a patch we placed: never let that pass silently
        log.warning("Aesthete LoRA %s: ComfyUI did not apply %d patches, e.g. %s", lora_name, len(missed),
                    missed[:3])

    report = report_text(lora_name, parsed, alpha, missed, file_keys=len(tensors))
    if parsed.unplaced:
        log.warning("Aesthete LoRA %s: %d of %d tensors not placed, e.g. %s", lora_name, len(parsed.unplaced),
                    parsed.total_keys, list(parsed.unplaced.items())[:3])
    log.info("Aesthete LoRA %s: %s", lora_name, summary(parsed, alpha))
    clip_layers = sum(1 for layer in parsed.layers if not layer.is_unet) if clip is not None else 0
    return AppliedLora(new_model, new_clip, report, clip_layers)


def parse_for_model(tensors: dict, model, clip) -> ParsedLora:
    """The file's layers named by the loaded model's (and CLIP's) own LoRA key maps, kept where the model has a
    weight of the update's size."""
    unet_keys = comfy.lora.model_lora_keys_unet(model.model, {})
    clip_keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}) if clip is not None else None
    parsed = parse_lora(tensors, unet_keys, clip_keys, base=model_base(model))
    shapes = weight_shapes(model.model, [layer.weight_key for layer in parsed.layers if layer.is_unet])
    if clip is not None:
        shapes |= weight_shapes(clip.cond_stage_model, [layer.weight_key for layer in parsed.layers
                                                        if not layer.is_unet and layer.weight_key is not None])
    return restrict_to_model(parsed, shapes, clip_connected=clip is not None)


def add_patches(model, clip, patches: dict, strength_model: float, strength_clip: float):
    """(patched model clone, patched CLIP clone or None, the patches neither took), as core LoraLoader adds them."""
    unet_patches = {k: v for k, v in patches.items()
                    if (k[0] if isinstance(k, tuple) else k).startswith("diffusion_model.")}
    new_model = model.clone()
    applied = set(new_model.add_patches(unet_patches, strength_model))
    new_clip = None
    if clip is not None:
        new_clip = clip.clone()
        applied |= set(new_clip.add_patches({k: v for k, v in patches.items() if k not in unet_patches},
                                            strength_clip))
    return new_model, new_clip, [k for k in patches if k not in applied]


NODES = [AestheteLoraLoader]
