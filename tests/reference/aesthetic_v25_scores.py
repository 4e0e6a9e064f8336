"""Scores images with the publisher's aesthetic-predictor-v2-5 package (the reference), run by
devkit/reference.py with the aesthetic_v25 folder (the package, transformers 4.49) first on the path.

    python tests/reference/aesthetic_v25_scores.py HEAD.pth SIGLIP_FOLDER REPEAT IMAGE...

As the package's README scores: ``convert_v2_5_from_siglip``, the processor on one image, ``model(pixels).logits``.
Prints @@RESULT@@ {"scores", "seconds", "peak_rss_mb"}.
"""

import json
import resource
import sys
import time

import torch
from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip
from PIL import Image

head, siglip, repeat, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
model, processor = convert_v2_5_from_siglip(predictor_name_or_path=head, encoder_model_name=siglip)
images = [Image.open(p).convert("RGB") for p in paths]
times = []
for _ in range(repeat):
    started = time.perf_counter()
    scores = []
    for image in images:
        pixels = processor(images=image, return_tensors="pt").pixel_values
        with torch.inference_mode():
            scores.append(model(pixels).logits.squeeze().float().item())
    times.append(time.perf_counter() - started)
sys.stdout.write("@@RESULT@@" + json.dumps({
    "scores": scores, "seconds": min(times),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\n")
