"""Aesthetic scoring nodes: score batches and folders, rank, save with the score.

The work is done by ``aesthete.scoring``; these classes adapt it to ComfyUI (folders, progress bar, interrupts,
memory management, UI output).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io, ui
from comfy_execution.graph import ExecutionBlocker

from ..common.images import tensor_to_pil
from ..common.paths import path_inside
from ..scoring import annotate, folder as folder_scoring, judge
from ..common.images import list_images
from ..scoring.predictor import finite_mean
from ..scoring.ranking import rank_by_score, summarize_scores

from ..scoring.scorers.errors import PromptRequired
from .scorer_nodes import AestheticModel
log = logging.getLogger("aesthete.scoring")
def scoring_prompts(prompt, count: int, scorer) -> list[str] | None:
    """The prompts a scorer gets for ``count`` images from a node's prompt input (one prompt for all, or a list of
    one per image); None for a scorer that reads none. A prompt-aware scorer without one is an error."""
    prompts = [p for p in (prompt if isinstance(prompt, list) else [prompt]) if p is not None]
    if not scorer.prompt_aware:
        return None
    if not prompts or all(not p.strip() for p in prompts):
        raise PromptRequired(f"{scorer.name} scores how well an image matches its prompt: connect the prompt the "
                             f"images were made from to the prompt input (e.g. the Prompt Composer's output)")
    if len(prompts) == 1:
        return prompts * count
    if len(prompts) != count:
        raise ValueError(f"{len(prompts)} prompts for {count} images: give one prompt, or one per image")
    return prompts


def split_images(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """A list of IMAGE batches (any sizes) as single-image [1,H,W,C] tensors, in order."""
    return [b[i:i + 1] for b in batches for i in range(b.shape[0])]


def node_progress(total: int):
    bar = comfy.utils.ProgressBar(total)
    return lambda done, of: bar.update_absolute(done, of)


def first(value):
    """A widget value of a node with is_input_list: a list of one."""
    return value[0] if isinstance(value, list) else value


PROMPT_TOOLTIP = ("The prompt the images were made from, for a prompt-aware scorer or judge (connect the Prompt "
                  "Composer's output): one for every image, or a list of one per image. Ignored by scorers that "
                  "read no prompt")


def prompt_input() -> io.String.Input:
    return io.String.Input("prompt", default="", multiline=True, optional=True, tooltip=PROMPT_TOOLTIP)


class AestheteScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteScore",
            display_name="Aesthetic Score",
            category="Aesthete/scoring",
            description="Scores every image of a batch (or of a list of batches of any sizes) with a scorer or a "
                        "judge: a LAION aesthetic predictor (1-10, the same numbers as scoring the saved PNGs one by "
                        "one), a catalog scorer, or several combined by Aesthete Judge (then the scores are the "
                        "combination and the table has every scorer's column). An image with NaN pixels scores NaN "
                        "and is left out of the mean.",
            is_input_list=True,
            is_output_node=True,  # it shows the scores, so it may end a graph
            inputs=[
                AestheticModel.Input("predictor", tooltip="From Aesthetic Predictor Loader, Aesthete Scorer Loader "
                                                          "or Aesthete Judge"),
                io.Image.Input("images", tooltip="Images to score: a batch [B,H,W,C] or a list of batches"),
                io.Int.Input("batch_size", default=16, min=1, max=256,
                             tooltip="Images per forward pass; lower it if memory runs out"),
                prompt_input(),
            ],
            outputs=[
                io.Float.Output("scores", display_name="scores", is_output_list=True,
                                tooltip="One score per image, in input order (a judge's combined score)"),
                io.Float.Output("mean", display_name="mean", tooltip="Mean of the scored images"),
                io.String.Output("summary", display_name="summary",
                                 tooltip="The scores as text (also shown on the node)"),
                io.String.Output("table", display_name="table",
                                 tooltip="One row per image: the combined score and every scorer's own score "
                                         "(tab-separated, with a header)"),
            ],
        )

    @classmethod
    def execute(cls, predictor, images, batch_size, prompt=None) -> io.NodeOutput:
        loaded = first(predictor)
        model = judge.as_judge(loaded.ready())
        total = sum(b.shape[0] for b in images)
        prompts = scoring_prompts(prompt if prompt is not None else [], total, loaded)
        steps = total * len(model.entries)  # the judge reports every scorer's pass
        bar = comfy.utils.ProgressBar(steps)
        tables: list[judge.JudgeScores] = []
        done = 0
        for batch in images:
            count = batch.shape[0]
            tables.append(model.score_table(
                batch, None if prompts is None else prompts[done:done + count], batch_size=first(batch_size),
                progress=lambda n, of, d=done * len(model.entries): bar.update_absolute(d + n, steps),
                interrupt=comfy.model_management.throw_exception_if_processing_interrupted))
            done += count
        scores = [v for t in tables for v in t.combined]
        table = judge.JudgeScores({k: [v for t in tables for v in t.columns[k]] for k in model.ids}, scores)
        mean = finite_mean(scores)
        if math.isnan(mean):
            raise ValueError(f"none of the {total} image(s) could be scored: every one has NaN or infinite pixels")
        text = summarize_scores(scores, model.name)
        if len(model.ids) > 1:
            means = ", ".join(f"{k} {v:.3f}" for k, v in table.means().items())
            text += f"\nmeans: {means}\n{table.table()}"
        return io.NodeOutput(scores, mean, text, table.table(), ui=ui.PreviewText(text))


class AestheteRank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteRank",
            display_name="Aesthetic Rank",
            category="Aesthete/scoring",
            description="Sorts images by their aesthetic scores, best first, keeping the top k at or above a minimum "
                        "score. Outputs are lists (one image per item, sizes may differ). When no image passes, the "
                        "kept outputs are blocked: nodes fed by them are skipped without error, kept_count is 0 "
                        "and every image goes to rejected (likewise rejected is blocked when every image is kept).",
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The scored images: a batch or a list of batches, in scoring order"),
                io.Float.Input("scores", force_input=True, tooltip="Their scores, from Aesthetic Score"),
                io.Int.Input("top_k", default=0, min=0, max=4096, tooltip="Keep at most this many; 0 keeps all"),
                io.Float.Input("min_score", default=0.0, min=-1000.0, max=1000.0, step=0.01,
                               tooltip="Reject images scoring below this (the LAION scale is 1-10; 6 is a common bar; "
                                       "a judge's combined score is on its first scorer's scale)"),
                io.String.Input("table", default="", force_input=True, optional=True,
                                tooltip="Optional: Aesthetic Score's table (every scorer's column), to pass on the "
                                        "kept images' rows"),
            ],
            outputs=[
                io.Image.Output("kept_images", display_name="kept images", is_output_list=True,
                                tooltip="Kept images, best first"),
                io.Float.Output("kept_scores", display_name="kept scores", is_output_list=True,
                                tooltip="Scores of the kept images, best first"),
                io.Int.Output("kept_indices", display_name="kept indices", is_output_list=True,
                              tooltip="Input positions of the kept images"),
                io.Image.Output("rejected", display_name="rejected", is_output_list=True,
                                tooltip="Images that did not pass, best first, unscorable last"),
                io.Int.Output("kept_count", display_name="kept count",
                              tooltip="How many images were kept (0 when none passed)"),
                io.String.Output("kept_table", display_name="kept table",
                                 tooltip="The table's rows of the kept images, best first (empty without a table), "
                                         "for Save Image with Score"),
            ],
        )

    @classmethod
    def execute(cls, images, scores, top_k, min_score, table=None) -> io.NodeOutput:
        singles = split_images(images)
        if len(singles) != len(scores):
            raise ValueError(f"{len(singles)} image(s) but {len(scores)} score(s): connect the scores of the same "
                             f"images, in the same order")
        table = first(table) or ""
        if table and len(judge.table_rows(table)) != len(scores):
            raise ValueError(f"the table has {len(judge.table_rows(table))} rows for {len(scores)} score(s): connect "
                             f"the table of the same Aesthetic Score")
        ranking = rank_by_score(scores, first(top_k), first(min_score))
        text = ranking.summary(scores)
        rejected = [singles[i] for i in ranking.rejected] or [ExecutionBlocker(None)]
        if not ranking.kept:
            log.info("Aesthetic Rank: no image passed (min score %s); kept outputs blocked", first(min_score))
            blocked = [ExecutionBlocker(None)]
            return io.NodeOutput(blocked, blocked, blocked, rejected, 0, "", ui=ui.PreviewText(text))
        kept_table = judge.select_rows(table, ranking.kept) if table else ""
        return io.NodeOutput([singles[i] for i in ranking.kept], [scores[i] for i in ranking.kept],
                             list(ranking.kept), rejected, len(ranking.kept), kept_table, ui=ui.PreviewText(text))


class AestheteScoreFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteScoreFolder",
            display_name="Aesthetic Score Folder",
            category="Aesthete/scoring",
            description="Scores every image in a folder of ComfyUI's input directory and gives the mean, as a "
                        "dataset check before training (6 is a common bar). Broken, truncated, empty, non-image and "
                        "oversized files are skipped with the reason.",
            is_output_node=True,  # a dataset check on its own
            inputs=[
                AestheticModel.Input("predictor", tooltip="From Aesthetic Predictor Loader"),
                io.String.Input("folder", default="lora_dataset",
                                tooltip="Folder relative to ComfyUI's input directory"),
                io.Boolean.Input("recursive", default=False, tooltip="Also score images in sub-folders"),
                io.Boolean.Input("allow_outside_input", default=False,
                                 tooltip="Allow an absolute path or one leading outside the input directory"),
                io.Int.Input("batch_size", default=16, min=1, max=256, tooltip="Images per forward pass"),
                io.Float.Input("threshold", default=6.0, min=-1000.0, max=1000.0, step=0.1, optional=True,
                               tooltip="The bar the folder's mean must reach (6 is the common one on the LAION "
                                       "1-10 scale; a judge's combined score is on its first scorer's scale)"),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="For a prompt-aware scorer or judge: one prompt for every image. Left empty, "
                                        "each image's caption is its prompt (its .txt or .json beside it, or its "
                                        "metadata.csv row); images without one are skipped with the reason"),
            ],
            outputs=[
                io.Float.Output("mean", display_name="mean", tooltip="Mean score of the scored images"),
                io.Int.Output("count", display_name="count", tooltip="How many images were scored"),
                io.String.Output("table", display_name="table",
                                 tooltip="One 'score<TAB>file' line per scored image; with a judge of several "
                                         "scorers a header and the combined score, each scorer's score, the file"),
                io.String.Output("skipped", display_name="skipped", tooltip="One 'file: reason' line per skipped file"),
                io.Boolean.Output("passed", display_name="passed",
                                  tooltip="True when the mean reaches the threshold"),
            ],
        )

    @classmethod
    def resolve_folder(cls, folder: str, allow_outside_input: bool) -> Path:
        return path_inside(folder_paths.get_input_directory(), folder, what="folder",
                           where="ComfyUI's input directory", hint="turn on allow_outside_input",
                           allow_outside=allow_outside_input)

    @classmethod
    def fingerprint_inputs(cls, predictor, folder, recursive, allow_outside_input, batch_size, threshold=6.0,
                           prompt=""):
        """Re-run when the folder's files change, not only when the inputs do."""
        try:
            path = cls.resolve_folder(folder, allow_outside_input)
            files = list_images(path, recursive)
            # captions are the prompts of a prompt-aware scorer: their changes count too
            stamp = [(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files]
            stamp += [(str(c), c.stat().st_mtime_ns) for c in sorted(path.rglob("*") if recursive else path.iterdir())
                      if c.suffix.lower() in (".txt", ".json", ".csv") and c.is_file()]
        except (OSError, ValueError) as e:
            return str(e)
        return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()

    @classmethod
    def execute(cls, predictor, folder, recursive, allow_outside_input, batch_size, threshold=6.0,
                prompt="") -> io.NodeOutput:
        path = cls.resolve_folder(folder, allow_outside_input)
        model = predictor.ready()
        files = list_images(path, recursive)
        report = folder_scoring.score_files(
            model, files, batch_size=batch_size, progress=node_progress(len(files)),
            interrupt=comfy.model_management.throw_exception_if_processing_interrupted, root=path, prompt=prompt)
        passed = report.count > 0 and report.mean >= threshold
        verdict = f"{'passes' if passed else 'below'} the bar of {threshold:g}"
        means = ", ".join(f"{k} {v:.3f}" for k, v in report.column_means().items())
        text = f"{report.summary()}: {verdict}\n" + (f"scorer means: {means}\n" if report.per_scorer else "") + \
            report.table() + (
            "\nskipped:\n" + report.skipped_text() if report.skipped else "")
        return io.NodeOutput(report.mean, report.count, report.table(), report.skipped_text(), passed,
                             ui=ui.PreviewText(text))


class AestheteSaveScored(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteSaveScored",
            display_name="Save Image with Score",
            category="Aesthete/scoring",
            description="Saves images with their aesthetic score kept: in the file name and in PNG metadata "
                        "(aesthetic_score, aesthetic_model, a judge's every scorer as aesthetic_scores when its table "
                        "is connected, plus the workflow). In preview mode it only shows them. "
                        "Drawing the score is done on the previews, never on the saved files.",
            is_input_list=True,
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="Images (a batch or a list, e.g. from Aesthetic Rank)"),
                io.Float.Input("scores", force_input=True, tooltip="One score per image, same order"),
                io.String.Input("filename_prefix", default="Aesthete/scored",
                                tooltip="File name prefix inside the output folder (sub-folders allowed)"),
                io.Combo.Input("mode", options=["save", "preview"], default="save",
                               tooltip="save: write to the output folder; preview: temporary files only"),
                io.Boolean.Input("score_in_filename", default=True, tooltip="Put the score in the file name"),
                io.Boolean.Input("score_in_metadata", default=True, tooltip="Store the score in PNG text metadata"),
                io.Boolean.Input("draw_score", default=False, tooltip="Show previews with the score drawn on them"),
                io.String.Input("model_name", default="", optional=True,
                                tooltip="Predictor name stored beside the score (optional)"),
                io.String.Input("table", default="", force_input=True, optional=True,
                                tooltip="Optional: the table of these images (Aesthetic Rank's kept table, or "
                                        "Aesthetic Score's): every scorer's score is stored in the PNG metadata "
                                        "(aesthetic_scores)"),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            outputs=[],
        )

    @classmethod
    def execute(cls, images, scores, filename_prefix, mode, score_in_filename, score_in_metadata, draw_score,
                model_name=None, table=None) -> io.NodeOutput:
        singles = split_images(images)
        rows = judge.table_rows(first(table)) if first(table) else None
        if rows is not None and len(rows) != len(singles):
            raise ValueError(f"the table has {len(rows)} rows for {len(singles)} image(s): connect the table of the "
                             f"same images (Aesthetic Rank's kept table after a Rank)")
        if len(singles) != len(scores):
            raise ValueError(f"{len(singles)} image(s) but {len(scores)} score(s): connect the scores of the same "
                             f"images, in the same order")
        save = first(mode) == "save"
        root = folder_paths.get_output_directory() if save else folder_paths.get_temp_directory()
        prefix = first(filename_prefix) if save else "Aesthete_temp_" + "".join(random.choices("abcdefghijk", k=5))
        h, w = singles[0].shape[1], singles[0].shape[2]
        # refuses a prefix that leaves the output folder
        out_dir, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, root, w, h)
        extra = {}
        if not args.disable_metadata and cls.hidden is not None:
            if cls.hidden.prompt is not None:
                extra["prompt"] = json.dumps(cls.hidden.prompt)
            for key, value in (cls.hidden.extra_pnginfo or {}).items():
                extra[key] = json.dumps(value)
        model = first(model_name) or ""
        shown, saved = [], []
        for n, (image, score) in enumerate(zip(singles, scores)):
            pil = tensor_to_pil(image)
            name = annotate.score_filename(stem, counter, score) if first(score_in_filename) else \
                f"{stem}_{counter:05}_.png"
            each = {k: v for k, v in rows[n].items() if k != "combined"} if rows is not None else None
            info = annotate.png_info(score, model, extra, each) if first(score_in_metadata) else None
            annotate.save_png(pil, Path(out_dir) / name, info, compress_level=4 if save else 1)
            saved.append(ui.SavedResult(name, subfolder, io.FolderType.output if save else io.FolderType.temp))
            if first(draw_score):
                temp_dir = folder_paths.get_temp_directory()
                os.makedirs(temp_dir, exist_ok=True)
                preview = f"Aesthete_score_{random.getrandbits(40):010x}_{counter:05}.png"
                annotate.save_png(annotate.draw_score(pil, score), Path(temp_dir) / preview, compress_level=1)
                shown.append(ui.SavedResult(preview, "", io.FolderType.temp))
            counter += 1
        return io.NodeOutput(ui=ui.SavedImages(shown or saved))


NODES = [AestheteScore, AestheteRank, AestheteScoreFolder, AestheteSaveScored]
