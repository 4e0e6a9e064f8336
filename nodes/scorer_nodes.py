"""Scorer nodes: load a LAION predictor or a catalog scorer (PickScore, HPS, ImageReward, ...), combine scorers into
a judge. Their output (AESTHETIC_MODEL) is a ``scoring_adapter`` value that ComfyUI's model management loads and
offloads; the scorers are ``aesthete.scoring``'s.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..common.paths import path_inside
from ..scoring import judge, registry
from ..scoring.predictor import load_predictor
from .scoring_adapter import LoadedJudge, LoadedScorer, predictor_device, predictor_dtype

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
        return io.NodeOutput(LoadedScorer(predictor, load_device))


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



NODES = [AesthetePredictorLoader, AestheteJudge]
if catalog():  # the catalog's loader, where this install has scoring/scorers
    NODES.insert(1, AestheteScorerLoader)
