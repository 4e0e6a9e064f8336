"""A Kolors model on disk: the folder layouts users have, their config files, and their weights read safely.

Two layouts are recognised, both with ``unet/``, ``vae/``, ``scheduler/`` and ``text_encoder/``:

- ``kolors``: the ``Kwai-Kolors/Kolors`` repository as ModelScope, Hugging Face and DiffSynth-Studio's downloader
  leave it. The ChatGLM3 text encoder is a set of pickled ``pytorch_model-0000N-of-0000M.bin`` shards with their
  index, and its tokenizer (``tokenizer.model``, ``tokenizer_config.json``) sits inside ``text_encoder/``.
- ``diffusers``: ``Kolors-diffusers`` as ``KolorsPipeline.save_pretrained`` writes it: safetensors weights (maybe
  sharded), ``tokenizer/`` beside ``text_encoder/``, ``model_index.json``.

Every size comes from the folder's own ``config.json`` files. Pickled files are only read with
``torch.load(weights_only=True)``, which refuses any object that could run code.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..common.tensors import LazyWeights, TensorFileError, read_tensor_file

log = logging.getLogger("aesthete.kolors")

COMPONENTS = ("unet", "vae", "scheduler", "text_encoder")
TOKENIZER_FILE = "tokenizer.model"
# weight file stems diffusers and the Kolors repository use, per component
_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "pytorch_model"}
_TE_SAFE_STEM = "model"  # transformers' safetensors name


class KolorsFolderError(ValueError):
    """A folder is not a usable Kolors model; the message names the file and what to do."""


@dataclass
class KolorsFolder:
    root: Path
    layout: str  # "kolors" or "diffusers"
    unet_files: list[Path]
    vae_files: list[Path]
    text_encoder_files: list[Path]
    tokenizer_model: Path
    configs: dict[str, dict] = field(default_factory=dict)  # unet, vae, scheduler, text_encoder

    @property
    def unet_config(self) -> dict:
        return self.configs["unet"]

    @property
    def vae_config(self) -> dict:
        return self.configs["vae"]

    @property
    def scheduler_config(self) -> dict:
        return self.configs["scheduler"]

    @property
    def text_encoder_config(self) -> dict:
        return self.configs["text_encoder"]


def looks_like_kolors(folder: Path) -> bool:
    """Cheap check used to list folders: the four component folders exist."""
    return all((folder / c).is_dir() for c in COMPONENTS)


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise KolorsFolderError(f"{path}: missing; the Kolors folder is incomplete. Download the whole "
                                f"Kwai-Kolors/Kolors repository folder again, or let the loader download it") from None
    except (OSError, json.JSONDecodeError) as e:
        raise KolorsFolderError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict):
        raise KolorsFolderError(f"{path}: expected a JSON object")
    return data


def _weight_files(folder: Path, stem: str, prefer_fp16: bool) -> list[Path]:
    """The weight files of one component: a single file or the shards named by an index, safetensors before
    pickle, the fp16 variant first when asked for (else the full-precision file first)."""
    variants = ("fp16", "") if prefer_fp16 else ("", "fp16")
    for ext, index_ext in (("safetensors", "safetensors.index.json"), ("bin", "bin.index.json")):
        for variant in variants:
            suffix = f".{variant}" if variant else ""
            single = folder / f"{stem}{suffix}.{ext}"
            if single.is_file():
                return [single]
            index = folder / f"{stem}{suffix}.{index_ext}"
            if index.is_file():
                weight_map = read_json(index).get("weight_map", {})
                names = sorted(set(weight_map.values()))
                if not names:
                    raise KolorsFolderError(f"{index}: its weight_map is empty")
                missing = [n for n in names if not (folder / n).is_file()]
                if missing:
                    raise KolorsFolderError(f"{folder}: {', '.join(missing)} listed in {index.name} "
                                            f"{'is' if len(missing) == 1 else 'are'} missing; download "
                                            f"{'it' if len(missing) == 1 else 'them'} again")
                return [folder / n for n in names]
    return []


def find_kolors_folder(root: str | os.PathLike, prefer_fp16: bool = True) -> KolorsFolder:
    """Recognise a Kolors folder and find its files; a clear error for everything that is missing."""
    root = Path(root)
    if not root.is_dir():
        raise KolorsFolderError(f"{root}: no such folder")
    for component in COMPONENTS:
        if not (root / component).is_dir():
            raise KolorsFolderError(
                f"{root}: no {component}/ folder. A Kolors folder holds unet/, vae/, scheduler/ and text_encoder/ "
                f"(the Kwai-Kolors/Kolors repository, or Kolors-diffusers); download the missing part into it")
    configs = {"unet": read_json(root / "unet" / "config.json"),
               "vae": read_json(root / "vae" / "config.json"),
               "scheduler": read_json(root / "scheduler" / "scheduler_config.json"),
               "text_encoder": read_json(root / "text_encoder" / "config.json")}
    check_kolors_unet_config(configs["unet"], root / "unet" / "config.json")

    unet = _weight_files(root / "unet", _STEMS["unet"], prefer_fp16)
    vae = _weight_files(root / "vae", _STEMS["vae"], prefer_fp16)
    te = (_weight_files(root / "text_encoder", _TE_SAFE_STEM, prefer_fp16)
          or _weight_files(root / "text_encoder", _STEMS["text_encoder"], prefer_fp16))
    for component, files in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        if not files:
            raise KolorsFolderError(f"{root / component}: no weight file (diffusion_pytorch_model.safetensors, "
                                    f"model.safetensors, pytorch_model.bin or their shards with an index); "
                                    f"download the {component} weights into it")

    # Kolors's own scripts read the tokenizer from text_encoder/; diffusers writes tokenizer/ beside it
    candidates = [root / "tokenizer" / TOKENIZER_FILE, root / "text_encoder" / TOKENIZER_FILE]
    tokenizer = next((p for p in candidates if p.is_file()), None)
    if tokenizer is None:
        raise KolorsFolderError(f"{root}: no {TOKENIZER_FILE} in tokenizer/ or text_encoder/; put the ChatGLM3 "
                                f"tokenizer file of Kwai-Kolors/Kolors (text_encoder/{TOKENIZER_FILE}) there")
    # the repository keeps ChatGLM3 as pickled shards; diffusers' save_pretrained writes safetensors
    layout = "kolors" if all(f.suffix == ".bin" for f in te) else "diffusers"
    return KolorsFolder(root, layout, unet, vae, te, tokenizer, configs)


def check_kolors_unet_config(config: dict, path: Path) -> None:
    """Kolors is the SDXL UNet plus a text projection; an SDXL UNet picked as Kolors gets a clear error."""
    if config.get("encoder_hid_dim_type") != "text_proj" or not config.get("encoder_hid_dim"):
        raise KolorsFolderError(
            f"{path}: this UNet has no text projection (encoder_hid_dim_type 'text_proj'), so it is not Kolors "
            f"(an SDXL UNet?). Load SDXL with ComfyUI's own loaders, and pick a Kwai-Kolors/Kolors folder here")
    if config.get("addition_embed_type") != "text_time":
        raise KolorsFolderError(f"{path}: addition_embed_type is {config.get('addition_embed_type')!r}, not "
                                f"'text_time' as in Kolors")


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of a component's weight files. Pickled shards only with weights_only (never code)."""
    sd: dict[str, torch.Tensor] = {}
    for path in files:
        sd.update(read_weight_file(path))
    return sd


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_tensor_file(path, "Download the file again from Kwai-Kolors/Kolors",
                                "it may be truncated, download it again")
    except TensorFileError as e:
        raise KolorsFolderError(str(e)) from e


