"""Aesthetic scoring nodes: load a LAION predictor, score batches and folders, rank, save with the score.

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
import folder_paths
import torch
from comfy.cli_args import args
from comfy_api.latest import io, ui
from comfy_execution.graph import ExecutionBlocker

from ..common.images import tensor_to_pil
from ..common.paths import path_inside
from ..scoring import annotate, folder as folder_scoring, registry
from ..scoring.images import list_images
from ..scoring.predictor import AestheticPredictor, finite_mean, load_predictor, resolve_dtype
from ..scoring.ranking import rank_by_score, summarize_scores

log = logging.getLogger("aesthete.scoring")

AESTHETIC_FOLDER = "aesthetic"
DEFAULT_AESTHETIC_DIR = os.path.join(folder_paths.models_dir, AESTHETIC_FOLDER)

AestheticModel = io.Custom("AESTHETIC_MODEL")


def register() -> None:
    """models/aesthetic, plus whatever extra_model_paths.yaml adds under `aesthetic:` (once, at start-up)."""
    folder_paths.add_model_folder_path(AESTHETIC_FOLDER, DEFAULT_AESTHETIC_DIR)


def predictor_choices() -> list[str]:
    """Known predictors first (downloaded on first use), then every predictor folder found on disk."""
    names = list(registry.KNOWN_PREDICTORS)
    for base in folder_paths.get_folder_paths(AESTHETIC_FOLDER):
        if os.path.isdir(base):
            for entry in sorted(os.listdir(base)):
                if not entry.startswith(".") and entry not in names and registry.is_predictor_folder(Path(base) / entry):
                    names.append(entry)
    return names


def find_predictor_folder(name: str, progress: comfy.utils.ProgressBar | None = None) -> Path:
    for base in folder_paths.get_folder_paths(AESTHETIC_FOLDER):
        candidate = path_inside(base, name, what="predictor")
        if registry.is_predictor_folder(candidate):
            return candidate
    report = (lambda done, total, what: progress.update_absolute(done, max(total, 1))) if progress else None
    return registry.ensure_predictor(name, Path(DEFAULT_AESTHETIC_DIR), report)


class _PatcherModel(torch.nn.Module):
    """Holds the Hugging Face model for ModelPatcher, which sets ``.device`` (a read-only property on HF models)."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model = model
        self.device = device


class LoadedPredictor:
    """The AESTHETIC_MODEL value: the predictor, wrapped in the ModelPatcher through which ComfyUI's model management
    loads it to ``load_device`` before each use and offloads it when memory is needed. It is the only owner of the
    predictor in the server: when ComfyUI drops the loader's output (POST /free, another workflow), the weights go."""

    def __init__(self, predictor: AestheticPredictor, load_device: torch.device):
        self.predictor = predictor
        self.load_device = load_device
        holder = _PatcherModel(predictor.model, predictor.device)
        self.patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device,
                                                        offload_device=predictor.device,
                                                        size=comfy.model_management.module_size(holder))

    def ready(self) -> AestheticPredictor:
        """Let ComfyUI's memory management move the model to its device (freeing others if it must)."""
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.predictor


def node_progress(total: int):
    bar = comfy.utils.ProgressBar(total)
    return lambda done, of: bar.update_absolute(done, of)


def first(value):
    """A widget value of a node with is_input_list: a list of one."""
    return value[0] if isinstance(value, list) else value


