"""Scores images with the publisher's image-reward package (1.5, module ``ImageReward``: the reference), run by
devkit/reference.py with the imagereward folder first on the path.

    python tests/reference/imagereward_scores.py JOB.json

JOB: {"weights": an ImageReward state dict (safetensors), "med_config": its med_config.json, "bert": a folder named
bert-base-uncased (BERT's WordPiece vocabulary), "images": [file], "prompts": [one per image]}.

The package loads a checkpoint file by path (``ImageReward.load(path, med_config=...)``: a pickled state dict, as the
published ImageReward.pt is) and its BLIP tokenizer by the hub name ``bert-base-uncased``, which transformers reads
from a folder of that name in the working directory first: the weights are written in the publisher's format
to a temporary file, and the child runs in the bert folder's parent. Its load is not strict, so every tensor of the
model is checked against the file here. Each image is scored by the package's own ``model.score(prompt, path)``.
Prints @@RESULT@@ {"scores", "seconds", "peak_rss_mb"}.
"""

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

job = json.loads(Path(sys.argv[1]).read_text())
state = load_file(job["weights"])
with tempfile.TemporaryDirectory(prefix="imagereward-reference-") as work:
    checkpoint = Path(work) / "ImageReward.pt"
    torch.save(state, checkpoint)
    bert = Path(job["bert"])
    if bert.name != "bert-base-uncased":
        raise SystemExit(f"{bert}: the package asks for bert-base-uncased by that name")
    os.chdir(bert.parent)
    import ImageReward as RM

    model = RM.load(str(checkpoint), device="cpu", med_config=job["med_config"])
loaded = model.state_dict()
missing = sorted(set(loaded) - set(state))
unexpected = sorted(set(state) - set(loaded))
differ = sorted(k for k in set(loaded) & set(state) if not torch.equal(loaded[k], state[k].to(loaded[k].dtype)))
if missing or unexpected or differ:
    raise SystemExit(f"the package did not load the checkpoint as written: missing {missing[:5]}, "
                     f"unexpected {unexpected[:5]}, different {differ[:5]}")
del state, loaded
started = time.perf_counter()
with torch.no_grad():
    scores = [float(model.score(prompt, image)) for image, prompt in zip(job["images"], job["prompts"])]
sys.stdout.write("@@RESULT@@" + json.dumps({
    "scores": scores, "seconds": time.perf_counter() - started,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\n")
