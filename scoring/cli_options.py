"""What ``aesthete score`` and ``aesthete filter`` share: the options that choose the scoring model (a predictor, or
catalog scorers combined into a judge) and how it runs, loading it, and the engine (local or Ray) that scores with
it. Both commands import this module; neither imports the other."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..common.paths import models_root
from . import registry

log = logging.getLogger("aesthete.scoring")


def default_models_dir() -> Path:
    """models/aesthetic of the ComfyUI the pack is installed in, as the nodes use (``common.paths.models_root``)."""
    return models_root() / "aesthetic"


def path_or_uri(text: str) -> Path | str:
    return text if "://" in text else Path(text)  # Path() would fold a URI's "//"


def add_model_arguments(p) -> None:
    """The predictor and how it runs (shared by ``score`` and ``filter``)."""
    p.add_argument("--model", default=registry.DEFAULT_PREDICTOR,
                   help="a predictor folder, or a predictor name under --models-dir (a published one is downloaded "
                        f"if missing; default {registry.DEFAULT_PREDICTOR})")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of predictor folders (default: models/aesthetic of the ComfyUI the pack is "
                        "installed in, or $AESTHETE_MODELS_DIR/aesthetic)")
    p.add_argument("--scorer", action="append", default=None, metavar="ID[=WEIGHT]",
                   help="score with a catalog scorer (e.g. clipscore-vit-l-14, pickscore-v1, a LAION head's name) or "
                        "a predictor folder instead of --model; repeat it to combine several into a judge, each with "
                        "its weight (default 1): every score is placed on its scorer's fixed range and the weighted "
                        "mean is put on the first scorer's scale. Catalog files are found or downloaded under the "
                        "models root (the parent of --models-dir)")
    p.add_argument("--prompt", default=None,
                   help="for a prompt-aware scorer: the prompt of every image; without it each image's caption is "
                        "its prompt (.txt or .json beside it, or its metadata.csv row) and images without one are "
                        "skipped with the reason")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp32 on the CPU, fp16 on a GPU")
    p.add_argument("--compile", action="store_true",
                   help="compile the scoring model with torch.compile (compiled on the first batch, which takes a "
                        "while; scores equal within float rounding; falls back, with a warning, if compiling fails). "
                        "On the CPU leave it off: the default path measured faster")


def resolve_model(model: str, models_dir: Path | None) -> Path:
    as_path = Path(model)
    if as_path.is_dir():
        return as_path
    if as_path.is_absolute() or os.sep in model:
        raise registry.PredictorUnavailable(f"{model}: no such predictor folder")
    return registry.ensure_predictor(model, models_dir or default_models_dir(),
                                     lambda done, total, what: log.info("download %s (%d/%d)", what, done, total))


def parse_scorer(text: str) -> tuple[str, float]:
    """``ID[=WEIGHT]`` of --scorer."""
    name, sep, weight = text.rpartition("=") if "=" in text else (text, "", "")
    try:
        return (name, float(weight)) if sep else (text, 1.0)
    except ValueError:
        raise ValueError(f"--scorer {text}: the weight after '=' must be a number") from None


def scorer_specs(args) -> list[tuple[str, float]]:
    return [parse_scorer(text) for text in args.scorer or []]


def catalog_root(args) -> Path:
    """Where catalog scorers' files are found or downloaded: the models root (the parent of --models-dir)."""
    return (args.models_dir or default_models_dir()).parent


def load_scoring_model(args):
    """The predictor of --model, or the scorer / judge of the --scorer options, loaded once for this run."""
    from .judge import load_judge
    from .predictor import load_predictor

    if not args.scorer:
        return load_predictor(resolve_model(args.model, args.models_dir), args.device, args.dtype,
                              compile=args.compile)
    return load_judge(scorer_specs(args), catalog_root(args), args.device, args.dtype, compile=args.compile,
                      progress=lambda done, total, what: log.info("download %s (%d/%d)", what, done, total))


def open_engine(args, folder: Path | None, root: Path | None = None):
    """The engine the arguments ask for, as a context manager (the Ray engine connects to its cluster). ``root``:
    where captions' metadata.csv names start (filter: SRC)."""
    src = getattr(args, "src", None)
    root = root if root is not None else src  # a folder, or a URI (the Ray engine reads its captions too)
    if args.engine == "ray":
        from .ray_engine import RayEngine, RayOptions

        return RayEngine(folder, RayOptions(address=args.address, batch_size=args.batch_size, actors=args.actors,
                                            device=args.device, dtype=args.dtype, compile=args.compile,
                                            progress_bars=not args.no_progress,
                                            scorers=tuple(scorer_specs(args)), models_root=str(catalog_root(args)),
                                            prompt=args.prompt, root=str(root) if root is not None else None))
    from .filter import LocalEngine

    return LocalEngine(load_scoring_model(args), args.batch_size, prompt=args.prompt,
                       root=root if isinstance(root, Path) else None)
