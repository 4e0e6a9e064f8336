"""Judge LoRA Files: every file of a set (a training run's epochs, say) applied in turn to the same base model, the
same prompts and seeds generated and judged on the path Train LoRA's validation takes (nodes/generate.py), and the
best file handed on. The choosing, ordering and drawing is ``aesthete.lora.sweep``'s."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..common.images import pil_to_tensor, tensor_to_pil
from ..lora.alpha import DEFAULT_TRAINING_ALPHA
from ..lora.sweep import SweepResult, SweepRow, parse_strengths, select_files
from ..training.validation import ValidationSpec
from .generate import encode_prompts, generate, image_prompts, judge
from .lora_nodes import apply_lora_file
from .training_nodes import Validation

log = logging.getLogger("aesthete.lora")


class SweepProgress:
    """The node's bar: one tick per row, the grid so far as its preview and the row's line as its text."""

    def __init__(self, node_id: str | None, total: int):
        self.node_id, self.total = node_id, total
        self.bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def row_done(self, done: int, result: SweepResult, line: str) -> None:
        self.bar.update_absolute(done, self.total, ("PNG", result.grid(cell=128), 768))
        self.say(line)

    def say(self, text: str) -> None:
        from server import PromptServer  # here: the server module imports only inside a running ComfyUI

        if getattr(PromptServer, "instance", None) is not None and self.node_id is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)


class AestheteLoraSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteLoraSweep",
            display_name="Judge LoRA Files",
            category="Aesthete/lora",
            description="Judges a set of LoRA files side by side, e.g. every epoch a training run saved "
                        "(DiffSynth-Studio's checkpoints/ folder, kohya's name-000004 files, Train LoRA's epochs): "
                        "each file applied to the same model in turn (no reload), the validation settings' prompts "
                        "and seed generated with ComfyUI's own sampling (the same images as Load LoRA + KSampler "
                        "would give) and scored by their predictor. Outputs the model with the best file applied, "
                        "its name, a grid, a score graph in epoch order and a table.",
            inputs=[
                io.Model.Input("model", tooltip="The base model every file is applied to (SD1.5, SDXL or Kolors)."),
                io.Clip.Input("clip", tooltip="Its CLIP: encodes the prompts once (again only for a file with "
                                              "text-encoder layers)."),
                io.Vae.Input("vae", tooltip="Decodes the generated images."),
                io.String.Input("lora_set", default="",
                                tooltip="Which files: a subfolder of models/loras (every LoRA file under it, e.g. "
                                        "my_run/checkpoints) or a name pattern with * (e.g. my_lora-*.safetensors). "
                                        "Files are taken in epoch/step order as their names say (epoch=4-step=500, "
                                        "-000004, _epoch0004, _00004_); names without a number come last, "
                                        "alphabetically."),
                Validation.Input("validation", tooltip="From Validation Settings: prompts, negative prompt, seed, "
                                                       "sampler settings, size, and the predictor that judges."),
                io.String.Input("strengths", default="1.0",
                                tooltip="Strengths to try for each file, e.g. 0.6, 0.8, 1.0 (a row per file and "
                                        "strength)."),
                io.Boolean.Input("include_base", default=False,
                                 tooltip="Also judge the model without any LoRA, as the first row."),
                io.Float.Input("alpha", default=DEFAULT_TRAINING_ALPHA, min=0.0, max=1024.0, step=0.5,
                               tooltip="As in Load LoRA (any format): the training alpha for files that store none "
                                       "(DiffSynth 1.x's recipe: 4; 0 = automatic)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the best file at its best strength "
                                                              "(the base model if the base row won)."),
                io.Clip.Output(display_name="CLIP", tooltip="The CLIP with the best file's text-encoder layers."),
                io.String.Output(display_name="best_lora", tooltip="The best file's name as LoRA loaders list it "
                                                                   "(empty when the base model won)."),
                io.Image.Output(display_name="grid", tooltip="A row per file and strength, scores drawn on; the "
                                                             "best row's heading in red."),
                io.Image.Output(display_name="graph", tooltip="Mean score per file in epoch order: a panel per "
                                                              "scorer on its own scale (the combination first), a "
                                                              "line per strength; the best point circled."),
                io.String.Output(display_name="report", tooltip="Table: rank, file, epoch/step, strength, mean and "
                                                                "spread per scorer, and why a file failed."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae, lora_set, validation: ValidationSpec, strengths, include_base,
                alpha) -> io.NodeOutput:
        chosen = select_files(folder_paths.get_filename_list("loras"), lora_set)
        rows = ([SweepRow(None, 1.0)] if include_base else []) + \
            [SweepRow(f, s) for f in chosen.files for s in parse_strengths(strengths)]
        result = SweepResult(rows, chosen.order_note)
        log.info("Aesthete sweep: %d file(s) %s, %d row(s)", len(chosen.files), chosen.order_note, len(rows))
        progress = SweepProgress(cls.hidden.unique_id, len(rows))
        base_prompts = encode_prompts(clip, validation)
        applied: dict[int, tuple] = {}  # the best row so far -> (model, clip) with its file applied
        try:
            for i, row in enumerate(rows):
                comfy.model_management.throw_exception_if_processing_interrupted()
                judge_row(row, model, clip, vae, validation, alpha, base_prompts, applied, i)
                best_so_far = rows.index(result.best()) if result.best() is not None else None
                applied = {k: v for k, v in applied.items() if k == best_so_far}  # the others' patches go
                progress.row_done(i + 1, result, f"{i + 1}/{len(rows)} {row.label}: "
                                  + (f"failed: {row.error}" if row.error else f"mean {row.mean:.3f}"))
        except comfy.model_management.InterruptProcessingException:
            done = [r for r in rows if r.images or r.error]
            progress.say(f"cancelled after {len(done)} of {len(rows)} rows:\n{result.table()}")
            log.warning("Aesthete sweep: cancelled after %d of %d rows; judged so far:\n%s", len(done), len(rows),
                        result.table())
            raise
        if all(r.error for r in rows):
            raise ValueError(f"no file of {lora_set!r} could be applied to this model:\n{result.table()}")
        best = result.best()
        best_model, best_clip = applied.get(rows.index(best), (model, clip))
        report = f"{result.summary()} ({len(chosen.files)} files {chosen.order_note})\n{result.table()}"
        log.info("Aesthete sweep: %s", result.summary())
        grid, graph = pil_to_tensor(result.grid()), pil_to_tensor(result.graph())
        rows_ui = [{"file": r.file.name if r.file else None, "epoch": r.file.epoch if r.file else None,
                    "step": r.file.step if r.file else None, "strength": r.strength, "scores": r.scores,
                    "columns": r.columns, "error": r.error} for r in rows]
        return io.NodeOutput(best_model, best_clip, best.file.name if best.file else "", grid, graph, report,
                             ui={**ui.PreviewImage(grid, cls=cls).as_dict(), "text": [report], "sweep": rows_ui})


def judge_row(row: SweepRow, model, clip, vae, spec: ValidationSpec, alpha: float, base_prompts, applied: dict,
              index: int) -> None:
    """Apply the row's file (a file that cannot be applied becomes the row's reason, the others go on), generate and
    judge. The prompts are encoded again only when the file changes the text encoder."""
    prompts, row_model = base_prompts, model
    if row.file is not None:
        try:
            lora = apply_lora_file(model, clip, row.file.name, row.strength, row.strength, alpha)
        except Exception as e:  # noqa: BLE001 - a file that fails to load is a row with its reason
            row.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            log.warning("Aesthete sweep: %s could not be applied: %s", row.file.name, e)
            return
        row_model = lora.model
        applied[index] = (lora.model, lora.clip)
        if lora.clip_layers:
            prompts = encode_prompts(lora.clip, spec)
    images = generate(row_model, vae, prompts, spec)
    judgement = judge(spec.predictor, images, image_prompts(spec))
    row.images = [tensor_to_pil(im) for im in images]
    if judgement is not None:
        row.scores, row.columns = judgement.scores, judgement.columns


NODES = [AestheteLoraSweep]
