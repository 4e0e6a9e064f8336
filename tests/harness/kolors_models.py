"""Tiny random-weight Kolors models for the tests, cached in tests/.models (git-ignored).

Every component is built and saved with diffusers' own Kolors reference classes (UNet2DConditionModel,
AutoencoderKL, EulerDiscreteScheduler, the ChatGLM3 model and tokenizer under diffusers.pipelines.kolors) with a
fixed seed, and laid out on disk as the real model is distributed:

- layout "kolors": the ``Kwai-Kolors/Kolors`` weights repository (what ModelScope, Hugging Face and DiffSynth leave on
  disk). ``model_index.json``; ``unet/`` and ``vae/`` with ``config.json`` and
  ``diffusion_pytorch_model.fp16.safetensors`` (variant "fp16", the repository's names) or
  ``diffusion_pytorch_model.safetensors`` (variant "fp32", the name DiffSynth's downloader uses);
  ``scheduler/scheduler_config.json``; ``text_encoder/`` with ``config.json``, pickled
  ``pytorch_model-0000N-of-0000M.bin`` shards (``transformer.*`` keys, as ChatGLM3's own checkpoint),
  ``pytorch_model.bin.index.json`` and the tokenizer files (``tokenizer.model``, ``tokenizer_config.json``,
  ``vocab.txt``: Kolors's own scripts read the tokenizer from ``text_encoder/``); ``tokenizer/`` holds the same
  tokenizer files, as the real repository does.
- layout "diffusers": ``KolorsPipeline.save_pretrained`` (the ``Kwai-Kolors/Kolors-diffusers`` layout): safetensors
  everywhere, ``tokenizer/`` beside ``text_encoder/``, fp16 files named ``*.fp16.safetensors``.

The tiny shapes keep the real model's structure where a loader could get it wrong: the UNet has the SDXL/Kolors
module layout (text_proj ``encoder_hid_proj``, text_time ``add_embedding`` whose input is the ChatGLM hidden size
plus 6 * 256), one head width on every level (ComfyUI's UNetModel takes one ``num_head_channels``), transformer
depths that differ per level; the VAE downsamples 8x with 4 latent channels; ChatGLM3 uses multi-query attention
with qkv bias and the original rope. No weight is left at a trivial value (zeros, ones), so a loader that drops or
misnames one tensor gives different numbers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness.factories import _cached

# bump when a Kolors factory changes, so stale cached folders are rebuilt
KOLORS_FACTORY_VERSION = "1"
SEED = 0

# the recipe's prompt and negative list, plus some English, so the tokenizer covers what the tests type
RECIPE_PROMPT = "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"

TINY_CHATGLM = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, kv_channels=16, num_attention_heads=4,
                    multi_query_group_num=2, seq_length=256, original_rope=True, add_qkv_bias=True,
                    multi_query_attention=True, use_cache=False, add_bias_linear=False, apply_residual_connection_post_layernorm=False,
                    apply_query_key_layer_scaling=True, attention_softmax_in_fp32=True, bias_dropout_fusion=True,
                    fp32_residual_connection=False, layernorm_epsilon=1e-5, post_layer_norm=True, rmsnorm=True,
                    torch_dtype="float16")
TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    # diffusers' attention_head_dim is the number of heads per level (as in SDXL's [5, 10, 20]); 2 and 4 heads on
    # 32 and 64 channels give 16 channels per head everywhere, the mid block included (it uses the last entry)
    attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 2),  # the mid block takes the last entry, as SDXL's 10
    cross_attention_dim=32, use_linear_projection=True, norm_num_groups=32,
    encoder_hid_dim_type="text_proj", encoder_hid_dim=TINY_CHATGLM["hidden_size"],
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=TINY_CHATGLM["hidden_size"] + 6 * 256,
    flip_sin_to_cos=True, freq_shift=0, act_fn="silu", upcast_attention=False,
)
# ComfyUI's VAE: ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, z_channels=4 (GroupNorm there has 32 groups, so every
# width is a multiple of 32); four levels give the 8x downscale
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=64, scaling_factor=0.13025, force_upcast=True, act_fn="silu",
)
# Kolors's scheduler/scheduler_config.json (tests/fixtures/kolors/scheduler_config.json is the full file)
KOLORS_SCHEDULER = dict(
    num_train_timesteps=1100, beta_start=0.00085, beta_end=0.014, beta_schedule="scaled_linear",
    prediction_type="epsilon", interpolation_type="linear", timestep_spacing="leading", steps_offset=1,
    use_karras_sigmas=False, clip_sample=False, sample_max_value=1.0, set_alpha_to_one=False, skip_prk_steps=True,
)
TEXT_ENCODER_SHARDS = 2  # the real repository has 7; any M >= 2 exercises the index


def tiny_kolors(layout: str = "kolors", variant: str = "fp16") -> Path:
    """A random-weight Kolors folder (see the module docstring for ``layout``); ``variant`` "fp16" or "fp32" is the
    dtype of the saved weights. Built once (a few seconds) and cached; safe to call from parallel test processes."""
    if layout not in ("kolors", "diffusers") or variant not in ("fp16", "fp32"):
        raise ValueError(f"unknown tiny Kolors layout/variant {layout!r}/{variant!r}")
    path = _kolors_cached(f"kolors-{layout}-{variant}")
    if (path / "model_index.json").exists():
        return path
    with _building(path) as tmp:
        if layout == "kolors":
            _save_kolors_layout(tmp, variant)
        else:
            _save_diffusers_layout(tmp, variant)
    return path


def _kolors_cached(name: str) -> Path:
    return _cached(f"{name}-k{KOLORS_FACTORY_VERSION}")


class _building:
    """Build into a private temporary folder, then rename it into place atomically (parallel runs may race: the
    first one wins, the others drop their copy)."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            os.replace(self.tmp, self.path)
        except OSError:  # another process finished first
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


