"""``aesthete score PATH...``: per-file aesthetic scores and their mean (the reference ``evaluate(folder)``).

Exit status: 0 done (and, with --threshold, the mean reaches it); 1 the mean is below --threshold; 2 nothing could
be scored or the predictor could not be loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import registry
from .cli_options import add_model_arguments, load_scoring_model, open_engine, path_or_uri, resolve_model
from .ray_engine import EngineUnavailable, add_engine_arguments

log = logging.getLogger("aesthete.scoring")

EXIT_OK, EXIT_BELOW_THRESHOLD, EXIT_ERROR = 0, 1, 2


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


def score_with_engine(args, folder: Path, predictor, root: Path | None, progress):
    """``score`` through an engine (scoring/filter.py, scoring/ray_engine.py), with a results store if asked."""
    from .filter import score_report
    from .store import ResultsStore, source_files

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
