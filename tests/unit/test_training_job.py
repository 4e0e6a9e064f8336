"""A Train LoRA run's bookkeeping (training/job.py): checkpoints every N epochs and on cancel, the metadata every
saved file carries, a resumed LoRA's epochs, a bad checkpoint name refused before any training. No ComfyUI."""

from __future__ import annotations

import pytest
from torch import nn

from aesthete.common.paths import OutsideRootError
from aesthete.training.dataset import load_dataset
from aesthete.training.job import TrainingJob
from aesthete.training.lora_network import LoraNetwork
from aesthete.training.loop import TrainResult, TrainSettings
from aesthete.training.save import read_lora
from aesthete.training.trainer import TrainingRun
from devkit.training_data import write_pattern_folder


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(8, 8)


@pytest.fixture()
def job(tmp_path) -> TrainingJob:
    write_pattern_folder(tmp_path / "data", count=2)
    dataset = load_dataset(tmp_path / "data", resolution=64)
    return TrainingJob(dataset, TrainSettings(epochs=4, save_every_n_epochs=2), ("to_q",), "SD15",
                       tmp_path / "loras", "styles/mine")


def network() -> LoraNetwork:
    return LoraNetwork.create(Block(), rank=2, alpha=1.0, targets=("to_q",))


def test_checkpoints_every_n_epochs_but_not_the_last(job):
    net = network()
    for epoch in range(1, 5):
        job.on_epoch_end(epoch, net, TrainResult(steps=epoch * 3))
    assert [p.name for p in job.saved] == ["mine_epoch0002.safetensors"]
    meta = read_lora(job.saved[0]).metadata
    assert meta["aesthete.epochs"] == "2" and meta["aesthete.steps"] == "6" and meta["aesthete.base_model"] == "SD15"
    assert meta["aesthete.dataset"] == "data" and meta["aesthete.resumed_from"] == ""


def test_a_cancelled_run_keeps_what_was_trained(job):
    lora = job.finish(TrainingRun(network(), TrainResult(steps=5, epochs_done=1, cancelled=True), 0))
    assert [p.name for p in job.saved] == ["mine_interrupted.safetensors"]
    assert lora.metadata["aesthete.steps"] == "5" and lora.metadata["aesthete.epochs"] == "1"
    nothing = job.finish(TrainingRun(network(), TrainResult(steps=0, cancelled=True), 0))
    assert len(job.saved) == 1 and nothing.metadata["aesthete.steps"] == "0"


def test_a_resumed_lora_counts_its_epochs_on(job, tmp_path):
    first = job.save_checkpoint(network(), 3, 9, "first")
    job.resume_from("styles/mine_first.safetensors", first)
    assert job.resume_epochs == 3 and job.last_epoch == 7 and set(job.resume) == set(read_lora(first).tensors)
    job.on_epoch_end(6, network(), TrainResult(steps=1))
    assert job.saved[-1].name == "mine_epoch0006.safetensors"
    assert read_lora(job.saved[-1]).metadata["aesthete.resumed_from"] == "styles/mine_first.safetensors"


@pytest.mark.parametrize("name", ["../x", "", "/etc/x"])
def test_a_checkpoint_name_outside_models_loras_is_refused_before_training(job, name):
    with pytest.raises(OutsideRootError, match="leads outside|give the name"):
        TrainingJob(job.dataset, job.settings, job.targets, "SD15", job.loras_root, name)
