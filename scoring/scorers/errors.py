"""What can go wrong with a scorer (the contract of docs in /work/team/judge_interface.md)."""


class ScorerUnavailable(RuntimeError):
    """A scorer's files are not on disk and cannot be downloaded; the message names the files and the folder."""


class PromptRequired(ValueError):
    """A prompt-aware scorer was given no prompt (or an empty one); the message names the scorer."""


class ScorerFileError(ValueError):
    """A half-downloaded or mismatched weight file; the message names the file."""