def chatglm3_weights(files: list[Path]) -> LazyWeights:
    """A ChatGLM3 text encoder's weight files, each tensor read when taken (``common.tensors.LazyWeights``):
    safetensors, pickled shards, or a ChatGLM3 ``.gguf`` file, whose tensors come under ChatGLM3's names, each
    dequantized when taken (``kolors.gguf_file``)."""

    def gguf(path: Path):
        from .gguf_file import ChatGLM3GGUF, GGUFError

        try:
            return ChatGLM3GGUF(path)
        except GGUFError as e:
            raise KolorsFolderError(str(e)) from e

    return LazyWeights(files, readers={".gguf": gguf})


# ChatGLM3-6B as Kolors ships it: what a single text-encoder file needs beyond the sizes its weights show
CHATGLM3_DEFAULTS = {"num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696, "kv_channels": 128,
                     "num_attention_heads": 32, "multi_query_attention": True, "multi_query_group_num": 2,
                     "padded_vocab_size": 65024, "seq_length": 32768, "layernorm_epsilon": 1e-5, "rmsnorm": True,
                     "apply_residual_connection_post_layernorm": False, "post_layer_norm": True,
                     "add_bias_linear": False, "add_qkv_bias": True, "original_rope": True}
_LAYER_KEY = ".encoder.layers."


