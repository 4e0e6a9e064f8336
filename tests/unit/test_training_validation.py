"""Validation by score (training/validation.py, training/memory.py), no ComfyUI: prompts and settings checked, each
epoch's mean loss, the epoch whose LoRA is output, the grid / graph / table drawn, every epoch saved by the job,
the memory of each phase measured."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aesthete.training.dataset import load_dataset
from aesthete.training.job import TrainingJob
from aesthete.training.lora_network import LoraNetwork
from aesthete.training.loop import TrainResult, TrainSettings
from aesthete.training.validation import (RECIPE_TEST_PROMPT, ValidationError, ValidationHistory, ValidationSpec,
                                          draw_score_graph, draw_validation_grid, parse_prompts)
from devkit.training_data import write_pattern_folder


def image(value: int, size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (value, value, value))


def history(*epochs: tuple[list[float], list[float] | None]) -> ValidationHistory:
    """One entry per (losses of the epoch, scores) pair; two grey images per epoch."""
    h, losses = ValidationHistory(), []
    for n, (epoch_losses, scores) in enumerate(epochs, start=1):
        losses += epoch_losses
        h.add(n, losses, [image(40 * n), image(40 * n + 20)], scores, f"run_epoch{n:04d}.safetensors")
    return h


def test_prompts_one_per_line_and_the_recipe_default():
    assert parse_prompts("a girl\n\n  二次元，甘雨  \n") == ("a girl", "二次元，甘雨")
    with pytest.raises(ValidationError, match="one prompt per line"):
        parse_prompts(" \n ")
    spec = ValidationSpec()
    assert spec.prompts == (RECIPE_TEST_PROMPT,) and "模糊" in spec.negative and spec.output == "best score"
    assert ValidationSpec(prompts=("a", "b"), images_per_prompt=3).images_per_epoch == 6


@pytest.mark.parametrize("change, message", [({"steps": 0}, "at least 1"), ({"width": 100}, "multiples of 8"),
                                             ({"output": "median"}, "best score, last epoch")])
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValidationError, match=message):
        ValidationSpec(**change).check()


def test_mean_loss_per_epoch_and_best_epoch():
    h = history(([1.0, 0.5], [5.0, 5.2]), ([0.4, 0.2], [6.0, 6.4]), ([0.1], [5.9, 6.0]))
    assert [e.mean_loss for e in h.epochs] == pytest.approx([0.75, 0.3, 0.1])
    assert h.choose().epoch == 2 and h.choose("last epoch").epoch == 3
    assert "best mean score 6.20" in h.why("best score") and "the last, as asked" in h.why("last epoch")
    table = h.table().splitlines()
    assert table[0] == "epoch\tmean loss\tmean score\tlora"
    assert table[2] == "2\t0.3000\t6.20\trun_epoch0002.safetensors *" and not table[3].endswith("*")


def test_a_tie_keeps_the_earlier_epoch_and_nan_scores_are_left_out():
    h = history(([1.0], [6.0]), ([0.5], [6.0]), ([0.4], [float("nan"), float("nan")]))
    assert h.choose().epoch == 1
    assert math.isnan(h.epochs[2].mean_score)


def test_without_a_predictor_the_last_epoch_is_output_and_shown_unscored():
    h = history(([1.0], None), ([0.5], None))
    assert h.choose().epoch == 2 and "connect an aesthetic predictor" in h.why("best score")
    assert h.table().splitlines()[1] == "1\t1.0000\t-\trun_epoch0001.safetensors"
    grid = draw_validation_grid(h)
    # the images are pasted untouched: no score label drawn on them
    assert np.array_equal(np.asarray(grid)[0:64, 96:160], np.asarray(image(40)))
    assert draw_score_graph(h, [1.0, 0.5]).size[1] == 400


def test_grid_rows_are_epochs_with_scores_drawn_on():
    h = history(([1.0], [5.0, 5.5]), ([0.5], [6.0, 6.5]))
    grid = draw_validation_grid(h)
    assert grid.size == (96 + 2 * 66, 2 * 66)
    pixels = np.asarray(grid)
    first_cell = pixels[0:64, 96:160]
    assert not np.array_equal(first_cell, np.asarray(image(40)))  # the score label is drawn on
    assert (first_cell[-8:] == 40).all()  # below the label, the image itself
    assert (pixels[66 + 60:66 + 64, 96:160] == 80).all()  # row 2 holds epoch 2's image
    big = ValidationHistory()
    big.add(1, [1.0], [image(10, 1024)], [5.0])
    assert draw_validation_grid(big).size == (96 + 256 + 2, 256 + 2)  # 1024 px images shrink to the cell


def test_score_graph_is_drawn_beside_the_loss_curve():
    h = history(([1.0, 0.8], [5.0, 5.5]), ([0.5, 0.4], [6.0, 6.5]))
    both = draw_score_graph(h, [1.0, 0.8, 0.5, 0.4])
    assert both.size == (640 + 480, 400)
    right = np.asarray(both)[:, 640:]
    assert (right == np.array([200, 30, 30])).all(axis=-1).any()  # the output epoch is circled in red


def test_a_judges_scorers_each_have_their_mean_per_epoch_in_the_table_and_graph():
    # style collapse: the aesthetic score rises while prompt alignment falls; the combination picks epoch 2
    h, losses = ValidationHistory(), []
    for n, (aesthetic, aligned, combined) in enumerate(((5.0, 30.0, 6.0), (6.0, 28.0, 6.5), (7.0, 5.0, 5.5)), 1):
        losses += [1.0 / n]
        h.add(n, losses, [image(40 * n), image(40 * n + 20)], [combined, combined], f"e{n}.safetensors",
              columns={"aesthetic": [aesthetic, aesthetic], "clipscore": [aligned, aligned]})
    assert h.choose().epoch == 2
    table = h.table().splitlines()
    assert table[0] == "epoch\tmean loss\tmean score\tmean aesthetic\tmean clipscore\tlora"
    assert table[3] == "3\t0.3333\t5.50\t7.0000\t5.0000\te3.safetensors"
    graph = draw_score_graph(h, losses)
    assert graph.size == (640 + 3 * 480, 400)  # the loss, the combination, then each scorer
    panels = np.asarray(graph)
    for k in range(3):  # every panel has the chosen epoch circled
        assert (panels[:, 640 + k * 480:640 + (k + 1) * 480] == np.array([200, 30, 30])).all(axis=-1).any()
    # a single scorer's columns are its scores: nothing extra is kept or drawn
    one = ValidationHistory()
    one.add(1, [1.0], [image(40)], [5.0], columns={"aesthetic": [5.0]})
    assert one.epochs[0].columns == {} and draw_score_graph(one, [1.0]).size == (640 + 480, 400)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(8, 8)


def test_every_epoch_is_saved_when_validation_keeps_them(tmp_path):
    write_pattern_folder(tmp_path / "data", count=2)
    job = TrainingJob(load_dataset(tmp_path / "data", resolution=64), TrainSettings(epochs=2), ("to_q",), "Kolors",
                      tmp_path / "loras", "runs/mine", keep_every_epoch=True)
    net = LoraNetwork.create(Block(), rank=2, alpha=1.0, targets=("to_q",))
    paths = [job.on_epoch_end(e, net, TrainResult(steps=e)) for e in (1, 2)]
    assert [p.name for p in paths] == ["mine_epoch0001.safetensors", "mine_epoch0002.safetensors"]
    assert all(p.is_file() for p in paths)


_PHASES_SCRIPT = """
import json
from aesthete.training.memory import PhaseMemory, resident_peak
mib = 1024 * 1024
earlier = bytearray(256 * mib)  # before the run: another node's peak in the same process
earlier[::4096] = b"x" * len(earlier[::4096])
del earlier
process_peak = resident_peak()
meter = PhaseMemory("cpu")
with meter.phase("encoding"):
    held = bytearray(320 * mib)  # above the earlier peak, then given back
    held[::4096] = b"x" * len(held[::4096])
    del held
