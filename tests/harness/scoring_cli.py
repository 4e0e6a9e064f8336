"""The scoring command line as the CLI tests run it in-process."""

from __future__ import annotations

from aesthete.cli import main


def run_score(*argv) -> int:
    """``aesthete score *argv`` without progress bars; its exit status."""
    return main(["score", *map(str, argv), "--no-progress"])
