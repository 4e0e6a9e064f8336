"""Token counts of a prompt as a CLIP tokenizer splits it, from the output of ComfyUI's ``clip.tokenize(text,
return_word_ids=True)``: ``{encoder: [chunk, ...]}``, each chunk a list of ``(token, weight, word_id)``, where
word id 0 marks start, end and padding tokens. Plain data in, plain data out: no ComfyUI import."""

from __future__ import annotations

from dataclasses import dataclass

CHUNK_TOKENS = 77  # CLIP's context: a start token, 75 prompt tokens, an end token
# encoders that read one fixed context instead of 77-token chunks: name -> (context, prompt tokens that fit)
CONTEXT_LIMITS = {"chatglm3": (256, 254)}  # Kolors's ChatGLM3: [gMASK] sop, then 254 prompt tokens


@dataclass(frozen=True)
class TokenCount:
    encoder: str
    tokens: int  # prompt tokens, without start, end and padding
    chunks: int  # chunks ComfyUI encodes separately (and concatenates)

    @property
    def context_limit(self) -> tuple[int, int] | None:
        return CONTEXT_LIMITS.get(self.encoder)

    @property
    def past_one_chunk(self) -> bool:
        """Past what the encoder reads at once: one 77-token chunk, or the fixed context of a ChatGLM3-like encoder."""
        if self.context_limit is not None:
            return self.tokens > self.context_limit[1]
        return self.chunks > 1


def count_tokens(tokenized: dict) -> list[TokenCount]:
    counts = []
    for encoder, chunks in tokenized.items():
        if not isinstance(chunks, list):
            continue
        tokens = sum(1 for chunk in chunks for item in chunk if len(item) >= 3 and item[2] != 0)
        counts.append(TokenCount(str(encoder), tokens, len(chunks)))
    return counts


def token_report(counts: list[TokenCount]) -> tuple[str, bool]:
    """One line per encoder, and whether any ran past what it reads at once (then the line says so)."""
    lines, past = [], False
    for c in counts:
        if c.context_limit is not None:
            context, fits = c.context_limit
            line = f"{c.encoder}: {c.tokens} of {fits} tokens"
            if c.past_one_chunk:
                past = True
                line += (f" - WARNING: past its {context}-token context; the last {c.tokens - fits} tokens are cut. "
                         "Shorten the prompt or switch fields off.")
            lines.append(line)
            continue
        line = f"{c.encoder}: {c.tokens} tokens in {c.chunks} chunk{'s' if c.chunks != 1 else ''}"
        if c.past_one_chunk:
            past = True
            line += (f" - WARNING: past one {CHUNK_TOKENS}-token chunk ({CHUNK_TOKENS - 2} prompt tokens); "
                     "ComfyUI encodes each chunk on its own, so tags near the cut lose their context. "
                     "Shorten the prompt or switch fields off.")
        lines.append(line)
    return "\n".join(lines), past