with meter.phase("training"):
    with meter.phase("validation"):
        pass
print(json.dumps({"peaks": meter.peaks, "starts": meter.starts, "raised": meter.raised, "text": meter.describe(),
                  "process_peak": process_peak, "after": resident_peak()}))
"""


def test_memory_of_each_phase_is_measured_without_resetting_the_process_peak():
    """In a fresh process, as a training run's memory would be read: the phase that raised the process's peak shows
    it and its rise, the others say the peak they stayed under; the process's peak (VmHWM, which ComfyUI and other
    tools read) is never reset, so the peak reached before the run is still there after it."""
    import json
    import subprocess
    import sys

    out = json.loads(subprocess.run([sys.executable, "-c", _PHASES_SCRIPT], capture_output=True, text=True,
                                    check=True, timeout=120).stdout.strip().splitlines()[-1])
    peaks, starts, mib = out["peaks"], out["starts"], 1024 * 1024
    assert set(peaks) == {"encoding", "training", "validation"}
    assert out["after"] >= out["process_peak"] > 250 * mib  # not reset
    assert out["raised"] == {"encoding": True, "training": False, "validation": False}
    assert peaks["encoding"] - starts["encoding"] >= 300 * mib  # the 320 MiB show as a rise
    text = out["text"]
    assert text.startswith("memory (peak resident, whole process): encoding ") and "GiB (+" in text
    assert "training at most" in text and "validation at most" in text


_STEADY_SCRIPT = """
import json, resource, torch
from aesthete.training.memory import resident_now, steady_step_memory