# --- components -------------------------------------------------------------------------------------------------

def _tokenizer_lines() -> list[str]:
    from aesthete.prompts.negative import RECIPE_NEGATIVE_EN, RECIPE_NEGATIVE_ZH

    return [RECIPE_PROMPT, RECIPE_NEGATIVE_ZH, RECIPE_NEGATIVE_EN,
            "二次元, genshin impact, ganyu, 蓝发少女, 白色背景, masterpiece, best quality",
            "a girl with blue hair on a white background, anime style, highly detailed",
            "a photo of a cat sitting on a red chair, soft light, 35mm",
            "风景, 山, 水, 云, 日落, 城市, 夜晚, 猫, 狗, 红色, 蓝色, 绿色, 黄色, 黑色",
            "The quick brown fox jumps over the lazy dog. 0123456789 (score:1.2) [tag] {x}"] * 4


def build_tokenizer_model(folder: Path) -> Path:
    """Train a small sentencepiece BPE model (ChatGLM3's tokenizer kind) and write ``folder/tokenizer.model``.
    byte_fallback keeps characters the training text lacks from becoming <unk>."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_lines()), model_writer=model, model_type="bpe", vocab_size=400,
        character_coverage=1.0, byte_fallback=True, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        split_digits=True, remove_extra_whitespaces=False,
        # no NFKC: ChatGLM3 keeps full-width punctuation (the recipe's "，") as its own tokens
        normalization_rule_name="identity")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "tokenizer.model"
    out.write_bytes(model.getvalue())
    return out


def build_tokenizer(folder: Path):
    """The ChatGLM3 tokenizer over a freshly trained tokenizer.model in ``folder``."""
    from diffusers.pipelines.kolors.tokenizer import ChatGLMTokenizer

    return ChatGLMTokenizer(vocab_file=str(build_tokenizer_model(folder)))


def _spread(model, seed: int) -> None:
    """Make every weight random and non-trivial: zero tensors (zero-initialised projections, biases) get a small
    normal, all-ones tensors (norm scales) get ones plus a small normal."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if torch.all(p == 0):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif torch.all(p == 1):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.05)


