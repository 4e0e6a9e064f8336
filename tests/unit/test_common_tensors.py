"""Model files read safely and lazily (``aesthete.common.tensors``): LazyWeights hands out the same tensors as a whole
read, one at a time, and a broken file is an error naming it before anything is read. No ComfyUI."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from devkit.kolors_models import tiny_kolors

from aesthete.common.files import write_safetensors
from aesthete.common.tensors import (REDOWNLOAD, LazyWeights, TensorFileError, read_tensor_file,
                                     safetensors_header)
from aesthete.kolors.folder import find_kolors_folder


@pytest.mark.parametrize("component", ["unet_files", "text_encoder_files"])
def test_lazy_weights_give_the_same_tensors_one_at_a_time(component):
    files = getattr(find_kolors_folder(tiny_kolors("kolors", "fp16")), component)  # safetensors / pickled shards
    eager = {k: v for path in files for k, v in read_tensor_file(path, "unsafe", REDOWNLOAD).items()}
    lazy = LazyWeights(files)
    assert sorted(lazy) == sorted(eager)
    for key, tensor in eager.items():
        assert lazy[key].device.type == "meta" and lazy[key].shape == tensor.shape and lazy[key].dtype == tensor.dtype
        assert torch.equal(lazy.take(key), tensor), key
        assert key not in lazy
    assert len(lazy) == 0


def test_truncated_file_is_a_clear_error_before_anything_is_read(tmp_path):
    unet = tmp_path / "unet.safetensors"
    shutil.copyfile(find_kolors_folder(tiny_kolors("kolors", "fp16")).unet_files[0], unet)
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size - 100])
    with pytest.raises(TensorFileError, match=f"{unet.name}: not a readable safetensors file.*truncated"):
        LazyWeights([unet])


def test_header_gives_every_tensor_place_without_reading_it(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"a": torch.ones(2, 3, dtype=torch.float16), "b": torch.zeros(4)}, {"note": "x"})
    index = safetensors_header(path, REDOWNLOAD)
    assert sorted(index) == ["a", "b"]  # the metadata is not a tensor
    assert index["a"][:2] == (torch.float16, [2, 3]) and index["b"][:2] == (torch.float32, [4])
    assert {index["a"][3] - index["a"][2], index["b"][3] - index["b"][2]} == {12, 16}


def test_pickle_that_is_not_a_dictionary_of_tensors_is_refused(tmp_path):
    path = tmp_path / "w.bin"
    torch.save([torch.ones(1)], path)
    with pytest.raises(TensorFileError, match="w.bin: expected a dictionary of tensors"):
        LazyWeights([path])
    with open(path, "wb") as f:
        pickle.dump({"a": print}, f)
    with pytest.raises(TensorFileError, match="refused to unpickle"):
        LazyWeights([path])