def faults_per_step():
    counts = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(12 * 1024 * 1024)  # two 48 MiB buffers made and freed, as a step's conv buffers are
        float((x * 2)[0])
        del x
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return counts

outside = faults_per_step()
with steady_step_memory() as applies:
    inside = faults_per_step()
    held = resident_now()
after = resident_now()
print(json.dumps({"applies": applies, "outside": outside, "inside": inside, "held": held, "after": after}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_training_steps_reuse_the_memory_the_step_before_freed_and_give_it_back_after():
    """Opted in, in a fresh process: outside, every 48 MiB buffer is taken from the OS afresh (thousands of page faults each
    step); inside steady_step_memory the steps reuse what the one before freed (few faults, most steps none), and
    leaving gives it back."""
    import json
    import subprocess

    env = dict(os.environ, AESTHETE_HOLD_FREED_MEMORY="1")  # opted in
    out = json.loads(subprocess.run([sys.executable, "-c", _STEADY_SCRIPT], capture_output=True, text=True,
                                    check=True, timeout=120, env=env).stdout.strip().splitlines()[-1])
    if not out["applies"]:
        pytest.skip("not glibc: nothing is tuned")
    pages = 48 * 1024 * 1024 // 4096
    assert min(out["outside"][1:]) > pages, out
    # glibc's layout of the first steps varies (threads): a step now and then still takes one buffer afresh
    assert sum(out["inside"][1:]) < sum(out["outside"][1:]) / 3, out
    assert out["held"] - out["after"] > 40 * 1024 * 1024, out


def test_glibcs_thresholds_are_left_alone_unless_opted_in_and_on_a_gpu(monkeypatch):
    """glibc's thresholds cannot be read, so once set they cannot be put back: the trainer sets them only when the
    user opts in (AESTHETE_HOLD_FREED_MEMORY=1), and never for a run on a GPU."""
    from aesthete.training import memory

    calls = []
    monkeypatch.setattr(memory, "_glibc", lambda: calls.append(1))
    monkeypatch.delenv(memory.HOLD_FREED_MEMORY, raising=False)
    with memory.steady_step_memory("cpu") as applies:
        assert not applies
    monkeypatch.setenv(memory.HOLD_FREED_MEMORY, "1")
    with memory.steady_step_memory("cuda") as applies:
        assert not applies
    assert calls == []

