"""Kolors folders as users have them, and every way one can be wrong: each gives an error that names the file and
says what to do (no ComfyUI here: this is the domain code the loader nodes call)."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from devkit.kolors_models import tiny_kolors

from aesthete.kolors import configs
from aesthete.kolors.download import FILE_PATTERNS, ensure_kolors, wanted_files
from aesthete.kolors.folder import KolorsFolderError, chatglm_config_for_file, find_kolors_folder, read_weights


@pytest.fixture()
def broken(tmp_path) -> Path:
    """A private copy of the tiny Kolors (repository layout, pickled text-encoder shards) to break."""
    folder = tmp_path / "Kolors"
    shutil.copytree(tiny_kolors("kolors", "fp16"), folder)
    return folder


@pytest.mark.parametrize("layout", ["kolors", "diffusers"])
def test_both_layouts_are_found_with_their_weights_and_tokenizer(layout):
    found = find_kolors_folder(tiny_kolors(layout, "fp16"))
    assert found.tokenizer_model.name == "tokenizer.model"
    assert found.unet_files and found.vae_files and found.text_encoder_files
    assert found.unet_config["encoder_hid_dim_type"] == "text_proj"
    assert found.layout == layout
    if layout == "kolors":
        assert all(f.suffix == ".bin" for f in found.text_encoder_files) and len(found.text_encoder_files) >= 2


def test_fp32_weights_are_preferred_when_asked_and_fp16_otherwise():
    folder = tiny_kolors("diffusers", "fp32")
    assert ".fp16." not in find_kolors_folder(folder, prefer_fp16=False).unet_files[0].name


def test_folder_without_text_encoder_names_what_is_missing(broken):
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(KolorsFolderError, match=r"no text_encoder/ folder.*download the missing part"):
        find_kolors_folder(broken)


def test_missing_shard_named_in_the_index_is_reported(broken):
    shard = sorted((broken / "text_encoder").glob("pytorch_model-*.bin"))[0]
    shard.unlink()
    with pytest.raises(KolorsFolderError, match=f"{shard.name}.*missing; download it again"):
        find_kolors_folder(broken)


def test_truncated_shard_is_a_clear_error(broken):
    shard = sorted((broken / "text_encoder").glob("pytorch_model-*.bin"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(KolorsFolderError, match=f"{shard.name}: cannot be read.*truncated, download it again"):
        read_weights(find_kolors_folder(broken).text_encoder_files)


def test_sdxl_unet_picked_as_kolors_is_refused(broken):
    config_path = broken / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("encoder_hid_dim", "encoder_hid_dim_type"):
        config.pop(key)
    config_path.write_text(json.dumps(config))
    with pytest.raises(KolorsFolderError, match="not Kolors \\(an SDXL UNet\\?\\)"):
        find_kolors_folder(broken)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_pickle_shard_that_would_run_code_is_refused_and_never_run(broken, tmp_path):
    marker = tmp_path / "pwned"
    shard = sorted((broken / "text_encoder").glob("pytorch_model-*.bin"))[0]
    with open(shard, "wb") as f:
        pickle.dump({"transformer.embedding.word_embeddings.weight": _RunsCode(marker)}, f)
    with pytest.raises(KolorsFolderError, match="refused to unpickle"):
        read_weights(find_kolors_folder(broken).text_encoder_files)
    assert not marker.exists()


def test_missing_tokenizer_says_where_to_put_it(broken):
    for path in broken.rglob("tokenizer.model"):
        path.unlink()
    with pytest.raises(KolorsFolderError, match="no tokenizer.model in tokenizer/ or text_encoder/"):
        find_kolors_folder(broken)


def test_offline_download_fails_fast_naming_files_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(KolorsFolderError) as err:
        ensure_kolors(tmp_path / "kolors")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert str(tmp_path / "kolors" / "Kolors") in message and "ModelScope" in message and "Hugging Face" in message
    assert all(p in message for p in FILE_PATTERNS)
    assert not list((tmp_path / "kolors").iterdir())  # no half-downloaded folder left behind


def test_download_lands_atomically_after_a_failed_source(tmp_path):
    source = tiny_kolors("kolors", "fp16")
    calls = []

    def fails(dest, progress):
        calls.append("modelscope")
        (dest / "unet").mkdir()  # a partial download
        raise ConnectionError("reset by peer")

    def works(dest, progress):
        calls.append("huggingface")
        shutil.copytree(source, dest, dirs_exist_ok=True)

    folder = ensure_kolors(tmp_path, fetchers=[("ModelScope", fails), ("Hugging Face", works)])
    assert calls == ["modelscope", "huggingface"]
    assert folder == tmp_path / "Kolors" and find_kolors_folder(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["Kolors"]


def test_unet_settings_follow_the_config_not_constants():
    real = json.loads((Path(configs.__file__).parent / "kolors_unet_config.json").read_text())
    settings = configs.unet_settings(real)
    assert settings["transformer_depth"] == [0, 0, 2, 2, 10, 10]
    assert settings["transformer_depth_output"] == [0, 0, 0, 2, 2, 2, 10, 10, 10]
    assert (settings["adm_in_channels"], settings["encoder_hid_dim"], settings["num_head_channels"]) == (5632, 4096, 64)
    tiny = json.loads((tiny_kolors("kolors", "fp16") / "unet" / "config.json").read_text())
    small = configs.unet_settings(tiny)
    assert small["model_channels"] == tiny["block_out_channels"][0]
    assert small["encoder_hid_dim"] == tiny["encoder_hid_dim"]


def test_scheduler_settings_are_the_kolors_schedule():
    settings = configs.sampling_settings(json.loads(
        (tiny_kolors("kolors", "fp16") / "scheduler" / "scheduler_config.json").read_text()))
    assert settings == {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.014, "timesteps": 1100}
    with pytest.raises(KolorsFolderError, match="v_prediction"):
        configs.sampling_settings({"prediction_type": "v_prediction"})


def test_single_chatglm_file_config_comes_from_its_weights(tmp_path):
    sd = read_weights(find_kolors_folder(tiny_kolors("kolors", "fp16")).text_encoder_files)
    config = chatglm_config_for_file(tmp_path / "chatglm3.safetensors", sd)
    layers = {k.split(".encoder.layers.")[1].split(".")[0] for k in sd if ".encoder.layers." in k}
    assert config["num_layers"] == len(layers)
    assert config["hidden_size"] == sd["transformer.embedding.word_embeddings.weight"].shape[1]
    quantized = dict(sd, **{"transformer.encoder.layers.0.mlp.dense_4h_to_h.weight_scale": torch.ones(1)})
    with pytest.raises(KolorsFolderError, match="quantized"):
        chatglm_config_for_file(tmp_path / "chatglm3-8bit.safetensors", quantized)


def test_only_the_files_the_loader_reads_are_downloaded():
    listing = ["README.md", "imgs/demo.png", "model_index.json", "unet/config.json",
               "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
               "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors", "scheduler/scheduler_config.json",
               "text_encoder/config.json", "text_encoder/modeling_chatglm.py", "text_encoder/tokenizer.model",
               "text_encoder/tokenizer_config.json", "text_encoder/pytorch_model.bin.index.json",
               *[f"text_encoder/pytorch_model-0000{i}-of-00007.bin" for i in range(1, 8)]]
    files = wanted_files(listing)
    assert "unet/diffusion_pytorch_model.safetensors" not in files  # the fp32 copy (10 GB) is not needed
    assert not any(f.endswith(".py") or f.startswith("imgs/") or f == "README.md" for f in files)
    assert len(files) == 9 + 7 and files[0] == "unet/config.json"
