"""``aesthete filter SRC DST``: keep the images of SRC that score well, with their captions, in DST.

Every image under SRC is scored (images scored before, unchanged, are not scored again: DST/.aesthete keeps the
results, so an interrupted run resumes); those that pass --min-score (and --top-k) are copied or linked into DST at
the same relative paths, with their caption files (.txt, .caption, .json, .tags beside the image, and their rows of
metadata.csv). A file already in DST is never replaced: an identical one counts as placed, a different one is left
alone and reported. Exit status: 0 done; 1 no image passed; 2 nothing could be scored, or an error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import registry
from .cli_options import add_model_arguments, open_engine, path_or_uri, resolve_model

log = logging.getLogger("aesthete.scoring")

EXIT_OK, EXIT_NONE_KEPT, EXIT_ERROR = 0, 1, 2


def add_subcommand(subparsers) -> None:
    from .ray_engine import add_engine_arguments

    p = subparsers.add_parser("filter", help="copy or link the images that score well into another folder",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=path_or_uri, metavar="SRC",
                   help="folder of images (and their captions); with --engine ray also an s3://, gs://, hdfs:// ... URI")
    p.add_argument("dst", type=Path, metavar="DST", help="folder for the images that pass (created if missing)")
    p.add_argument("--min-score", type=float, default=6.0, help="keep images scoring at least this (default 6)")
    p.add_argument("--top-k", type=int, default=0, help="keep at most the N best of those (default: no limit)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copy the files (default)")
    mode.add_argument("--link", dest="mode", action="store_const", const="link",
                      help="hard-link the files (symbolic links across filesystems) instead of copying them")
    p.set_defaults(mode="copy")
    p.add_argument("-r", "--recursive", action="store_true", help="also the images in sub-folders")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", type=Path, metavar="REPORT", help="write every file's score or skip reason as JSON")
    out.add_argument("--csv", type=Path, metavar="REPORT", help="write every file's score or skip reason as CSV")
    p.add_argument("--results", type=Path, default=None,
                   help="folder of stored results (default DST/.aesthete): scores.jsonl, and parquet/ shards from "
                        "the Ray engine")
    add_model_arguments(p)
    add_engine_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def progress_bar(args, total_hint: str):
    """A tqdm bar for the local engine (the Ray engine shows Ray Data's own bars), or None."""
    if args.no_progress or args.engine == "ray":
        return None
    from tqdm import tqdm

    return tqdm(unit="img", desc=total_hint, file=sys.stderr)


def run(args) -> int:
    from .filter import filter_folder
    from .scorers.errors import ScorerUnavailable
    from .folder import NothingScorable
    from .ray_engine import EngineUnavailable

    if args.batch_size < 1 or args.top_k < 0:
        log.error("--batch-size must be at least 1 and --top-k 0 or more")
        return EXIT_ERROR
    bar = progress_bar(args, "scoring")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        folder = resolve_model(args.model, args.models_dir) if not args.scorer else None
        with open_engine(args, folder) as engine:
            report = filter_folder(args.src, args.dst, engine, min_score=args.min_score, top_k=args.top_k,
                                   mode=args.mode, recursive=args.recursive, results=args.results,
                                   progress=progress if bar is not None else None)
    except (OSError, ValueError, registry.PredictorUnavailable, EngineUnavailable, NothingScorable,
            ScorerUnavailable) as e:
        log.error("%s", e)
        return EXIT_ERROR
    finally:
        if bar is not None:
            bar.close()
    for f in report.files:
        if f.score is not None:
            each = "".join(f"\t{k} {v:.4f}" for k, v in (f.scores or {}).items())
            sys.stdout.write(f"{f.score:.4f}\t{'kept' if f.kept else '-'}\t{f.name}{each}\n")
    sys.stdout.write(f"mean before\t{report.mean_before:.4f}\tafter\t{report.mean_after:.4f}\t"
                     f"({len(report.kept)} kept of {len(report.scored)} scored, "
                     f"{len(report.files) - len(report.scored)} skipped)\n")
    if args.json:
        report.write(args.json, "json")
    elif args.csv:
        report.write(args.csv, "csv")
    log.info("%s", report.summary())
    return EXIT_OK if report.kept else EXIT_NONE_KEPT