def build_text_encoder(vocab_size: int, seed: int = SEED):
    """ChatGLM3 (diffusers' ChatGLMModel) at the tiny size. The class does not initialise its weights: matrices get
    normal(0.02), norm scales 1 + normal(0.05), biases normal(0.02), all from a fixed seed."""
    import torch
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    config = ChatGLMConfig(padded_vocab_size=vocab_size + 8, **TINY_CHATGLM)
    model = ChatGLMModel(config).float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        # the rope frequencies are a persistent buffer that the constructor computes; keep them as ChatGLM3 does
    return model.eval()


def build_unet(seed: int = SEED):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**TINY_UNET)
    _spread(model, seed + 1)
    return model.eval()


def build_vae(seed: int = SEED):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    model = AutoencoderKL(**TINY_VAE)
    _spread(model, seed + 2)
    return model.eval()


def build_scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(KOLORS_SCHEDULER)


def build_components(folder: Path, seed: int = SEED) -> dict:
    """All five KolorsPipeline components, fp32; the tokenizer model is trained into ``folder``."""
    tokenizer = build_tokenizer(folder)
    return dict(tokenizer=tokenizer, text_encoder=build_text_encoder(tokenizer.vocab_size, seed),
                unet=build_unet(seed), vae=build_vae(seed), scheduler=build_scheduler())


# --- layouts ----------------------------------------------------------------------------------------------------

def _dtype(variant: str):
    import torch

    return torch.float16 if variant == "fp16" else torch.float32


def _save_diffusers_layout(folder: Path, variant: str) -> None:
    from diffusers import KolorsPipeline

    parts = build_components(folder / "_tokenizer_build")
    pipe = KolorsPipeline(**parts, force_zeros_for_empty_prompt=False)
    pipe.to(_dtype(variant))
    pipe.save_pretrained(folder, variant="fp16" if variant == "fp16" else None, safe_serialization=True)
    shutil.rmtree(folder / "_tokenizer_build")


def text_encoder_state_dict(model, dtype) -> dict:
    """ChatGLM3's checkpoint naming: the ``transformer.`` prefix of ChatGLMForConditionalGeneration (the shards of
    the real repository and ``chatglm3-fp16.safetensors`` both use it), every tensor contiguous in ``dtype``."""
    return {f"transformer.{k}": v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}


def _save_shards(folder: Path, state: dict, shards: int) -> None:
    """Pickled ``pytorch_model-0000N-of-0000M.bin`` shards (torch.save of plain tensor dicts) and their index."""
    import torch

    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        torch.save(part, folder / name)
        for k, v in part.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def _save_kolors_layout(folder: Path, variant: str) -> None:
    from safetensors.torch import save_file

    dtype = _dtype(variant)
    tok_dir = folder / "text_encoder"
    parts = build_components(tok_dir)
    suffix = ".fp16.safetensors" if variant == "fp16" else ".safetensors"
    for name in ("unet", "vae"):
        model = parts[name]
        (folder / name).mkdir()
        model.save_config(folder / name)
        save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()},
                  folder / name / f"diffusion_pytorch_model{suffix}", metadata={"format": "pt"})
    parts["scheduler"].save_config(folder / "scheduler")
    # text_encoder/: config.json, pickled shards + index, the tokenizer files (tokenizer.model is already there)
    encoder = parts["text_encoder"]
    encoder.config.torch_dtype = "float16" if variant == "fp16" else "float32"
    encoder.config.save_pretrained(tok_dir)
    _save_shards(tok_dir, text_encoder_state_dict(encoder, dtype), TEXT_ENCODER_SHARDS)
    parts["tokenizer"].save_pretrained(tok_dir)
    shutil.copyfile(tok_dir / "tokenizer.model", tok_dir / "vocab.txt")  # the real repository ships this copy too
    shutil.copytree(tok_dir, folder / "tokenizer",
                    ignore=lambda d, names: [n for n in names if n not in ("tokenizer.model", "tokenizer_config.json",
                                                                           "vocab.txt")])
    (folder / "model_index.json").write_text(json.dumps(KOLORS_MODEL_INDEX, indent=2) + "\n")


