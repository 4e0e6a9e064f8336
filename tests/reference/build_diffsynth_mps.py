"""Writes a random-weight MPS checkpoint with DiffSynth 1.1.9's own MPS class (its CLIP from CLIP_FOLDER/config.json
and its cross model), in the file layout DiffSynth loads: ``model.*`` and ``cross_model.*`` tensors, safetensors.

    python tests/reference/build_diffsynth_mps.py CLIP_FOLDER OUT.safetensors SEED
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

clip_folder, out, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
from diffsynth.extensions.ImageQualityMetric.trainer.models import clip_model  # noqa: E402

torch.manual_seed(seed)
model = clip_model.CLIPModel(clip_folder, config_file=True)
with torch.no_grad():  # spread the projections so that images and prompts differ clearly
    model.model.visual_projection.weight.normal_(0, 0.5)
    model.model.text_projection.weight.normal_(0, 0.5)
state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
tmp = f"{out}.{os.getpid()}.tmp"
save_file(state, tmp)
os.replace(tmp, out)
sys.stdout.write("@@RESULT@@" + json.dumps({"keys": len(state)}) + "\n")
