"""Resume in the real ComfyUI: a run's epoch checkpoint carries its optimizer, schedule position and noise
(``<name>.training_state`` beside it), and Train LoRA resumed from it gives the losses the run itself went on with."""

from __future__ import annotations

import pytest
from devkit.graph import new_graph
from devkit.training_graphs import dataset_node, train_node
from devkit.training_data import write_pattern_folder
from safetensors import safe_open

pytestmark = pytest.mark.comfy

DATASET = "aesthete_resume_pattern"
TRAIN = {"seed": 5}


def train_graph(ckpt: str, **train):
    g = new_graph()
    loader = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    data = dataset_node(g, DATASET, shuffle_tags=True)
    node = train_node(g, loader.out(0), loader.out(1), loader.out(2), data.out(0), **{**TRAIN, **train})
    g.node("AestheteLossGraph", loss=node.out(2), smoothing=0.5)
    return g, node


def test_resumed_checkpoint_continues_the_runs_loss_curve(comfy, comfy_server, sd15_ckpt):
    write_pattern_folder(comfy_server.input_dir / DATASET, count=4)
    g, node = train_graph(sd15_ckpt, epochs=4, save_every_n_epochs=2, checkpoint_name="aesthete_resume/run",
                          resume_from="[None]")
    whole = comfy.run(g.finalize(), timeout=480).node_output(node.id)["loss"]
    assert len(whole) == 8  # 4 images, batches of 2: two steps per epoch
    checkpoint = comfy_server.models_dir / "loras" / "aesthete_resume" / "run_epoch0002.safetensors"
    state = checkpoint.with_name("run_epoch0002.training_state")
    assert checkpoint.is_file() and state.is_file()
    with safe_open(str(state), "pt") as f:
        assert "generator" in f.keys() and any(k.endswith(".exp_avg_sq") for k in f.keys())
    g, node = train_graph(sd15_ckpt, epochs=2, save_every_n_epochs=0, checkpoint_name="aesthete_resume/resumed",
                          resume_from="aesthete_resume/run_epoch0002.safetensors")
    resumed = comfy.run(g.finalize(), timeout=480).node_output(node.id)["loss"]
    assert resumed == pytest.approx(whole[4:], rel=1e-5, abs=1e-6)