def split_images(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """A list of IMAGE batches (any sizes) as single-image [1,H,W,C] tensors, in order."""
    return [b[i:i + 1] for b in batches for i in range(b.shape[0])]


class AesthetePredictorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AesthetePredictorLoader",
            display_name="Aesthetic Predictor Loader",
            category="Aesthete/scoring",
            description="Loads a LAION aesthetic predictor (CLIP vision model plus a score head, 1-10 scale). A "
                        "listed predictor missing from models/aesthetic is downloaded on first use (ModelScope, "
                        "then Hugging Face). ComfyUI keeps the loaded model between runs and frees it with its other "
                        "models.",
            inputs=[
                io.Combo.Input("model", options=predictor_choices(), default=registry.DEFAULT_PREDICTOR,
                               tooltip="A published predictor (downloaded if missing) or a folder under "
                                       "models/aesthetic holding config.json, preprocessor_config.json (or "
                                       "processor_config.json) and weights"),
                io.Combo.Input("device", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="Where to run it; auto follows ComfyUI (the GPU unless started with --cpu)"),
                io.Combo.Input("dtype", options=["auto", "fp32", "fp16", "bf16"], default="auto",
                               tooltip="Precision; auto is fp32 on the CPU (the reference numbers), fp16 on a GPU "
                                       "that ComfyUI runs in fp16 (fp16 moves scores a little: choose fp32 to judge "
                                       "a folder whose mean is near the bar; the README says how much)"),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="Compile the scoring model with torch.compile. The first run compiles "
                                         "(tens of seconds for ViT-L), later runs reuse it; scores equal within "
                                         "float rounding; if compiling fails it scores without it (logged). On "
                                         "the CPU leave it off: the default path measured faster"),
            ],
            outputs=[AestheticModel.Output("predictor", display_name="predictor",
                                           tooltip="The loaded aesthetic predictor")],
        )

    @classmethod
    def execute(cls, model, device, dtype, compile=False) -> io.NodeOutput:
        load_device = predictor_device(device)
        folder = find_predictor_folder(model, comfy.utils.ProgressBar(1))
        offload = comfy.model_management.text_encoder_offload_device() if load_device.type != "cpu" else load_device
        predictor = load_predictor(folder, offload, predictor_dtype(dtype, load_device), compile=bool(compile))
        return io.NodeOutput(LoadedPredictor(predictor, load_device))


def predictor_device(choice: str) -> torch.device:
    """The loader's device choice as ComfyUI names the device: "auto" and "cuda" are ComfyUI's GPU (``cuda:0``, the
    device its memory manager frees for and around; a bare ``cuda`` is another name it does not recognise)."""
    if choice == "cpu":
        return torch.device("cpu")
    gpu = comfy.model_management.get_torch_device()
    if choice == "cuda" and gpu.type != "cuda":
        raise ValueError("device cuda: ComfyUI runs on no CUDA GPU here; choose auto or cpu")
    return gpu


