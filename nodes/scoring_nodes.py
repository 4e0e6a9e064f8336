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
from ..scoring import annotate, folder as folder_scoring, judge, registry
from ..common.images import list_images
from ..scoring.predictor import finite_mean, load_predictor, resolve_dtype
from ..scoring.ranking import rank_by_score, summarize_scores
from ..scoring.scorers.errors import PromptRequired

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
    """Holds a scorer's modules for ModelPatcher, which sets ``.device`` (a read-only property on HF models)."""

    def __init__(self, modules: list[torch.nn.Module], device: torch.device):
        super().__init__()
        if len(modules) == 1:
            self.model = modules[0]  # the LAION predictor's layout, as before
        else:
            self.parts = torch.nn.ModuleList(modules)
        self.device = device


class LoadedScorer:
    """The AESTHETIC_MODEL value for one scorer (a LAION predictor or a catalog scorer): the scorer, wrapped in the
    ModelPatcher through which ComfyUI's model management loads it to ``load_device`` before each use and offloads
    it when memory is needed. It is the only owner of the scorer in the server: when ComfyUI drops the loader's
    output (POST /free, another workflow), the weights go."""

    def __init__(self, scorer, load_device: torch.device):
        self.scorer = scorer
        self.load_device = load_device
        holder = _PatcherModel(scorer.modules(), scorer.device)
        self.patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device,
                                                        offload_device=scorer.device,
                                                        size=comfy.model_management.module_size(holder))

    @property
    def predictor(self):
        return self.scorer

    @property
    def name(self) -> str:
        return judge.scorer_id(self.scorer)

    @property
    def prompt_aware(self) -> bool:
        return judge.is_prompt_aware(self.scorer)

    @property
    def patchers(self) -> list:
        return [self.patcher]

    def ready(self):
        """Let ComfyUI's memory management move the model to its device (freeing others if it must)."""
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.scorer


LoadedPredictor = LoadedScorer  # the name the LAION loader's value had


class LoadedJudge:
    """The AESTHETIC_MODEL value of the Judge node: loaded scorers with weights. ``ready()`` loads every scorer's
    ModelPatcher together and gives a ``scoring.judge.Judge``; each scorer stays owned by its loader's output."""

    def __init__(self, entries: list[tuple[LoadedScorer, float]]):
        devices = {str(s.load_device) for s, _ in entries}
        if len(devices) > 1:
            where = ", ".join(f"{s.name} on {s.load_device}" for s, _ in entries)
            raise judge.JudgeError(f"the judge's scorers load on different devices ({where}); choose the same device "
                                   f"on their loaders")
        self.entries = entries
        self.load_device = entries[0][0].load_device
        self.judge = judge.Judge([(s.scorer, w) for s, w in entries])  # checks weights and duplicates now

    @property
    def name(self) -> str:
        return self.judge.name

    @property
    def prompt_aware(self) -> bool:
        return self.judge.prompt_aware

    @property
    def patchers(self) -> list:
        return [p for s, _ in self.entries for p in s.patchers]

    def ready(self) -> judge.Judge:
        comfy.model_management.load_models_gpu(self.patchers, force_full_load=True)
        return self.judge


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


def catalog():
    """judge-models' scorer catalog (scoring/scorers), or None when this install has no such package."""
    try:
        from ..scoring import scorers
    except ImportError:
        return None
    return getattr(scorers, "CATALOG", None)


def catalog_lines() -> str:
    entries = (catalog() or {}).values()
    return "\n".join(f"{i.id}: {i.measures}; {'reads the prompt' if i.prompt_aware else 'no prompt'}; "
                     f"{i.size_mb} MB; licence {i.licence}" for i in entries)


class AestheteScorerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        ids = list(catalog() or {})
        return io.Schema(
            node_id="AestheteScorerLoader",
            display_name="Aesthete Scorer Loader",
            category="Aesthete/scoring",
            description="Loads a scorer of the catalog: preference models trained on people's choices (most read "
                        "the prompt), prompt alignment (CLIPScore) and aesthetic predictors. Files already in "
                        "models/QualityMetric (DiffSynth's layout) or the publisher's layout are used; missing ones "
                        "are downloaded on first use (ModelScope, then Hugging Face), with progress on the node. "
                        "ComfyUI keeps the model between runs and frees it with its other models.\n" + catalog_lines(),
            inputs=[
                io.Combo.Input("scorer", options=ids, default=ids[0] if ids else None,
                               tooltip="Which scorer (what it measures, whether it reads the prompt, size, "
                                       "licence):\n" + catalog_lines()),
                io.Combo.Input("device", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="Where to run it; auto follows ComfyUI (the GPU unless started with --cpu). "
                                       "Scorers combined in one judge must run on the same device"),
                io.Combo.Input("dtype", options=["auto", "fp32", "fp16", "bf16"], default="auto",
                               tooltip="Precision; auto is fp32 on the CPU, fp16 on a GPU that ComfyUI runs in fp16"),
            ],
            outputs=[AestheticModel.Output("loaded_scorer", display_name="scorer",
                                           tooltip="The loaded scorer, for every node that takes a predictor")],
        )

    @classmethod
    def execute(cls, scorer, device, dtype) -> io.NodeOutput:
        from ..scoring.scorers import load_scorer

        load_device = predictor_device(device)
        offload = comfy.model_management.text_encoder_offload_device() if load_device.type != "cpu" else load_device
        bar = comfy.utils.ProgressBar(1)
        # ComfyUI runs nodes in inference mode: weights made there would be inference tensors, which the fast
        # path's packed-weight cache (it reads a weight's version counter) and ModelPatcher's moves cannot use
        with torch.inference_mode(False):
            loaded = load_scorer(scorer, Path(folder_paths.models_dir), device=offload,
                                 dtype=predictor_dtype(dtype, load_device),
                                 progress=lambda done, total, *what: bar.update_absolute(done, max(total, 1)))
        return io.NodeOutput(LoadedScorer(loaded, load_device))


JUDGE_SLOTS = 4


class AestheteJudge(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = []
        for n in range(1, JUDGE_SLOTS + 1):
            inputs.append(AestheticModel.Input(f"scorer_{n}", optional=n > 1,
                                               tooltip="A scorer (Aesthete Scorer Loader or Aesthetic Predictor "
                                                       "Loader)" + ("; the combined score is on this scorer's scale"
                                                                    if n == 1 else "")))
            inputs.append(io.Float.Input(f"weight_{n}", default=1.0, min=0.0, max=100.0, step=0.05, optional=n > 1,
                                         tooltip=f"How much scorer {n} counts in the combined score"))
        return io.Schema(
            node_id="AestheteJudge",
            display_name="Aesthete Judge",
            category="Aesthete/scoring",
            description="Combines scorers with weights into one judge, usable wherever a predictor is: every "
                        "scorer's score is placed on its fixed scale (its catalog range, e.g. 1-10 for the LAION "
                        "heads) and the weighted mean is put back on the first scorer's scale, so an image's "
                        "combined score depends on that image only (epochs, folders and runs compare; one scorer "
                        "alone gives its own score). Tables show every scorer's column. For validation, combine an "
                        "aesthetic or preference score with a prompt-aware one: alone, an aesthetic score rewards "
                        "a LoRA that draws one pleasing style whatever the prompt.",
            inputs=inputs,
            outputs=[AestheticModel.Output("judge", display_name="judge",
                                           tooltip="The combined judge, for every node that takes a predictor")],
        )

    @classmethod
    def execute(cls, **kwargs) -> io.NodeOutput:
        entries = []
        for n in range(1, JUDGE_SLOTS + 1):
            scorer = kwargs.get(f"scorer_{n}")
            if scorer is None:
                continue
            if not isinstance(scorer, LoadedScorer):
                raise judge.JudgeError(f"scorer_{n}: a judge combines scorers, not judges; connect the scorers' "
                                       f"loaders directly")
            entries.append((scorer, float(kwargs.get(f"weight_{n}", 1.0))))
        return io.NodeOutput(LoadedJudge(entries))


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


NODES = [AesthetePredictorLoader, AestheteJudge, AestheteScore, AestheteRank, AestheteScoreFolder, AestheteSaveScored]
if catalog():  # the catalog's loader, where this install has scoring/scorers
    NODES.insert(1, AestheteScorerLoader)