# the real repository's model_index.json (its classes, as diffusers resolves them)
KOLORS_MODEL_INDEX = {
    "_class_name": "KolorsPipeline",
    "_diffusers_version": "0.30.0.dev0",
    "force_zeros_for_empty_prompt": False,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["kolors", "ChatGLMModel"],
    "tokenizer": ["kolors", "ChatGLMTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


# --- a medium Kolors for benchmarks -----------------------------------------------------------------------------
# Kolors's real widths (320/640/1280, 64-channel heads, cross-attention 2048, ChatGLM3's 4096-wide context, adm
# 5632) with fewer transformer blocks, and ChatGLM3-6B's real layer shape (hidden 4096, 32 heads, 2 key/value
# groups, feed-forward 13696, vocabulary 65024) with 2 of its 28 layers: the cost of every layer is the real one,
# the depth is cut so a 2-core CPU runs it.
MEDIUM_UNET_DEPTH = [1, 1, 2]  # Kolors: [1, 2, 10]
MEDIUM_CHATGLM_LAYERS = 2  # Kolors: 28
MEDIUM_CHATGLM = dict(TINY_CHATGLM, num_layers=MEDIUM_CHATGLM_LAYERS, hidden_size=4096, ffn_hidden_size=13696,
                      kv_channels=128, num_attention_heads=32, multi_query_group_num=2, seq_length=32768,
                      padded_vocab_size=65024)


def medium_unet_config() -> dict:
    config = json.loads((Path(__file__).resolve().parents[2] / "kolors" / "kolors_unet_config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return dict(config, transformer_layers_per_block=MEDIUM_UNET_DEPTH)


def medium_kolors() -> Path:
    """A random-weight Kolors folder in the ``kolors`` layout (fp16 UNet safetensors, pickled ChatGLM3 shards with
    the tokenizer inside text_encoder/) at the medium size above, with a tiny VAE (the benchmarks do not decode).
    About 3.5 GB on disk; built once (about a minute) and cached in tests/.models."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel
    from safetensors.torch import save_file

    path = _kolors_cached("kolors-medium-fp16")
    if (path / "model_index.json").exists():
        return path
    with _building(path) as tmp, torch.no_grad():
        tok_dir = tmp / "text_encoder"
        tokenizer = build_tokenizer(tok_dir)
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel.from_config(medium_unet_config()).eval()
        _spread(unet, SEED + 1)
        vae = build_vae(SEED)
        for name, model in (("unet", unet), ("vae", vae)):
            (tmp / name).mkdir()
            model.save_config(tmp / name)
            save_file({k: v.half().contiguous() for k, v in model.state_dict().items()},
                      tmp / name / "diffusion_pytorch_model.fp16.safetensors", metadata={"format": "pt"})
        del unet, vae
        build_scheduler().save_config(tmp / "scheduler")
        config = ChatGLMConfig(**MEDIUM_CHATGLM)
        encoder = ChatGLMModel(config).eval()
        gen = torch.Generator().manual_seed(SEED)
        for name, p in sorted(encoder.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.05)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        encoder.config.save_pretrained(tok_dir)
        state = text_encoder_state_dict(encoder, torch.float16)
        del encoder
        _save_shards(tok_dir, state, TEXT_ENCODER_SHARDS)
        del state
        tokenizer.save_pretrained(tok_dir)
        (tmp / "model_index.json").write_text(json.dumps(KOLORS_MODEL_INDEX, indent=2) + "\n")
    return path
