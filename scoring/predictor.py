"""Loading a LAION aesthetic predictor and scoring images with it in batches.

The numbers are the reference code's (``processor(images=image)`` then ``predictor(**inputs).logits``): the
same simple-aesthetics-predictor classes and weights, the model folder's own image processor, fp32 by default.
What is faster: one processor call per batch instead of per image, and the forward of ``speed.FastScorer`` (the
model's math with the last layer for the CLS token only, oneDNN matmuls on the CPU, quick_gelu fused), equal within
float rounding. Opt-in (``compile=True``): ``speed.CompiledScorer``, the same under torch.compile.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from .registry import PROCESSOR_FILES, WEIGHT_FILES
from .scorers.base import ModuleScorer, score_finite

log = logging.getLogger("aesthete.scoring")

HEAD_CLASSES = {"AestheticsPredictorV1": "v1", "AestheticsPredictorV2Linear": "v2-linear",
                "AestheticsPredictorV2ReLU": "v2-relu"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (done, total) -> None
ScoreProgress = Callable[[int, int], None]


def head_class(head: str) -> type:
    from aesthetics_predictor import AestheticsPredictorV1, AestheticsPredictorV2Linear, AestheticsPredictorV2ReLU

    return {"v1": AestheticsPredictorV1, "v2-linear": AestheticsPredictorV2Linear,
            "v2-relu": AestheticsPredictorV2ReLU}[head]


def detect_head(folder: Path) -> str:
    """Which predictor head a folder holds: from config.json's ``architectures``, else from the weight names
    (V1: ``predictor.*``; V2 linear: ``layers.0,2,4,6,7``; V2 ReLU: ``layers.0,3,6,9,11``)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; put the files of a Hugging Face or ModelScope aesthetic "
                                f"predictor there, or pick a listed model")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for arch in config.get("architectures") or []:
        if arch in HEAD_CLASSES:
            return HEAD_CLASSES[arch]
    keys = _weight_names(folder)
    if any(k.startswith("predictor.") for k in keys):
        return "v1"
    if "layers.11.weight" in keys:
        return "v2-relu"
    if "layers.7.weight" in keys:
        return "v2-linear"
    raise ValueError(f"{folder}: not a LAION aesthetic predictor (config.json architectures "
                     f"{config.get('architectures')}, no predictor head in the weights)")


