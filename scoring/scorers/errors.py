"""What goes wrong with a scorer, as exceptions a node or the command line can show as they are."""

from __future__ import annotations


class ScorerUnavailable(RuntimeError):
    """The scorer's files are neither on disk nor downloadable; the message names the files and the folder."""


class PromptRequired(ValueError):
    """A prompt-aware scorer was asked to score without a prompt (or with an empty one); the message names it."""


class ScorerFileError(ValueError):
    """A weight file is truncated, corrupt or of another model; the message names the file."""
