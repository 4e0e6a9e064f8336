"""How one epoch's caption is built from an image's tags (trigger word, keep the first N tags, shuffle the rest,
caption dropout); where the tags come from is ``common.captions``."""

from __future__ import annotations

import random
from dataclasses import dataclass



@dataclass(frozen=True)
class CaptionRecipe:
    """How an epoch's caption is made from an image's tags."""

    trigger_word: str = ""
    keep_first_tags: int = 0
    shuffle_tags: bool = False
    dropout: float = 0.0

    def build(self, tags: list[str], rng: random.Random) -> str:
        """The caption for one pass over an image: with probability ``dropout`` only the trigger word
        (an empty caption when there is none); else the trigger word, the first ``keep_first_tags`` tags in
        order, then the other tags (shuffled when ``shuffle_tags``)."""
        trigger = [self.trigger_word.strip()] if self.trigger_word.strip() else []
        if self.dropout > 0 and rng.random() < self.dropout:
            return ", ".join(trigger)
        tags = [t for t in tags if t not in trigger]
        keep, rest = tags[:self.keep_first_tags], tags[self.keep_first_tags:]
        if self.shuffle_tags:
            rest = rest[:]
            rng.shuffle(rest)
        return ", ".join(trigger + keep + rest)
