"""LoRA loader for every common format (ComfyUI, kohya, diffusers, peft, DiffSynth-Studio 1.x and 2.x).

The work is done by ``aesthete.lora``: it reads the file safely, places each layer on a UNet module and
converts it to ComfyUI's own LoRA layout; this node hands the result to ComfyUI's patcher, exactly as core
LoraLoader does, and reports what it placed and what it could not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.lora
import folder_paths
from comfy_api.latest import io, ui

from ..lora.convert import resolve_alpha, to_comfyui
from ..lora.files import LORA_SUFFIXES, read_lora_file
from ..lora.formats import DEFAULT_TRAINING_ALPHA, ParsedLora, parse_lora, restrict_to_model

log = logging.getLogger("aesthete.lora")

UNET_PREFIX = "diffusion_model."
REPORT_EXAMPLES = 5


def lora_choices() -> list[str]:
    return [name for name in folder_paths.get_filename_list("loras") if name.lower().endswith(LORA_SUFFIXES)]


def lora_path(name: str) -> Path:
    """The file ``name`` inside one of the loras folders; never a path outside them (``..`` cannot climb out;
    symlinks a user placed inside the folder are followed, as ComfyUI's own loaders do)."""
    for folder in folder_paths.get_folder_paths("loras"):
        root = Path(os.path.abspath(folder))
        candidate = Path(os.path.abspath(root / name))
        if candidate.is_relative_to(root) and candidate.is_file():
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


def report_text(name: str, parsed: ParsedLora, alpha_note: str, unet_layers: int, clip_layers: int) -> str:
    lines = [f"LoRA: {name}",
             f"Format: {parsed.describe()}",
             f"Base: {parsed.base or 'unknown'}",
             f"Applied {parsed.placed_keys} of {parsed.total_keys} tensors: {unet_layers} UNet layers, "
             f"{clip_layers} text-encoder layers; {alpha_note}"]
    if parsed.unplaced:
        lines.append(f"Not placed: {len(parsed.unplaced)} tensors, for example:")
        lines += [f"  {key}: {why}" for key, why in list(parsed.unplaced.items())[:REPORT_EXAMPLES]]
    return "\n".join(lines)


class AestheteLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteLoraLoader",
            display_name="Load LoRA (any format)",
            category="Aesthete/lora",
            description="Applies a LoRA of any common format to a model and, optionally, its CLIP: ComfyUI and "
                        "kohya files, diffusers and peft names, DiffSynth-Studio 1.x Kolors/SDXL checkpoints and "
                        "DiffSynth 2.x SDXL files. Works on SD1.5, SDXL and Kolors (SDXL-architecture) models. "
                        "Reports the format it found and every tensor it could not place.",
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
                               tooltip="The training alpha, used only for files that store none (DiffSynth, most "
                                       "peft/diffusers files): the update is scaled by alpha/rank. DiffSynth 1.x's "
                                       "recipe trains with 4. 0 = automatic: 4 for DiffSynth 1.x files, the rank "
                                       "(scale 1.0) for others, e.g. DiffSynth 2.x, which trains with alpha = rank."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Optional CLIP model for the LoRA's text-encoder layers."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the LoRA applied."),
                io.Clip.Output(display_name="CLIP",
                               tooltip="The CLIP with the LoRA's text-encoder layers applied (None if none given)."),
                io.String.Output(display_name="report",
                                 tooltip="Format detected, tensors applied out of tensors found, and examples of "
                                         "any tensor that could not be placed."),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model, strength_clip, alpha, clip=None) -> io.NodeOutput:
        tensors, _metadata = read_lora_file(lora_path(lora_name))
        parsed = parse_lora(tensors, base=model_base(model))

        shapes = {key[:-len(".weight")]: tuple(value.shape) for key, value in model.model.state_dict().items()
                  if key.startswith(UNET_PREFIX) and key.endswith(".weight")}
        clip_keys: dict[str, str] = {}
        if clip is not None:
            clip_keys = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
            clip_sd = clip.cond_stage_model.state_dict()
            shapes.update({name: tuple(clip_sd[key].shape) for name, key in clip_keys.items() if key in clip_sd})
        parsed = restrict_to_model(parsed, shapes, clip_connected=clip is not None)
        if not parsed.layers:
            examples = "; ".join(f"{k}: {v}" for k, v in list(parsed.unplaced.items())[:3])
            raise ValueError(f"models/loras/{lora_name}: none of its {parsed.total_keys} tensors fits this model "
                             f"(the file looks like {parsed.describe()}, base {parsed.base or 'unknown'}). "
                             f"For example {examples}")

        lora_sd, _ = to_comfyui(parsed, alpha)
        to_load = {layer.target: layer.target + ".weight" if layer.is_unet else clip_keys[layer.target]
                   for layer in parsed.layers}
        patches = comfy.lora.load_lora(lora_sd, to_load, log_missing=False)
        unet_patches = {k: v for k, v in patches.items() if isinstance(k, str) and k.startswith(UNET_PREFIX)}
        clip_patches = {k: v for k, v in patches.items() if k not in unet_patches}

        new_model = model.clone()
        applied = set(new_model.add_patches(unet_patches, strength_model))
        new_clip = None
        if clip is not None:
            new_clip = clip.clone()
            applied |= set(new_clip.add_patches(clip_patches, strength_clip))
        missed = [k for k in patches if k not in applied]
        if missed:  # ComfyUI refused a patch we placed: never let that pass silently
            log.warning("Aesthete LoRA %s: ComfyUI did not apply %d patches, e.g. %s", lora_name, len(missed),
                        missed[:3])

        resolved = {resolve_alpha(layer, alpha, parsed.format) for layer in parsed.layers}
        sources = {source for _, source in resolved}
        assumed = ", ".join(f"{a:g}" for a in sorted({a for a, source in resolved if source != "file"}))
        assumed = f"alpha {assumed}" + (" (automatic)" if alpha <= 0 else "")
        alpha_note = ("alpha from the file" if sources == {"file"} else
                      f"{assumed} (the file stores none)" if "file" not in sources else
                      f"alpha from the file where stored, else {assumed}")
        ranks = sorted({layer.rank for layer in parsed.layers})
        alpha_note = f"rank {','.join(map(str, ranks))}, {alpha_note}"
        report = report_text(lora_name, parsed, alpha_note, len(unet_patches), len(clip_patches))
        if "given" in sources and parsed.format != "diffsynth":
            report += ("\nNote: this file stores no alpha and is not a DiffSynth 1.x file; its trainers (diffusers, "
                       "peft, DiffSynth 2.x) usually train with alpha = rank: set alpha to 0 (automatic) for that.")
        if missed:
            report += f"\nComfyUI did not apply {len(missed)} placed layers, e.g. {missed[:3]}"
        if parsed.unplaced:
            log.warning("Aesthete LoRA %s: %d of %d tensors not placed, e.g. %s", lora_name, len(parsed.unplaced),
                        parsed.total_keys, list(parsed.unplaced.items())[:3])
        log.info("Aesthete LoRA %s: %s", lora_name, report.splitlines()[3])
        return io.NodeOutput(new_model, new_clip, report, ui=ui.PreviewText(report))


NODES = [AestheteLoraLoader]