def predictor_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The loader's dtype choice; "auto" asks ComfyUI whether fp16 suits the device (not on the CPU, nor on GPUs
    ComfyUI keeps in fp32), else fp32."""
    if choice != "auto":
        return resolve_dtype(choice, device)
    if device.type != "cpu" and comfy.model_management.should_use_fp16(device, prioritize_performance=False):
        return torch.float16
    return torch.float32


class AestheteScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AestheteScore",
            display_name="Aesthetic Score",
            category="Aesthete/scoring",
            description="Scores every image of a batch (or of a list of batches of any sizes) with a LAION "
                        "aesthetic predictor, 1-10, the same numbers as scoring the saved PNGs one by one. An image "
                        "with NaN pixels scores NaN and is left out of the mean.",
            is_input_list=True,
            is_output_node=True,  # it shows the scores, so it may end a graph
            inputs=[
                AestheticModel.Input("predictor", tooltip="From Aesthetic Predictor Loader"),
                io.Image.Input("images", tooltip="Images to score: a batch [B,H,W,C] or a list of batches"),
                io.Int.Input("batch_size", default=16, min=1, max=256,
                             tooltip="Images per forward pass; lower it if memory runs out"),
            ],
            outputs=[
                io.Float.Output("scores", display_name="scores", is_output_list=True,
                                tooltip="One score per image, in input order"),
                io.Float.Output("mean", display_name="mean", tooltip="Mean of the scored images"),
                io.String.Output("summary", display_name="summary",
                                 tooltip="The scores as text (also shown on the node)"),
            ],
        )

    @classmethod
    def execute(cls, predictor, images, batch_size) -> io.NodeOutput:
        loaded: LoadedPredictor = first(predictor)
        model = loaded.ready()
        total = sum(b.shape[0] for b in images)
        bar = comfy.utils.ProgressBar(total)
        scores: list[float] = []
        for batch in images:
            done = len(scores)
            scores += model.score_tensor(batch, first(batch_size),
                                         progress=lambda n, of, d=done: bar.update_absolute(d + n, total),
                                         interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        mean = finite_mean(scores)
        if math.isnan(mean):
            raise ValueError(f"none of the {total} image(s) could be scored: every one has NaN or infinite pixels")
        text = summarize_scores(scores, model.name)
        return io.NodeOutput(scores, mean, text, ui=ui.PreviewText(text))


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
                               tooltip="Reject images scoring below this (the LAION scale is 1-10; 6 is a common bar)"),
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
            ],
        )

    @classmethod
    def execute(cls, images, scores, top_k, min_score) -> io.NodeOutput:
        singles = split_images(images)
        if len(singles) != len(scores):
            raise ValueError(f"{len(singles)} image(s) but {len(scores)} score(s): connect the scores of the same "
                             f"images, in the same order")
        ranking = rank_by_score(scores, first(top_k), first(min_score))
        text = ranking.summary(scores)
        rejected = [singles[i] for i in ranking.rejected] or [ExecutionBlocker(None)]
        if not ranking.kept:
            log.info("Aesthetic Rank: no image passed (min score %s); kept outputs blocked", first(min_score))
            blocked = [ExecutionBlocker(None)]
            return io.NodeOutput(blocked, blocked, blocked, rejected, 0, ui=ui.PreviewText(text))
        return io.NodeOutput([singles[i] for i in ranking.kept], [scores[i] for i in ranking.kept],
                             list(ranking.kept), rejected, len(ranking.kept), ui=ui.PreviewText(text))


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
                                       "1-10 scale)"),
            ],
            outputs=[
                io.Float.Output("mean", display_name="mean", tooltip="Mean score of the scored images"),
                io.Int.Output("count", display_name="count", tooltip="How many images were scored"),
                io.String.Output("table", display_name="table", tooltip="One 'score<TAB>file' line per scored image"),
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
    def fingerprint_inputs(cls, predictor, folder, recursive, allow_outside_input, batch_size, threshold=6.0):
        """Re-run when the folder's files change, not only when the inputs do."""
        try:
            path = cls.resolve_folder(folder, allow_outside_input)
            files = list_images(path, recursive)
            stamp = [(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files]
        except (OSError, ValueError) as e:
            return str(e)
        return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()

    @classmethod
    def execute(cls, predictor, folder, recursive, allow_outside_input, batch_size, threshold=6.0) -> io.NodeOutput:
        path = cls.resolve_folder(folder, allow_outside_input)
        model = predictor.ready()
        files = list_images(path, recursive)
        report = folder_scoring.score_files(
            model, files, batch_size=batch_size, progress=node_progress(len(files)),
            interrupt=comfy.model_management.throw_exception_if_processing_interrupted, root=path)
        passed = report.count > 0 and report.mean >= threshold
        verdict = f"{'passes' if passed else 'below'} the bar of {threshold:g}"
        text = f"{report.summary()}: {verdict}\n" + report.table() + (
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
                        "(aesthetic_score, aesthetic_model, plus the workflow). In preview mode it only shows them. "
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
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            outputs=[],
        )

    @classmethod
    def execute(cls, images, scores, filename_prefix, mode, score_in_filename, score_in_metadata, draw_score,
                model_name=None) -> io.NodeOutput:
        singles = split_images(images)
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
        for image, score in zip(singles, scores):
            pil = tensor_to_pil(image)
            name = annotate.score_filename(stem, counter, score) if first(score_in_filename) else \
                f"{stem}_{counter:05}_.png"
            info = annotate.png_info(score, model, extra) if first(score_in_metadata) else None
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


NODES = [AesthetePredictorLoader, AestheteScore, AestheteRank, AestheteScoreFolder, AestheteSaveScored]
