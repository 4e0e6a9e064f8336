"""Scores images with the publisher's hpsv2 package (1.2.0, the reference), run by devkit/reference.py with
the hpsv2 folder first on the path.

    python tests/reference/hpsv2_scores.py JOB.json

JOB: {"weights": an open_clip ViT-H-14 state dict (safetensors), "hps_version": "v2.0" or "v2.1", "groups": [{"prompt",
"images": [file]}], "bpe": open_clip's bpe_simple_vocab_16e6.txt.gz}.

The package hard-codes open_clip's ViT-H-14 with LAION's laion2B-s32B-b79K weights, which its open_clip copy fetches
from the hub (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, ``open_clip_pytorch_model.bin``), then loads the HPS
checkpoint over them, also fetched from the hub (``xswu/HPSv2``, ``HPS_v2_compressed.pt`` or
``HPS_v2.1_compressed.pt``: a pickled ``{"state_dict": ...}``). Nothing reaches the network here: the weights are
written once in the publisher's checkpoint format and placed under both names in a hub cache in a temporary folder
(HF_HUB_CACHE, offline; removed at the end), where huggingface_hub finds them. The package's wheel lacks the tokenizer's vocabulary
file, which it reads at import from its own folder: the job's is put there first. Each group's images are then scored
against its prompt by the package's public ``hpsv2.score(images, prompt, hps_version=...)`` (which loads the HPS
checkpoint again on every call). Prints @@RESULT@@ {"scores" (group after group), "seconds", "peak_rss_mb"}.
"""

import importlib.util
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

job = json.loads(Path(sys.argv[1]).read_text())
work = Path(tempfile.mkdtemp(prefix="hpsv2-reference-"))
hub = work / "hub"
os.environ["HF_HUB_CACHE"] = str(hub)  # before huggingface_hub is imported: it reads these once
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HPS_ROOT"] = str(work / "hpsv2")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

checkpoint = work / "checkpoint.pt"
torch.save({"state_dict": load_file(job["weights"])}, checkpoint)
REVISION = "0" * 40
for repo, names in (("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", ["open_clip_pytorch_model.bin"]),
                    ("xswu/HPSv2", ["HPS_v2_compressed.pt", "HPS_v2.1_compressed.pt"])):
    cached = hub / ("models--" + repo.replace("/", "--"))
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(REVISION)
    (cached / "snapshots" / REVISION).mkdir(parents=True)
    for name in names:
        os.link(checkpoint, cached / "snapshots" / REVISION / name)

vocabulary = Path(importlib.util.find_spec("hpsv2").submodule_search_locations[0], "src", "open_clip",
                  "bpe_simple_vocab_16e6.txt.gz")
if not vocabulary.is_file():
    tmp = vocabulary.with_name(f"{vocabulary.name}.{os.getpid()}.tmp")
    shutil.copy(job["bpe"], tmp)
    os.replace(tmp, vocabulary)

import hpsv2  # noqa: E402

try:
    started = time.perf_counter()
    scores = [float(s) for group in job["groups"]
              for s in hpsv2.score(group["images"], group["prompt"], hps_version=job["hps_version"])]
    seconds = time.perf_counter() - started
finally:
    shutil.rmtree(work)
sys.stdout.write("@@RESULT@@" + json.dumps({
    "scores": scores, "seconds": seconds,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\n")
