"""Read prompts with ComfyUI's own prompt-weight parser and CLIP tokenizer (comfy.sd1_clip of the embedded
ComfyUI), in a subprocess, so the test process never imports ComfyUI's modules.

``parse_prompts(texts)`` returns, for each text, what ComfyUI makes of it:
- ``segments``: ``comfy.sd1_clip.token_weights(escape_important(text), 1.0)`` with ``unescape_important`` applied
  to each piece, as ``SDTokenizer.tokenize_with_weights`` does before tokenizing: ``[(text, weight), ...]``;
- ``token_weights``: the weight of every prompt token (start, end and padding left out) from
  ``SD1Tokenizer.tokenize_with_weights``, the call CLIPTextEncode makes for SD1.5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from devkit.comfy_server import COMFY_DIR

_SCRIPT = r"""
import json, sys
texts = json.load(sys.stdin)
sys.argv = ["comfy-prompt-parser", "--cpu"]  # ComfyUI reads its device from the command line
import comfy.options
comfy.options.enable_args_parsing()
from comfy.sd1_clip import SD1Tokenizer, escape_important, token_weights, unescape_important
tokenizer = SD1Tokenizer()
out = []
for text in texts:
    segments = [(unescape_important(s), w) for s, w in token_weights(escape_important(text), 1.0)]
    chunks = tokenizer.tokenize_with_weights(text, return_word_ids=True)["l"]
    weights = [w for chunk in chunks for _, w, word in chunk if word != 0]
    out.append({"segments": segments, "token_weights": weights})
sys.stdout.write("\n@@RESULT@@" + json.dumps(out))
"""


def parse_prompts(texts: list[str]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], input=json.dumps(texts), capture_output=True,
                          text=True, cwd=COMFY_DIR, env=dict(os.environ, PYTHONPATH=str(COMFY_DIR)), timeout=120)
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        raise RuntimeError(f"ComfyUI's prompt parser failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    results = json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])
    for r in results:
        r["segments"] = [(text, weight) for text, weight in r["segments"]]
    return results
