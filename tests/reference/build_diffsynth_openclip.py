"""Writes a random-weight open_clip ViT-H-14 state dict with DiffSynth 1.1.9's own open_clip copy (the class HPSv2's
and CLIP's files are loaded into), as fp16 safetensors like the published HPS_v2*_compressed files.

    python tests/reference/build_diffsynth_openclip.py OUT.safetensors SEED

DiffSynth's wheel lacks open_clip's model_configs/ folder, so ViT-H-14.json (open_clip's own config) is registered
from tests/reference/open_clip_configs first.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

out, seed = sys.argv[1], int(sys.argv[2])
from diffsynth.extensions.ImageQualityMetric.open_clip import factory  # noqa: E402

factory.add_model_config(Path(__file__).with_name("open_clip_configs"))
torch.manual_seed(seed)
model = factory.create_model("ViT-H-14", precision="fp32", device="cpu")
state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
del model
tmp = f"{out}.{os.getpid()}.tmp"
save_file(state, tmp)
os.replace(tmp, out)
sys.stdout.write("@@RESULT@@" + json.dumps({"keys": len(state)}) + "\n")
