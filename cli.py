"""The `aesthete` command line: each feature area adds its sub-commands (scoring: `score`, `filter`; lora: `convert-lora`)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, function) pairs that add sub-commands; each lives beside the domain code it drives
SUBCOMMANDS = (
    ("scoring.cli", "add_subcommand"),
    ("scoring.filter_cli", "add_subcommand"),
    ("lora.cli", "add_subcommand"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aesthete", description="Aesthete: aesthetic scoring and LoRA tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for module, func in SUBCOMMANDS:
        getattr(importlib.import_module(f".{module}", __package__), func)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
