"""Read prompts with ComfyUI's own prompt-weight parser and CLIP tokenizer (comfy.sd1_clip of the embedded
ComfyUI), in a subprocess (``run_in_comfy``), so the test process never imports ComfyUI's modules.

``parse_prompts(texts)`` returns, for each text, what ComfyUI makes of it:
- ``segments``: ``comfy.sd1_clip.token_weights(escape_important(text), 1.0)`` with ``unescape_important`` applied
  to each piece, as ``SDTokenizer.tokenize_with_weights`` does before tokenizing: ``[(text, weight), ...]``;
- ``token_weights``: the weight of every prompt token (start, end and padding left out) from
  ``SD1Tokenizer.tokenize_with_weights``, the call CLIPTextEncode makes for SD1.5.
"""

from __future__ import annotations

from .in_comfy import run_in_comfy


def _parse_in_comfy(texts: list[str]) -> list[dict]:
    from comfy.sd1_clip import SD1Tokenizer, escape_important, token_weights, unescape_important

    tokenizer = SD1Tokenizer()
    out = []
    for text in texts:
        segments = [(unescape_important(s), w) for s, w in token_weights(escape_important(text), 1.0)]
        chunks = tokenizer.tokenize_with_weights(text, return_word_ids=True)["l"]
        weights = [w for chunk in chunks for _, w, word in chunk if word != 0]
        out.append({"segments": segments, "token_weights": weights})
    return out


def parse_prompts(texts: list[str]) -> list[dict]:
    results = run_in_comfy(_parse_in_comfy, list(texts), timeout=120)
    for r in results:
        r["segments"] = [(text, weight) for text, weight in r["segments"]]
    return results
