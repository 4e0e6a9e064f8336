"""Writes a random-weight ImageReward checkpoint with DiffSynth 1.1.9's own ImageReward class (BLIP's ViT-L, which
it hard-codes, and the MED text encoder of MED_CONFIG), in the file layout DiffSynth loads (safetensors).

    python tests/reference/build_diffsynth_imagereward.py MED_CONFIG BERT_FOLDER OUT.safetensors SEED
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

med_config, bert_folder, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from diffsynth.extensions.ImageQualityMetric.imagereward import ImageReward  # noqa: E402

torch.manual_seed(seed)
model = ImageReward(med_config=med_config, device="cpu", bert_model_path=bert_folder)
with torch.no_grad():  # ImageReward's own MLP init is nearly flat: spread it so that images differ clearly
    for name, p in model.mlp.layers.named_parameters():
        if name.endswith("weight"):
            p.normal_(0, 0.2)
state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
tmp = f"{out}.{os.getpid()}.tmp"
save_file(state, tmp)
os.replace(tmp, out)
sys.stdout.write("@@RESULT@@" + json.dumps({"keys": len(state)}) + "\n")
