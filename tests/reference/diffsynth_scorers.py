"""Scores images with DiffSynth 1.1.9's own ImageQualityMetric classes (the reference), run by
devkit/reference.py with DiffSynth's folder first on the path.

    python tests/reference/diffsynth_scorers.py JOB.json

JOB: {"scorer": class name in DiffSynth (PickScore, CLIPScore, HPScore_v2, MPScore, ImageRewardScore,
AestheticScore), "path": DiffSynth's path dict, "kwargs": extra constructor arguments, "images": [file],
"load_state": a safetensors file loaded into the scorer's ``model`` after construction (CLIPScore reads open_clip's
pickled .bin only; this gives it the safetensors file HPS reads, the same tensors),
"prompts": [one per image], "repeat": timing repeats}. Prints @@RESULT@@ {"scores", "seconds", "peak_rss_mb", ...}:
each image scored by the class's own ``score(image, prompt)`` call, one at a time, as its callers do.
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch
from PIL import Image

job = json.loads(open(sys.argv[1]).read())
torch.manual_seed(0)
from diffsynth.extensions.ImageQualityMetric import (AestheticScore, CLIPScore, HPScore_v2,  # noqa: E402
                                                     ImageRewardScore, MPScore, PickScore)
from diffsynth.extensions.ImageQualityMetric.open_clip import factory  # noqa: E402

# DiffSynth's wheel lacks open_clip's model_configs/: register open_clip's ViT-H-14.json
factory.add_model_config(Path(__file__).with_name("open_clip_configs"))

classes = {c.__name__: c for c in (AestheticScore, CLIPScore, HPScore_v2, ImageRewardScore, MPScore, PickScore)}
started = time.perf_counter()
scorer = classes[job["scorer"]](device="cpu", path=job["path"], **job.get("kwargs", {}))
if job.get("load_state"):
    from safetensors.torch import load_file

    scorer.model.load_state_dict(load_file(job["load_state"]))
load_seconds = time.perf_counter() - started
images = [Image.open(p).convert("RGB") for p in job["images"]]
result = {"load_seconds": load_seconds}
times = []
for _ in range(job.get("repeat", 1)):
    started = time.perf_counter()
    scores = [scorer.score(im, prompt)[0] for im, prompt in zip(images, job["prompts"])]
    times.append(time.perf_counter() - started)
result["scores"] = scores
result["seconds"] = min(times)
if hasattr(scorer, "model") and hasattr(scorer.model, "logit_scale"):
    result["logit_scale_exp"] = float(scorer.model.logit_scale.exp())
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
sys.stdout.write("@@RESULT@@" + json.dumps(result) + "\n")
