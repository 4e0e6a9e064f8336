"""Sorting scored images best first and splitting them into kept and rejected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranking:
    kept: list[int]  # indices into the input, best first
    rejected: list[int]  # the others, best first, unscorable (NaN) last

    def summary(self, scores: Sequence[float]) -> str:
        kept = ", ".join(f"#{i}: {scores[i]:.3f}" for i in self.kept) or "none"
        return f"kept {len(self.kept)} of {len(self.kept) + len(self.rejected)} (best first): {kept}"


def rank_by_score(scores: Sequence[float], top_k: int = 0, min_score: float | None = None) -> Ranking:
    """Indices sorted by score, best first (ties keep input order). An image is kept when its score is finite, at
    least ``min_score`` (None: no minimum) and among the ``top_k`` best (0: no limit). When nothing passes, ``kept``
    is empty and every index is rejected: callers decide what an empty selection means for them."""
    if top_k < 0:
        raise ValueError(f"top_k must be 0 (all) or more, got {top_k}")
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    order = sorted(finite, key=lambda i: -scores[i])
    passing = [i for i in order if min_score is None or scores[i] >= min_score]
    kept = passing[:top_k] if top_k else passing
    kept_set = set(kept)
    rejected = [i for i in order if i not in kept_set] + [i for i, s in enumerate(scores) if not math.isfinite(s)]
    return Ranking(kept, rejected)


def summarize_scores(scores: Sequence[float], name: str = "") -> str:
    """A short text for a node: each score, the mean, the best and worst."""
    finite = [s for s in scores if math.isfinite(s)]
    head = f"{name}: " if name else ""
    if not finite:
        return f"{head}no image could be scored ({len(scores)} given)"
    lines = [f"{head}{len(finite)} image(s), mean {sum(finite) / len(finite):.3f}, "
             f"best {max(finite):.3f}, worst {min(finite):.3f}"]
    lines += [f"#{i}: {s:.3f}" if math.isfinite(s) else f"#{i}: not scored (NaN or infinite pixels)"
              for i, s in enumerate(scores)]
    return "\n".join(lines)
