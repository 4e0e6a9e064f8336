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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from .images import finite_mask, tensor_to_uint8
from .registry import WEIGHT_FILES

log = logging.getLogger("aesthete.scoring")

HEAD_CLASSES = {"AestheticsPredictorV1": "v1", "AestheticsPredictorV2Linear": "v2-linear",
                "AestheticsPredictorV2ReLU": "v2-relu"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (done, total) -> None
Progress = Callable[[int, int], None]


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


def load_image_processor(folder: Path, image_size: int | None = None):
    """The predictor folder's own image processor (preprocessor_config.json), else CLIP's preprocessing at the model's
    input size (``image_size``; read from config.json when not given). Loads no weights: the Ray engine's CPU tasks
    preprocess with it while the scoring actors hold the model."""
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    if (folder / "preprocessor_config.json").is_file():
        return CLIPImageProcessor.from_pretrained(str(folder))
    if image_size is None:
        from transformers import CLIPVisionConfig

        image_size = CLIPVisionConfig.from_pretrained(str(folder)).image_size
    log.warning("%s: no preprocessor_config.json; using CLIP's preprocessing at %d px", folder, image_size)
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def preprocess_images(processor, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
    """Pixel values [B,3,S,S] for RGB PIL images or [3,H,W] uint8 tensors, exactly as the reference computes them one
    by one (the processor groups same-sized images and resizes them together)."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


class AestheticPredictor:
    """A loaded predictor: ``score_images`` (PIL) and ``score_tensor`` (ComfyUI IMAGE batches) give 1-10 scores."""

    def __init__(self, model: torch.nn.Module, processor, name: str, head: str, folder: Path | None = None):
        self.model = model.eval()
        self.processor = processor
        self.name = name
        self.head = head
        self.folder = folder
        self._lock = threading.Lock()  # one forward at a time: ComfyUI and the CLI may share a cached model
        self.base = self  # the predictor owning the model; a compiled view shares it (see ``compiled``)
        self.speed = None  # the compiled scorer of a compiled view
        self._compiled_view: AestheticPredictor | None = None
        self.fast = self._fast_scorer(model, name)

    @staticmethod
    def _fast_scorer(model: torch.nn.Module, name: str):
        from .speed import FastScorer, unsupported_reason

        reason = unsupported_reason(model)
        if reason is None:
            return FastScorer(model)
        log.warning("%s: scoring with the model's own forward (slower): %s", name, reason)
        return None

    @property
    def compile(self) -> bool:
        return self.speed is not None

    def compiled(self) -> AestheticPredictor:
        """This predictor with the opt-in speed path (``FastScorer`` under torch.compile, compiled on the first batch,
        eager if compiling fails). It shares the model, processor and lock; the same view, and so the same compiled
        code, is returned every time. A model ``FastScorer`` cannot run is not compiled (this predictor is returned)."""
        base = self.base
        if base.fast is None:
            return base
        with _VIEW_LOCK:
            if base._compiled_view is None:
                from .speed import CompiledScorer

                view = AestheticPredictor.__new__(AestheticPredictor)
                view.__dict__.update(base.__dict__)
                view.speed = CompiledScorer(base.fast)
                view._compiled_view = None
                base._compiled_view = view
            return base._compiled_view

    @classmethod
    def from_folder(cls, folder: Path, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype = "auto") -> AestheticPredictor:
        folder = Path(folder)
        head = detect_head(folder)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        model = head_class(head).from_pretrained(str(folder), dtype=dt)
        model.to(dev)
        processor = load_image_processor(folder, model.config.image_size)
        log.info("loaded aesthetic predictor %s (%s, %s, %s)", folder.name, head, dev, dt)
        return cls(model, processor, folder.name, head, folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """Pixel values for a list of RGB PIL images or [3,H,W] uint8 tensors, exactly as the reference computes
        them one by one (the processor groups same-sized images and resizes them together)."""
        return preprocess_images(self.processor, images)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B] float32 scores on the CPU for preprocessed pixel values."""
        with self._lock, torch.inference_mode():
            pixel_values = pixel_values.to(self.device, self.dtype)
            if self.speed is not None:
                return self.speed(pixel_values).float().cpu()
            if self.fast is not None:
                return self.fast(pixel_values).float().cpu()
            out = self.model(pixel_values=pixel_values)
            return out.logits[:, 0].float().cpu()

    def score_images(self, images: Sequence[Image.Image | torch.Tensor], batch_size: int = 16,
                     progress: Progress | None = None, interrupt: Callable[[], None] | None = None) -> list[float]:
        """One score per image, in order. ``interrupt`` is called between batches (it may raise to stop)."""
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

    def score_tensor(self, images: torch.Tensor, batch_size: int = 16, progress: Progress | None = None,
                     interrupt: Callable[[], None] | None = None) -> list[float]:
        """Scores of a [B,H,W,C] 0..1 batch, equal to scoring the PNGs ComfyUI would save from it. An image with a
        NaN or infinity scores NaN (logged), the others are scored normally."""
        ok = finite_mask(images)
        bad = [i for i, good in enumerate(ok.tolist()) if not good]
        if bad:
            log.warning("images %s of the batch contain NaN or infinite values: not scored (score NaN)", bad)
        good_idx = [i for i, good in enumerate(ok.tolist()) if good]
        uint8 = tensor_to_uint8(images[good_idx]) if good_idx else None
        good_scores = self.score_images(list(uint8), batch_size, progress, interrupt) if good_idx else []
        scores = [math.nan] * images.shape[0]
        for i, s in zip(good_idx, good_scores):
            scores[i] = s
        return scores

    def to(self, device: torch.device | str) -> AestheticPredictor:
        self.model.to(device)
        return self


_CACHE: OrderedDict[tuple, AestheticPredictor] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_VIEW_LOCK = threading.Lock()
CACHE_SIZE = 2


def load_predictor(folder: Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                   compile: bool = False) -> AestheticPredictor:
    """A predictor from ``folder``, kept across calls: the same folder (unchanged on disk), device, dtype and
    ``compile`` give the same object. The two most recently used models are kept; ``compile=True`` gives the
    model's compiled view (``AestheticPredictor.compiled``), which shares it, so both never hold two copies."""
    folder = Path(folder)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    stamp = tuple((f, (folder / f).stat().st_mtime_ns) for f in ("config.json", *WEIGHT_FILES)
                  if (folder / f).is_file())
    key = (str(folder.resolve()), stamp, str(dev), str(dt))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            predictor = _CACHE[key]
            return predictor.compiled() if compile else predictor
    predictor = AestheticPredictor.from_folder(folder, dev, dt)
    with _CACHE_LOCK:
        _CACHE[key] = predictor
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return predictor.compiled() if compile else predictor


def finite_mean(scores: Sequence[float]) -> float:
    """Mean of the finite scores; NaN when there are none."""
    good = [s for s in scores if math.isfinite(s)]
    return sum(good) / len(good) if good else math.nan
