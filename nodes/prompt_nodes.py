"""Prompt nodes: the recipe-order composer, the negative presets, and composer presets saved in ComfyUI's user
directory. The work is done in ``prompts/``; these classes only adapt it to ComfyUI."""

from __future__ import annotations

import logging
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..prompts import composer, negative, presets, tokens

log = logging.getLogger("aesthete.prompts")

# the domain folder's name, as Aesthete/scoring, /training and /lora are. Only the Add Node menu shows it: saved
# workflows name nodes by their node_id, so renaming it (from "Aesthete/prompt") breaks none
CATEGORY = "Aesthete/prompts"
# the composition a composer holds (fields, weights, switches, separator), for saving and loading presets
PromptFields = io.Custom("AESTHETE_PROMPT_FIELDS")


def presets_folder() -> Path:
    """Composer presets live in ComfyUI's user directory, where the frontend's /userdata API also sees them."""
    return Path(folder_paths.get_user_directory()) / "default" / "aesthete" / "prompt_presets"


def _separator_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("separator", options=list(composer.SEPARATOR_CHOICES), default=composer.SEPARATOR_AUTO,
                       tooltip="Between tags and fields. auto: the full-width '，' when the prompt has Chinese text, "
                               "', ' otherwise; custom: the text typed in custom_separator"),
        io.String.Input("custom_separator", default=" | ", optional=True,
                        tooltip="Used when separator is custom; may not contain ( ) \\ or :"),
    ]


def _field_inputs() -> list[io.Input]:
    inputs: list[io.Input] = []
    for f in composer.FIELDS:
        inputs += [
            io.String.Input(f.id, display_name=f.label_en, multiline=True, default="", optional=True,
                            # the frontend shows no label on a text box: name the field in both languages
                            placeholder=f"{f.label_en} · {f.label_zh} (e.g. {f.example_en})",
                            tooltip=f"{f.label_en} tags, separated by commas or new lines (e.g. {f.example_en}); "
                                    "empty: the field vanishes"),
            io.Float.Input(f"{f.id}_weight", display_name=f"{f.label_en} weight", default=1.0,
                           min=composer.WEIGHT_MIN, max=composer.WEIGHT_MAX, step=0.05, optional=True,
                           tooltip=f"Weight of the {f.label_en.lower()} field, written as (tags:weight) when not 1"),
            io.Boolean.Input(f"{f.id}_on", display_name=f"{f.label_en} on", default=True, optional=True,
                             tooltip=f"Off: the {f.label_en.lower()} field is left out of the prompt"),
        ]
    return inputs


def _clip_report(clip, prompt: str) -> str:
    counts = tokens.count_tokens(clip.tokenize(prompt, return_word_ids=True))
    report, past = tokens.token_report(counts)
    if past:
        log.warning("Aesthete prompt composer: %s", report.replace("\n", "; "))
    return report


class AesthetePromptComposer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AesthetePromptComposer",
            display_name="Prompt Composer (recipe order)",
            category=CATEGORY,
            description="Joins the fields in the recipe's order: style, character, view angle, shot, pose, hair, "
                        "face, action, body, clothing, scene, time, weather, objects, extra. Empty or switched-off "
                        "fields vanish, repeated tags are dropped (case kept), weights are written as (tags:1.2), "
                        "parentheses you type are escaped. Connect a CLIP to see the token count.",
            inputs=[
                *_field_inputs(),
                *_separator_inputs(),
                io.Boolean.Input("dedupe", default=True, tooltip="Drop a tag already written earlier in the prompt "
                                                                 "(compared ignoring case); the first one is kept"),
                PromptFields.Input("preset", optional=True,
                                   tooltip="Optional composer preset (from Load Prompt Preset): its fields fill the "
                                           "fields left empty here; a field switched off here stays off"),
                io.Clip.Input("clip", optional=True,
                              tooltip="Optional: the CLIP that will encode the prompt; the node then shows the token "
                                      "count and warns past one 77-token chunk (256 tokens for Kolors)"),
            ],
            outputs=[
                io.String.Output("prompt", display_name="prompt",
                                 tooltip="The assembled prompt, for CLIPTextEncode's text"),
                PromptFields.Output("fields", display_name="fields",
                                    tooltip="Everything this composer holds, for Save Prompt Preset"),
                io.String.Output("token_report", display_name="token_report",
                                 tooltip="Token count per text encoder of the connected CLIP, with a warning past one "
                                         "77-token chunk (connect a Preview Any to read it); empty without a CLIP"),
            ],
        )

    @classmethod
    def execute(cls, separator, dedupe, custom_separator=" | ", preset=None, clip=None,
                **field_values) -> io.NodeOutput:
        # 45 field widgets (<field>, <field>_weight, <field>_on): taken as keywords rather than spelled out
        comp = composer.composition_from_values(field_values, separator, custom_separator, dedupe)
        if preset is not None:
            comp = comp.filled_from(preset)
        prompt = composer.compose(comp)
        report = "" if clip is None else _clip_report(clip, prompt)
        return io.NodeOutput(prompt, comp, report, ui=ui.PreviewText(f"{prompt}\n\n{report}" if report else prompt))


class AestheteNegativePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteNegativePrompt",
            display_name="Negative Prompt (recipe presets)",
            category=CATEGORY,
            description="A negative prompt from a preset (the recipe's list in Chinese, the same list in English, "
                        "or empty) followed by your extra tags; repeated tags are dropped.",
            inputs=[
                io.Combo.Input("preset", options=list(negative.NEGATIVE_PRESETS), default="recipe-zh",
                               tooltip="; ".join(f"{pid}: {en}" for pid, (en, _) in negative.PRESET_LABELS.items())),
                io.String.Input("extra", multiline=True, default="", optional=True,
                                tooltip="More negative tags, appended after the preset's"),
                *_separator_inputs(),
            ],
            outputs=[io.String.Output("negative", display_name="negative",
                                     tooltip="The negative prompt, for the negative CLIPTextEncode")],
        )

    @classmethod
    def execute(cls, preset, separator, extra="", custom_separator=" | ") -> io.NodeOutput:
        return io.NodeOutput(negative.negative_prompt(preset, extra, separator, custom_separator))


class AesthetePromptPresetSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AesthetePromptPresetSave",
            display_name="Save Prompt Preset",
            category=CATEGORY,
            description="Saves a composer's fields, weights and switches under a name, as a JSON file in ComfyUI's "
                        "user folder (user/default/aesthete/prompt_presets).",
            inputs=[
                PromptFields.Input("fields", tooltip="The fields output of a Prompt Composer"),
                io.String.Input("name", default="my-prompt",
                                tooltip="Preset name (the file name without .json); / \\ : * ? \" < > | are refused"),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace a preset of the same name; off: an existing name is an error"),
            ],
            outputs=[io.String.Output("preset_name", display_name="preset_name",
                                     tooltip="The saved preset's name, as Load Prompt Preset lists it")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fields, name, overwrite) -> io.NodeOutput:
        path = presets.save_preset(presets_folder(), name, fields, overwrite=overwrite)
        return io.NodeOutput(path.stem, ui=ui.PreviewText(f"saved {path.stem!r} to {path}"))


class AesthetePromptPresetLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = presets.list_presets(presets_folder())
        return io.Schema(
            node_id="AesthetePromptPresetLoad",
            display_name="Load Prompt Preset",
            category=CATEGORY,
            description="Loads a saved composer preset: its prompt, and its fields to feed a Prompt Composer's "
                        "preset input (where you can change some fields and keep the rest).",
            inputs=[io.Combo.Input("name", options=names, default=names[0] if names else None,
                                   tooltip="A preset saved with Save Prompt Preset, or one shipped with the pack "
                                           "(refresh the page to list new ones)")],
            outputs=[
                io.String.Output("prompt", display_name="prompt",
                                 tooltip="The preset's prompt, assembled as the composer would"),
                PromptFields.Output("fields", display_name="fields",
                                    tooltip="The preset's fields, for a Prompt Composer's preset input"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, name) -> str:
        # run again when the file changed since the last run (the name alone would serve a stale cache)
        try:
            path = presets.find_preset(presets_folder(), name)
        except (FileNotFoundError, ValueError):
            return ""
        stat = path.stat()
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, name) -> io.NodeOutput:
        comp = presets.load_preset(presets_folder(), name)
        return io.NodeOutput(composer.compose(comp), comp)


NODES = [AesthetePromptComposer, AestheteNegativePrompt, AesthetePromptPresetSave, AesthetePromptPresetLoad]
