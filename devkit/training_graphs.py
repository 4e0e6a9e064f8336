"""The Train LoRA part of a test graph, written once: LoRA Dataset (Folder) and Train LoRA with every input set to
the small, deterministic values the tests train with (64 px pattern images, center crops, rank 4, lr 1e-2, fp32, no
checkpoints), each test changing only what its story needs."""

from __future__ import annotations

DATASET = {"resolution": 64, "crop_mode": "center crop", "trigger_word": "ptn", "keep_first_tags": 1,
           "shuffle_tags": False, "caption_dropout": 0.0, "repeats": 1, "require_captions": True,
           "allow_outside_input": False, "seed": 0}
TRAIN = {"epochs": 2, "rank": 4, "alpha": 4.0, "learning_rate": 1e-2, "batch_size": 2, "grad_accumulation": 1,
         "optimizer": "AdamW", "lr_schedule": "constant", "warmup_steps": 0, "seed": 0, "precision": "fp32",
         "gradient_checkpointing": False, "target_layers": "attention q,k,v,out", "save_every_n_epochs": 0,
         "checkpoint_name": "aesthete_test/checkpoint", "resume_from": "[None]"}


def dataset_node(g, folder: str, **changes):
    """LoRA Dataset (Folder) reading ``folder`` under ComfyUI's input directory."""
    return g.node("AestheteLoraDataset", **{**DATASET, "folder": folder, **changes})


def train_node(g, model, clip, vae, dataset, **changes):
    """Train LoRA on ``model`` (an output of another node), ``changes`` over the tests' defaults (``validation=``
    an output of Validation Settings included)."""
    return g.node("AestheteTrainLora", model=model, clip=clip, vae=vae, dataset=dataset, **{**TRAIN, **changes})