def _weight_names(folder: Path) -> set[str]:
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            return set(f.keys())
    bin_path = folder / "pytorch_model.bin"
    if bin_path.is_file():
        return set(torch.load(bin_path, map_location="meta", weights_only=True))
    raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def resolve_device(device: str) -> torch.device:
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is fp32 on CPU (the reference numbers) and fp16 on a GPU (CLIP's usual inference precision)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("auto", "", None):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


class ModelForward:
    """Scores with the model's own forward (``predictor(pixel_values).logits[:, 0]``, the reference code)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits[:, 0]


def choose_scorer(model: torch.nn.Module, name: str, compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The one scorer a predictor uses, chosen at load: ``speed.FastScorer`` (the default), ``speed.CompiledScorer``
    around it when ``compile`` (its eager fallback is that FastScorer, so packed weights are made once), or the
    model's own forward when FastScorer cannot run this model (logged)."""
    from .speed import CompiledScorer, FastScorer, unsupported_reason

    reason = unsupported_reason(model)
    if reason is not None:
        log.warning("%s: scoring with the model's own forward (slower%s): %s", name,
                    "; not compiled" if compile else "", reason)
        return ModelForward(model)
    fast = FastScorer(model)
    return CompiledScorer(fast) if compile else fast


def load_image_processor(folder: Path, image_size: int | None = None):
    """The predictor folder's own image processor (preprocessor_config.json or processor_config.json), else CLIP's preprocessing at the model's
    input size (``image_size``; read from config.json when not given). Loads no weights: the Ray engine's CPU tasks
    preprocess with it while the scoring actors hold the model."""
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    if any((folder / f).is_file() for f in PROCESSOR_FILES):
        return CLIPImageProcessor.from_pretrained(str(folder))
    if image_size is None:
        from transformers import CLIPVisionConfig

        image_size = CLIPVisionConfig.from_pretrained(str(folder)).image_size
    log.warning("%s: no preprocessor_config.json or processor_config.json; using CLIP's preprocessing at %d px", folder, image_size)
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def preprocess_images(processor, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
    """Pixel values [B,3,S,S] for RGB PIL images or [3,H,W] uint8 tensors, exactly as the reference computes them one
    by one (the processor groups same-sized images and resizes them together)."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


class AestheticPredictor(ModuleScorer):
    """A loaded predictor: ``score_images`` (PIL) and ``score_tensor`` (ComfyUI IMAGE batches) give 1-10 scores.
    It is a ``scorers.Scorer`` that never reads a prompt (``prompts`` is accepted and ignored)."""

    prompt_aware = False

    def __init__(self, model: torch.nn.Module, processor, name: str, head: str, folder: Path | None = None,
                 compile: bool = False):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.head = head
        self.folder = folder
        self._lock = threading.Lock()  # one forward at a time: nodes of one graph may share the predictor
        self.scorer = choose_scorer(model, name, compile)

    @property
    def compile(self) -> bool:
        from .speed import CompiledScorer

        return isinstance(self.scorer, CompiledScorer)

    @classmethod
    def from_folder(cls, folder: Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "auto",
                    compile: bool = False) -> AestheticPredictor:
        folder = Path(folder)
        head = detect_head(folder)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        model = head_class(head).from_pretrained(str(folder), dtype=dt)
        model.to(dev)
        processor = load_image_processor(folder, model.config.image_size)
        log.info("loaded aesthetic predictor %s (%s, %s, %s)", folder.name, head, dev, dt)
        return cls(model, processor, folder.name, head, folder, compile)

    @property
    def info(self):
        from .scorers.catalog import laion_info

        return laion_info(self.name)

    def modules(self) -> list[torch.nn.Module]:
        """What a ModelPatcher must own."""
        return [self.model]

    def preprocess(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """Pixel values for a list of RGB PIL images or [3,H,W] uint8 tensors, exactly as the reference computes
        them one by one (the processor groups same-sized images and resizes them together)."""
        return preprocess_images(self.processor, images)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B] float32 scores on the CPU for preprocessed pixel values."""
        with self._lock, torch.inference_mode():
            return self.scorer(pixel_values.to(self.device, self.dtype)).float().cpu()

    def score_images(self, images: Sequence[Image.Image | torch.Tensor], prompts: Sequence[str] | None = None,
                     batch_size: int = 16, progress: ScoreProgress | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]:
        """One score per image, in order. ``interrupt`` is called between batches (it may raise to stop).
        ``prompts`` is ignored: the LAION head sees the image only."""
        if isinstance(prompts, int):  # callers written before prompts existed pass the batch size second
            batch_size = prompts
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            if interrupt is not None:
                interrupt()
            chunk = images[start:start + batch_size]
            scores.extend(self.forward(self.preprocess(chunk)).tolist())
            if progress is not None:
                progress(len(scores), len(images))
        return scores

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str] | None = None, batch_size: int = 16,
                     progress: ScoreProgress | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]:
        """Scores of a [B,H,W,C] 0..1 batch, equal to scoring the PNGs ComfyUI would save from it. An image with a
        NaN or infinity scores NaN (logged), the others are scored normally. ``prompts`` is ignored (an int there is
        the batch size, as callers written before prompts existed pass it)."""
        if isinstance(prompts, int):
            batch_size = prompts
        return score_finite(images, lambda uint8, _: self.score_images(uint8, None, batch_size, progress, interrupt))


def load_predictor(folder: Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                   compile: bool = False) -> AestheticPredictor:
    """A predictor from ``folder``, loaded now. Nothing is kept here: in the server the loader node's output, wrapped
    in a ModelPatcher, is what ComfyUI's model management sees and frees; the command line loads one per run."""
    return AestheticPredictor.from_folder(Path(folder), device, dtype, compile=compile)


def finite_mean(scores: Sequence[float]) -> float:
    """Mean of the finite scores; NaN when there are none."""
    good = [s for s in scores if math.isfinite(s)]
    return sum(good) / len(good) if good else math.nan
