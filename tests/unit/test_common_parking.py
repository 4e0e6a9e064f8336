"""Weights parked on disk (common/parking.py), as Train LoRA parks the text encoder and the VAE on the CPU: the RAM
is given back, the module computes exactly as before, nothing written to a parked tensor is lost, and a folder
without room leaves the module in RAM with a warning. No ComfyUI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import namedtuple

import pytest
import torch
from torch import nn

from aesthete.common import parking
from aesthete.common.parking import park_on_disk


def encoder() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.LayerNorm(256), nn.Linear(256, 64))
    m.register_buffer("scale", torch.linspace(0.5, 1.5, 64))
    m[3].weight.requires_grad_(False)
    return m


def run(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(x) * m.scale


def test_a_parked_module_computes_exactly_as_before_and_leaves_no_file(tmp_path):
    m, x = encoder(), torch.randn(3, 64)
    before = run(m, x)
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    parked = park_on_disk(m, tmp_path, name="text-encoder")
    assert parked is not None and parked.tensors == 7 and parked.kept == 0
    assert parked.nbytes == sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    assert torch.equal(run(m, x), before)
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(isinstance(p, nn.Parameter) for p in m.parameters())
    if sys.platform != "win32":
        assert list(tmp_path.iterdir()) == []  # deleted once mapped: its space goes with the module
    assert "parked on disk" in parked.describe()


def test_tensors_sharing_memory_still_share_it_once_parked(tmp_path):
    m = encoder()
    m.register_buffer("first_rows", m[0].weight[:4])  # a view into a parameter, as tied weights are
    park_on_disk(m, tmp_path)
    assert m.first_rows.untyped_storage().data_ptr() == m[0].weight.untyped_storage().data_ptr()
    with torch.no_grad():
        m[0].weight[0, 0] = 42.0
    assert m.first_rows[0, 0].item() == 42.0


def test_a_write_to_a_parked_tensor_is_kept_through_release(tmp_path):
    m, x = encoder(), torch.randn(3, 64)
    parked = park_on_disk(m, tmp_path)
    with torch.no_grad():
        m[0].weight.mul_(2)
    changed = run(m, x)
    parked.release()
    assert torch.equal(run(m, x), changed)


def test_parking_again_writes_nothing_new(tmp_path):
    m = encoder()
    park_on_disk(m, tmp_path)
    again = park_on_disk(m, tmp_path)
    assert again.tensors == 0 and again.reused == 7 and again.path is None
    assert again.describe().startswith("already parked")


def test_tensors_not_on_the_cpu_are_left_where_they_are(tmp_path):
    m = encoder()
    m.register_buffer("elsewhere", torch.empty(8, device="meta"))
    parked = park_on_disk(m, tmp_path)
    assert parked.kept == 1 and parked.tensors == 7
    assert m.elsewhere.device.type == "meta"


def test_a_folder_without_room_leaves_the_module_in_ram_with_a_warning(tmp_path, monkeypatch, caplog):
    m, x = encoder(), torch.randn(3, 64)
    before = [p.data_ptr() for p in m.parameters()]
    monkeypatch.setattr(parking.shutil, "disk_usage", lambda _: namedtuple("U", "total used free")(1, 1, 1024))
    with caplog.at_level(logging.WARNING, logger="aesthete"):
        assert park_on_disk(m, tmp_path, name="VAE") is None
    assert "VAE stays in RAM" in caplog.text and "GiB free" in caplog.text
    assert [p.data_ptr() for p in m.parameters()] == before
    assert run(m, x).shape == (3, 64)


def test_a_folder_that_cannot_be_written_leaves_the_module_in_ram(tmp_path, caplog):
    (tmp_path / "temp").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="aesthete"):
        assert park_on_disk(encoder(), tmp_path / "temp", name="text-encoder") is None
    assert "text-encoder stays in RAM: cannot write to" in caplog.text


_MEMORY_SCRIPT = """
import json, sys, torch
from torch import nn
from aesthete.common.parking import park_on_disk
from aesthete.training.memory import resident_now
mib = 1024 * 1024
m = nn.Linear(4096, 8192)  # 128 MiB of weights
x = torch.randn(1, 4096)
with torch.no_grad():
    before = m(x)
r0 = resident_now()
parked = park_on_disk(m, sys.argv[1])
r1 = resident_now()
with torch.no_grad():
    same = torch.equal(m(x), before)
r2 = resident_now()
released = parked.release()
r3 = resident_now()
print(json.dumps({"parked": (r0 - r1) / mib, "read_back": (r2 - r1) / mib, "released": released,
                  "given_back": (r2 - r3) / mib, "same": same}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory is read from /proc")
def test_parking_gives_the_ram_back_and_release_gives_back_what_was_read_again(tmp_path):
    """In a fresh process: 128 MiB of weights parked leave the resident memory, come back when used, and go again
    on release."""
    out = json.loads(subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path)], capture_output=True,
                                    text=True, check=True, timeout=120).stdout.strip().splitlines()[-1])
    assert out["same"]
    assert out["parked"] > 120, out
    assert out["read_back"] > 120, out
    assert out["released"] and out["given_back"] > 120, out
