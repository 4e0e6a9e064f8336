"""``aesthete score PATH...``: per-file aesthetic scores and their mean (the reference ``evaluate(folder)``).

Exit status: 0 done (and, with --threshold, the mean reaches it); 1 the mean is below --threshold; 2 nothing could
be scored or the predictor could not be loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..common.paths import models_root
from . import registry
from .ray_engine import EngineUnavailable, add_engine_arguments

log = logging.getLogger("aesthete.scoring")

EXIT_OK, EXIT_BELOW_THRESHOLD, EXIT_ERROR = 0, 1, 2


def default_models_dir() -> Path:
    """models/aesthetic of the ComfyUI the pack is installed in, as the nodes use (``common.paths.models_root``)."""
    return models_root() / "aesthetic"


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser("score", help="score images and folders with a LAION aesthetic predictor",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=path_or_uri, metavar="PATH",
                   help="image files and folders (with --engine ray also s3://, gs://, hdfs:// ... URIs)")
    add_model_arguments(p)
    p.add_argument("-r", "--recursive", action="store_true", help="also score images in sub-folders")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", type=Path, metavar="FILE", help="write per-file scores and skips as JSON")
    out.add_argument("--csv", type=Path, metavar="FILE", help="write per-file scores and skips as CSV")
    p.add_argument("--threshold", type=float, default=None,
                   help="exit 1 when the mean is below this (6 is a common bar for training data)")
    p.add_argument("--results", type=Path, default=None,
                   help="folder of stored results: files scored before (same path, size, mtime, predictor) are not "
                        "scored again (scores.jsonl; the Ray engine's Parquet shards in parquet/)")
    add_engine_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


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


def score_with_engine(args, folder: Path, predictor, root: Path | None, progress):
    """``score`` through an engine (scoring/filter.py, scoring/ray_engine.py), with a results store if asked."""
    from .filter import ResultsStore, score_report, source_files
    from .filter_cli import open_engine

    files = source_files(args.paths, args.recursive, root=root)
    store = ResultsStore(args.results) if args.results is not None else None
    engine = open_engine(args, folder, root) if predictor is None else _local(predictor, args.batch_size, args.prompt,
                                                                             root)
    with engine:
        return score_report(files, engine, store, root, progress)


def _local(predictor, batch_size: int, prompt: str | None = None, root: Path | None = None):
    from .filter import LocalEngine

    return LocalEngine(predictor, batch_size, prompt=prompt, root=root)


def run(args) -> int:
    from .folder import NothingScorable, collect_files, write_report
    from .scorers.errors import ScorerUnavailable

    if args.batch_size < 1:
        log.error("--batch-size must be at least 1")
        return EXIT_ERROR
    uris = [p for p in args.paths if isinstance(p, str)]
    if uris and args.engine != "ray":
        log.error("%s: URIs are read by the Ray engine only (add --engine ray), or mount the folder", uris[0])
        return EXIT_ERROR
    try:
        files = [] if args.engine == "ray" else collect_files(args.paths, args.recursive)
        folder = resolve_model(args.model, args.models_dir) if not args.scorer else None
        # the Ray engine loads the predictor in its actors, not here
        predictor = None if args.engine == "ray" else load_scoring_model(args)
    except (OSError, ValueError, registry.PredictorUnavailable, ScorerUnavailable) as e:
        log.error("%s", e)
        return EXIT_ERROR
    bar = None
    if not args.no_progress and args.engine == "local":  # Ray Data shows its own bars
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", desc="scoring", file=sys.stderr)
    root = args.paths[0] if len(args.paths) == 1 and not uris and args.paths[0].is_dir() else None
    progress = (lambda done, total: bar.update(done - bar.n)) if bar else None
    try:
        # both engines score the same batches (batch-size files in order), so they give the same numbers
        report = score_with_engine(args, folder, predictor, root, progress)
    except (NothingScorable, EngineUnavailable, OSError, ValueError) as e:
        log.error("%s", e)
        return EXIT_ERROR
    finally:
        if bar is not None:
            bar.close()
    sys.stdout.write(report.table() + "\n")
    if report.per_scorer:
        means = "\t".join(f"{k} {v:.4f}" for k, v in report.column_means().items())
        sys.stdout.write(f"scorer means\t{means}\n")
    sys.stdout.write(f"mean\t{report.mean:.4f}\t({report.count} scored, {len(report.skipped)} skipped)\n")
    if args.json:
        write_report(report, args.json, "json")
    elif args.csv:
        write_report(report, args.csv, "csv")
    if args.threshold is not None and report.mean < args.threshold:
        log.info("mean %.4f is below the threshold %.4f", report.mean, args.threshold)
        return EXIT_BELOW_THRESHOLD
    return EXIT_OK
