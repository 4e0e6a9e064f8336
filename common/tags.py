"""How a caption or a prompt field is split into tags, for the composer and the training captions alike."""

from __future__ import annotations

# ASCII and full-width commas (how Chinese captions and the recipe's tags are joined) and line breaks
TAG_BOUNDARIES = frozenset({",", "，", "\n", "\r"})


def split_tags(text: str) -> list[str]:
    r"""Split at commas (``,`` or ``，``) and line breaks, but not inside parentheses, so
    ``ganyu (genshin impact, cosplay)`` stays one tag; an escaped ``\(`` opens nothing. Runs of whitespace inside a
    tag become one space, whitespace around it is dropped, empty tags vanish."""
    tags, current, depth, escaped = [], [], 0, False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
            continue
        if ch == "\\":
            escaped = True
            current.append(ch)
            continue
        if ch == "(":
            depth += 1
        elif ch == ")" and depth > 0:
            depth -= 1
        if ch in TAG_BOUNDARIES and depth == 0:
            tags.append("".join(current))
            current = []
        else:
            current.append(ch)
    tags.append("".join(current))
    return [" ".join(t.split()) for t in tags if t.strip()]