def chatglm_config_for_file(path: Path, sd: dict[str, torch.Tensor]) -> dict:
    """The config of a single ChatGLM3 file: a ``config.json`` beside it if there is one, else ChatGLM3-6B's with
    the sizes the weights show (layers, width, feed-forward width, vocabulary, key/value groups)."""
    beside = Path(path).parent / "config.json"
    if beside.is_file():
        config = read_json(beside)
        if "num_layers" in config and "ffn_hidden_size" in config:
            return config
    if any(k.endswith(("weight_scale", ".scale", "qweight")) for k in sd):
        raise KolorsFolderError(f"{path}: a quantized (4/8-bit) ChatGLM3 file; use the fp16 file "
                                f"(chatglm3-fp16.safetensors) or the Kolors text_encoder folder")
    embed = [k for k in sd if k.endswith("embedding.word_embeddings.weight")]
    if not embed:
        raise KolorsFolderError(f"{path}: not a ChatGLM3 file (no embedding.word_embeddings.weight); pick Kolors's "
                                f"text encoder (chatglm3-fp16.safetensors or the text_encoder shards)")
    config = dict(CHATGLM3_DEFAULTS)
    vocab, hidden = sd[embed[0]].shape
    layers = {int(k.split(_LAYER_KEY)[1].split(".")[0]) for k in sd if _LAYER_KEY in k}
    ffn = next(v.shape[1] for k, v in sd.items() if k.endswith("mlp.dense_4h_to_h.weight"))
    qkv = next(v.shape[0] for k, v in sd.items() if k.endswith("self_attention.query_key_value.weight"))
    head = config["kv_channels"]
    config.update(padded_vocab_size=vocab, hidden_size=hidden, num_layers=len(layers), ffn_hidden_size=ffn,
                  num_attention_heads=hidden // head, multi_query_group_num=(qkv - hidden) // (2 * head))
    return config


def find_tokenizer_for_file(path: Path, kolors_folders: list[Path]) -> Path:
    """ChatGLM3's tokenizer.model for a single text-encoder file: beside it, else in a Kolors folder."""
    candidates = [Path(path).parent / TOKENIZER_FILE, Path(path).parent / "tokenizer" / TOKENIZER_FILE]
    for folder in kolors_folders:
        candidates += [folder / "text_encoder" / TOKENIZER_FILE, folder / "tokenizer" / TOKENIZER_FILE]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise KolorsFolderError(f"{path}: no ChatGLM3 tokenizer found; put tokenizer.model (from Kwai-Kolors/Kolors "
                                f"text_encoder/) beside the file, or keep a Kolors folder in models/kolors")
    return found
