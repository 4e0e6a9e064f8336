"""Tiny random-weight Kolors models for the tests, cached in tests/.models (git-ignored).

One module for every Kolors test model (the base folders in both layouts, the single files, the broken ones, the
medium and wide sizes for benchmarks, the add-ons: ControlNet, IP-Adapter, inpainting, GGUF): they share the seed,
the cache and the writers below, and each factory spells out one real file layout, which is why it is long.

Every component is built and saved with diffusers' own Kolors reference classes (UNet2DConditionModel,
AutoencoderKL, EulerDiscreteScheduler, the ChatGLM3 model and tokenizer under diffusers.pipelines.kolors) with a
fixed seed, and laid out on disk as the real model is distributed:

- layout "kolors": the ``Kwai-Kolors/Kolors`` weights repository (what ModelScope, Hugging Face and DiffSynth leave on
  disk). The repository's own ``model_index.json`` (it names the original release's ``StableDiffusionXLPipeline``
  and a ``kolors`` library, so ``KolorsPipeline.from_pretrained`` cannot read this layout: load it part by part);
  ``unet/`` and ``vae/`` with ``config.json`` and ``diffusion_pytorch_model.fp16.safetensors`` (variant "fp16", as
  an fp16 download leaves it) or ``diffusion_pytorch_model.safetensors`` (variant "fp32", as DiffSynth's downloader
  leaves it; the full repository holds both);
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

``small_kolors()`` is the same folder (repository layout) with a bigger UNet: the real SDXL/Kolors block layout at 320
channels (SMALL_UNET), so that DiffSynth-Studio's Kolors LoRAs, whose module names and shapes follow that layout, fit
it (the tiny UNet has too few blocks for them).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import REPO
from .factories import _cached

# bump when a Kolors factory changes, so stale cached folders are rebuilt
KOLORS_FACTORY_VERSION = "2"
SEED = 0

# the recipe's prompt and negative list, plus some English, so the tokenizer covers what the tests type
RECIPE_PROMPT = "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"

FIXTURES = REPO / "tests" / "fixtures" / "kolors"
# the real ChatGLM3 config (tests/fixtures/kolors/text_encoder_config.json) with these sizes changed; every other field
# (multi-query attention with 2 groups, qkv bias, original rope, RMSNorm, post-layer norm, seq_length) stays real
TINY_CHATGLM = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, kv_channels=16, num_attention_heads=4)
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
# The small SDXL UNet of build_models.py (SMALL_SDXL_CONFIG) as a Kolors UNet: the real SDXL/Kolors block layout
# (three levels, two res blocks each, transformer depths 0, 2, 10 and 10 in the middle, 5 heads of 64 channels,
# 2048-wide cross-attention) at 320 channels on every level, so that a DiffSynth Kolors LoRA made for that UNet (the
# fixtures in tests/fixtures/diffsynth/) fits its modules; the text projection reads the tiny ChatGLM3's width
SMALL_UNET = dict(
    TINY_UNET, sample_size=32,
    block_out_channels=(320, 320, 320),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 5, 5), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
)
# ComfyUI's VAE: ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, z_channels=4 (GroupNorm there has 32 groups, so every
# width is a multiple of 32); four levels give the 8x downscale
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=64, scaling_factor=0.13025, force_upcast=True, act_fn="silu",
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


def small_kolors() -> Path:
    """A random-weight Kolors folder in the repository layout (fp16) whose UNet is SMALL_UNET: the full SDXL/Kolors
    module layout at 320 channels, 0.28 B parameters (a DiffSynth Kolors LoRA for the small SDXL UNet fits it), with
    tiny_kolors's ChatGLM3, tokenizer, VAE and scheduler. Built once and cached: 0.54 GB on disk, about 35 s and
    2.5 GB of memory to build (measured on a busy 2-core machine)."""
    path = _kolors_cached("kolors-small-kolors-fp16")
    if (path / "model_index.json").exists():
        return path
    with _building(path) as tmp:
        _save_kolors_layout(tmp, "fp16", unet_config=SMALL_UNET)
    return path


def tiny_kolors_inpainting() -> Path:
    """Kolors-Inpainting at the tiny size: the repository layout (fp32) whose UNet takes 9 input channels (the noisy
    latent, the mask, the masked image's latent), as Kwai-Kolors/Kolors-Inpainting's unet/config.json says."""
    path = _kolors_cached("kolors-inpainting-fp32")
    if (path / "model_index.json").exists():
        return path
    with _building(path) as tmp:
        _save_kolors_layout(tmp, "fp32", unet_config=dict(TINY_UNET, in_channels=9))
    return path


def tiny_kolors_controlnet() -> Path:
    """A Kolors ControlNet as Kwai-Kolors publishes Kolors-ControlNet-Canny: a folder with ``config.json`` and
    ``diffusion_pytorch_model.safetensors`` of diffusers' ControlNetModel, made from tiny_kolors("kolors", "fp32")'s
    UNet the way ``ControlNetModel.from_unet`` makes one (so it carries ``encoder_hid_dim`` / ``text_proj`` and its own
    ``encoder_hid_proj``), every weight then randomised (the zero convolutions included)."""
    path = _kolors_cached("kolors-controlnet-fp32")
    if not (path / "config.json").exists():
        _build_controlnet(path, tiny_kolors("kolors", "fp32") / "unet")
    return path


def _build_controlnet(path: Path, unet_folder: Path, variant: str | None = None) -> None:
    """A ControlNet made from the UNet in ``unet_folder`` as ``ControlNetModel.from_unet`` makes one, every weight then
    randomised (``_spread``: the zero convolutions included), saved at ``path`` in Kwai-Kolors's layout (config.json +
    diffusion_pytorch_model.safetensors) in the dtype of ``variant`` ("fp16", or None for fp32)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(unet_folder, variant=variant, torch_dtype=torch.float32)
    dtype = torch.float16 if variant == "fp16" else torch.float32
    with _building(path) as tmp, torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(SEED + 7)  # from_unet draws its new hint encoder from the global generator
        controlnet = ControlNetModel.from_unet(unet)
        del unet
        _spread(controlnet, SEED + 7)
        controlnet.save_config(tmp)
        save_file({k: v.to(dtype).contiguous() for k, v in controlnet.state_dict().items()},
                  tmp / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})


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
            first = p.reshape(-1)[0].item()  # a cheap filter: most tensors are neither (the small UNet has 0.28 B)
            if first == 0 and torch.all(p == 0):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif first == 1 and torch.all(p == 1):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.05)


def tiny_text_encoder_config(vocab_size: int, variant: str = "fp32", chatglm: dict | None = None) -> dict:
    """The real text_encoder/config.json (same keys, same order) at the tiny size; ``padded_vocab_size`` is the
    tokenizer's vocabulary (special tokens included) plus 8 unused rows, as ChatGLM3 pads 64794 to 65024."""
    config = json.loads((FIXTURES / "text_encoder_config.json").read_text(encoding="utf-8"))
    config.update(chatglm or TINY_CHATGLM, padded_vocab_size=vocab_size + 8,
                  torch_dtype="float16" if variant == "fp16" else "float32")
    return config


def build_text_encoder(vocab_size: int, seed: int = SEED, chatglm: dict | None = None):
    """ChatGLM3 (diffusers' ChatGLMModel) at the tiny size, fp32. The class does not initialise its weights: matrices
    and biases get normal(0.02), norm scales 1 + normal(0.05), all from a fixed seed (no bias or norm is left at
    zero or one, so a loader that drops one gives different numbers). The rope frequencies (``inv_freq``, a
    persistent buffer that ChatGLM3's checkpoints carry) are the constructor's own."""
    import torch
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    model = ChatGLMModel(ChatGLMConfig(**tiny_text_encoder_config(vocab_size, chatglm=chatglm))).float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def build_unet(seed: int = SEED, config: dict | None = None):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**(config or TINY_UNET))
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
    """Kolors's own scheduler (tests/fixtures/kolors/scheduler_config.json): Euler, 1100 training steps,
    scaled_linear betas 0.00085..0.014, epsilon prediction."""
    from diffusers import EulerDiscreteScheduler

    config = json.loads((FIXTURES / "scheduler_config.json").read_text(encoding="utf-8"))
    return EulerDiscreteScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def build_components(folder: Path, seed: int = SEED, unet_config: dict | None = None,
                     chatglm: dict | None = None) -> dict:
    """All five KolorsPipeline components, fp32 (the UNet of ``unet_config``, default TINY_UNET; the ChatGLM3 sizes
    of ``chatglm``, default TINY_CHATGLM); the tokenizer model is trained into ``folder``."""
    tokenizer = build_tokenizer(folder)
    return dict(tokenizer=tokenizer, text_encoder=build_text_encoder(tokenizer.vocab_size, seed, chatglm),
                unet=build_unet(seed, unet_config), vae=build_vae(seed), scheduler=build_scheduler())


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


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_kolors_layout(folder: Path, variant: str, unet_config: dict | None = None,
                        chatglm: dict | None = None) -> None:
    from safetensors.torch import save_file

    dtype = _dtype(variant)
    te_dir = folder / "text_encoder"
    parts = build_components(te_dir, unet_config=unet_config, chatglm=chatglm)
    # unet/ and vae/: the real repository holds diffusion_pytorch_model.safetensors (fp32) and
    # diffusion_pytorch_model.fp16.safetensors; an fp16 download keeps the second, DiffSynth's the first
    weights_name = "diffusion_pytorch_model.fp16.safetensors" if variant == "fp16" else "diffusion_pytorch_model.safetensors"
    for name in ("unet", "vae"):
        parts[name].save_config(folder / name)
        save_file({k: v.to(dtype).contiguous() for k, v in parts[name].state_dict().items()},
                  folder / name / weights_name, metadata={"format": "pt"})
    parts["scheduler"].save_config(folder / "scheduler")
    # text_encoder/: the real config.json at the tiny size, pickled shards + index, the tokenizer files
    # (tokenizer.model is already there; vocab.txt is the real repository's byte copy of it)
    _write_json(te_dir / "config.json", tiny_text_encoder_config(parts["tokenizer"].vocab_size, variant, chatglm))
    _save_shards(te_dir, text_encoder_state_dict(parts["text_encoder"], dtype), TEXT_ENCODER_SHARDS)
    shutil.copyfile(FIXTURES / "tokenizer_config.json", te_dir / "tokenizer_config.json")
    shutil.copyfile(te_dir / "tokenizer.model", te_dir / "vocab.txt")
    for name in TOKENIZER_FILES:  # the real repository has a tokenizer/ folder too
        (folder / "tokenizer").mkdir(exist_ok=True)
        shutil.copyfile(te_dir / name, folder / "tokenizer" / name)
    shutil.copyfile(FIXTURES / "model_index.json", folder / "model_index.json")


TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "vocab.txt")


# --- single files, as ComfyUI users keep them -------------------------------------------------------------------

def tiny_kolors_single_files() -> dict[str, Path]:
    """The tiny Kolors as separate files, with the same weights as ``tiny_kolors("kolors", "fp16")``:

    - ``unet``: ``kolors_unet_fp16.safetensors`` for models/unet: the repository's
      ``unet/diffusion_pytorch_model.fp16.safetensors`` as is (diffusers key names, fp16), renamed as users do;
    - ``chatglm3``: ``chatglm3-fp16.safetensors`` for models/text_encoders (or models/LLM), like the widely shared
      single file: fp16, ChatGLMModel's own key names WITHOUT the ``transformer.`` prefix of the shards
      (``embedding.word_embeddings.weight``, ``rotary_pos_emb.inv_freq``, ``encoder.layers.N.…``,
      ``encoder.final_layernorm.weight``, ``output_layer.weight``): the wrappers that read it load it strictly into
      ChatGLMModel;
    - ``tokenizer``: a folder with ``tokenizer.model`` and ``tokenizer_config.json``. The single file holds no
      tokenizer: the wrappers ship ChatGLM3's tokenizer in their own ``configs/tokenizer`` folder;
    - ``text_encoder_config``: the tiny text encoder's config.json (the single file has no config either; the
      wrappers ship the real one);
    - ``vae``: ``kolors_vae_fp16.safetensors`` for models/vae: the repository's VAE file (diffusers key names)."""
    import torch
    from safetensors.torch import load_file, save_file

    source = tiny_kolors("kolors", "fp16")
    path = _kolors_cached("kolors-single-files")
    names = dict(unet="kolors_unet_fp16.safetensors", chatglm3="chatglm3-fp16.safetensors", tokenizer="tokenizer",
                 text_encoder_config="text_encoder_config.json", vae="kolors_vae_fp16.safetensors")
    if not (path / names["chatglm3"]).exists():
        with _building(path) as tmp:
            shutil.copyfile(source / "unet" / "diffusion_pytorch_model.fp16.safetensors", tmp / names["unet"])
            shutil.copyfile(source / "vae" / "diffusion_pytorch_model.fp16.safetensors", tmp / names["vae"])
            state = {}
            for shard in sorted((source / "text_encoder").glob("pytorch_model-*.bin")):
                state.update(torch.load(shard, map_location="cpu", weights_only=True))
            save_file({k.removeprefix("transformer."): v.to(torch.float16).contiguous() for k, v in state.items()},
                      tmp / names["chatglm3"], metadata={"format": "pt"})
            (tmp / names["tokenizer"]).mkdir()
            for name in ("tokenizer.model", "tokenizer_config.json"):
                shutil.copyfile(source / "text_encoder" / name, tmp / names["tokenizer"] / name)
            shutil.copyfile(source / "text_encoder" / "config.json", tmp / names["text_encoder_config"])
            assert load_file(tmp / names["chatglm3"]).keys() == {k.removeprefix("transformer.") for k in state}
    return {kind: path / name for kind, name in names.items()}


# --- bad input ----------------------------------------------------------------------------------------------------

BAD_KINDS = ("truncated-shard", "no-text-encoder", "no-tokenizer", "malicious-shard")
MALICIOUS_MARKER = "MALICIOUS_CODE_RAN"


def bad_kolors(kind: str) -> Path:
    """A broken copy of ``tiny_kolors("kolors", "fp16")``:

    - "truncated-shard": the last text encoder shard cut to half its bytes (an interrupted download);
    - "no-text-encoder": no ``text_encoder/`` folder (the ``tokenizer/`` folder is still there);
    - "no-tokenizer": no ``tokenizer.model`` anywhere (nor ``vocab.txt``, the repository's copy of it);
    - "malicious-shard": the first shard is a pickle whose unpickling would run code: a ``__reduce__`` payload
      that creates ``text_encoder/MALICIOUS_CODE_RAN`` (see ``malicious_marker``). ``torch.load(...,
      weights_only=True)`` refuses it; only a full unpickle would run it. Never load it any other way."""
    if kind not in BAD_KINDS:
        raise ValueError(f"unknown bad Kolors kind {kind!r}; pick one of {BAD_KINDS}")
    source = tiny_kolors("kolors", "fp16")
    path = _kolors_cached(f"kolors-bad-{kind}")
    if path.exists():
        return path
    with _building(path) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(source, tmp)
        te_dir = tmp / "text_encoder"
        shards = sorted(te_dir.glob("pytorch_model-*.bin"))
        if kind == "truncated-shard":
            data = shards[-1].read_bytes()
            shards[-1].write_bytes(data[:len(data) // 2])
        elif kind == "no-text-encoder":
            shutil.rmtree(te_dir)
        elif kind == "no-tokenizer":
            for folder in (te_dir, tmp / "tokenizer"):
                for name in ("tokenizer.model", "vocab.txt"):
                    (folder / name).unlink()
        else:
            write_malicious_pickle(shards[0], malicious_marker(path))
    return path


def malicious_marker(folder: Path) -> Path:
    """The file that the malicious shard of ``folder`` would create if its pickle were ever fully unpickled."""
    return Path(folder) / "text_encoder" / MALICIOUS_MARKER


class _CreatesFileWhenUnpickled:
    """Pickles as a call to ``pathlib.Path.touch(marker)``: harmless here, but code that a weights-only load must
    never run. Pickling it only records the call; nothing runs until a full unpickle."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A torch.save file that looks like a ChatGLM3 shard (a real tensor under a real key) but carries the payload."""
    import torch

    torch.save({"transformer.embedding.word_embeddings.weight": torch.zeros(4, 4, dtype=torch.float16),
                "transformer.encoder.layers.0.input_layernorm.weight": _CreatesFileWhenUnpickled(marker)}, path)


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
    config = json.loads((REPO / "kolors" / "kolors_unet_config.json").read_text())
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
        # the real text_encoder/config.json at the medium size, with ChatGLM3's real vocabulary rows
        config = ChatGLMConfig(**dict(tiny_text_encoder_config(tokenizer.vocab_size, "fp16", chatglm=MEDIUM_CHATGLM),
                                      padded_vocab_size=MEDIUM_CHATGLM["padded_vocab_size"]))
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
        shutil.copyfile(FIXTURES / "model_index.json", tmp / "model_index.json")
    return path


WIDE_CHATGLM = dict(TINY_CHATGLM, hidden_size=1024, ffn_hidden_size=4096, kv_channels=64, num_attention_heads=16)


def wide_chatglm3_file() -> dict[str, Path]:
    """A single ``chatglm3-fp16.safetensors`` wide enough that loading it shows in the process's memory: ChatGLM3's
    real vocabulary (65024 rows, LM head included, as the shared file has it) at width 1024, 2 layers (about 330 MB
    in fp16). Random weights: for memory, not numbers. ``{"chatglm3", "tokenizer", "config"}`` paths."""
    import torch

    def state(meta: dict, gen) -> dict:
        return {k: (torch.randn(v.shape, generator=gen) * 0.02).to(torch.float16) if v.dtype.is_floating_point
                else torch.zeros(v.shape, dtype=v.dtype) for k, v in meta.items()}

    return _single_chatglm3_file("chatglm3-wide", WIDE_CHATGLM, state)


def kolors_epoch_loras(comfy_folder: Path, diffsynth_folder: Path, epochs: tuple[int, ...] = (1, 2, 3),
                       steps_per_epoch: int = 10, rank: int = 4, alpha: float = 4.0, seed: int = 0,
                       unet_config: dict | None = None) -> list[Path]:
    """One random LoRA per epoch for tiny_kolors's UNet (``unet_config``: another, e.g. SMALL_UNET) (every attention's to_q/to_k/to_v/to_out, rank ``rank``),
    written twice: in ComfyUI's format (``comfy_folder/run_epochNNNN.safetensors``, with ``.alpha``, what core
    LoraLoaderModelOnly reads) and, converted by Save LoRA's own DiffSynth copy, as DiffSynth-Studio 1.x's trainer
    leaves them (``diffsynth_folder/epoch=K-step=M.ckpt``: a flat dict of its peft-named tensors, no alpha; K counted
    from 0 as Lightning does). Later epochs move further from zero, so the files differ visibly. Returns the
    DiffSynth files in epoch order."""
    import torch
    from diffusers import UNet2DConditionModel

    from aesthete.lora import layout
    from aesthete.training.save import TrainedLora, save_copy, save_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel(**(unet_config or TINY_UNET))
    to_ldm = {d: ldm for ldm, d in layout.diffusers_names("sdxl").items()}
    layers = {to_ldm[name]: module for name, module in unet.named_modules()
              if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")}
    g = torch.Generator().manual_seed(seed)
    comfy_folder.mkdir(parents=True, exist_ok=True)
    diffsynth_folder.mkdir(parents=True, exist_ok=True)
    written = []
    for epoch in epochs:
        tensors = {}
        for ldm, module in sorted(layers.items()):
            key = f"diffusion_model.{ldm}"
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.2 * epoch
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.2
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
        lora = TrainedLora(tensors, {"aesthete.base_model": "KolorsModelConfig", "aesthete.rank": str(rank),
                                     "aesthete.epochs": str(epoch)})
        path = save_lora(lora, comfy_folder / f"run_epoch{epoch:04d}.safetensors")
        copy, _ = save_copy(lora, path, "diffsynth")
        from safetensors.torch import load_file

        ckpt = diffsynth_folder / f"epoch={epoch - 1}-step={epoch * steps_per_epoch}.ckpt"
        torch.save(load_file(str(copy)), ckpt)
        copy.unlink()
        written.append(ckpt)
    return written


def medium_chatglm3_file() -> dict[str, Path]:
    """A single ``chatglm3-fp16.safetensors`` with ChatGLM3-6B's real layer shape (MEDIUM_CHATGLM: hidden 4096,
    feed-forward 13696, 32 heads, 2 key/value groups, vocabulary 65024) and 2 of its 28 layers, no LM head (the
    loaders never read it): 1.35 GB in fp16, for the quantized text encoder's benchmark. Matrices normal(0.02), norm
    scales 1 + normal(0.05), biases normal(0.02), fixed seed. ``{"chatglm3", "tokenizer", "config"}`` paths."""
    import torch

    def state(meta: dict, gen) -> dict:
        out = {}
        for key, v in meta.items():
            if "output_layer" in key or "rotary" in key:
                continue
            noise = torch.randn(v.shape, generator=gen)
            out[f"transformer.{key}"] = (1 + 0.05 * noise if "norm" in key else 0.02 * noise).to(torch.float16)
        return out

    return _single_chatglm3_file("chatglm3-medium", MEDIUM_CHATGLM, state)


def _single_chatglm3_file(name: str, chatglm: dict, state) -> dict[str, Path]:
    """A cached folder with one ChatGLM3 safetensors file of ChatGLM3's real vocabulary at the ``chatglm`` sizes, its
    config.json and the tiny Kolors's tokenizer; ``state(meta state dict, seeded generator)`` makes the tensors."""
    import torch
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel
    from safetensors.torch import save_file

    path = _kolors_cached(name)
    files = dict(chatglm3=path / "chatglm3-fp16.safetensors", tokenizer=path / "tokenizer.model",
                 config=path / "config.json")
    if files["chatglm3"].exists():
        return files
    source = tiny_kolors("kolors", "fp16") / "text_encoder"
    with _building(path) as tmp:
        config = dict(tiny_text_encoder_config(64000, "fp16", chatglm=chatglm), padded_vocab_size=65024)
        with torch.device("meta"):
            meta = ChatGLMModel(ChatGLMConfig(**config)).state_dict()
        save_file(state(meta, torch.Generator().manual_seed(SEED)), tmp / files["chatglm3"].name,
                  metadata={"format": "pt"})
        _write_json(tmp / files["config"].name, config)
        shutil.copyfile(source / "tokenizer.model", tmp / files["tokenizer"].name)
    return files


def tiny_chatglm3_gguf(kind: str = "Q8_0") -> Path:
    """The tiny Kolors's ChatGLM3 (``tiny_kolors("kolors", "fp16")``) as llama.cpp's converter writes ChatGLM3-6B GGUF
    files, written with the gguf package's own writer: architecture ``chatglm``, llama.cpp's tensor names, the
    matrices and token table in ``kind`` (a GGUF type: Q8_0, Q4_1, Q4_0, F16), norms and biases in F32. Its
    config.json and tokenizer.model lie beside it (a tiny ChatGLM3's head width is not 6B's, so the loaders need the
    config). Returns the ``chatglm3-<kind>.gguf`` path."""
    import gguf
    import numpy as np

    from aesthete.kolors.folder import find_kolors_folder, read_weights

    path = _kolors_cached(f"chatglm3-gguf-{kind.lower()}")
    target = path / f"chatglm3-{kind.lower()}.gguf"
    if target.exists():
        return target
    folder = find_kolors_folder(tiny_kolors("kolors", "fp16"))
    weights = read_weights(folder.text_encoder_files)
    config = folder.text_encoder_config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.CHATGLM, config["num_layers"])
    qtype = gguf.GGMLQuantizationType[kind]
    with _building(path) as tmp:
        writer = gguf.GGUFWriter(tmp / target.name, "chatglm")
        writer.add_block_count(config["num_layers"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["ffn_hidden_size"])
        writer.add_head_count(config["num_attention_heads"])
        writer.add_head_count_kv(config["multi_query_group_num"])
        for key, tensor in weights.items():
            if "rotary_pos_emb" in key:
                continue
            name = names.get_name(key.removeprefix("transformer."), try_suffixes=(".weight", ".bias"))
            array = tensor.float().numpy()
            if array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
                writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
            else:
                writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        _write_json(tmp / "config.json", config)
        shutil.copyfile(folder.tokenizer_model, tmp / "tokenizer.model")
    return target


# --- Kolors-IP-Adapter-Plus ---------------------------------------------------------------------------------------
# the image encoder Kolors-IP-Adapter-Plus ships (image_encoder/config.json: CLIP ViT-L/14 at 336 px), full size:
# core Load CLIP Vision recognises an image encoder only by its real layer count and widths
KOLORS_IMAGE_ENCODER = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5)
# the Resampler at a small width (Kolors's: 1280 wide, 20 heads, 16 queries), depth 4, reading ViT-L's 1024-wide states
# and giving tokens of the tiny UNet's cross-attention width
TINY_RESAMPLER = dict(dim=128, depth=4, queries=16, ff=512)  # diffusers reads no depth: 4, as Kolors


def tiny_kolors_ip_adapter() -> Path:
    """A Kolors-IP-Adapter-Plus folder as Kwai-Kolors publishes it: ``ip_adapter_plus_general.bin`` (a pickled
    ``{"image_proj": Resampler weights in IP-Adapter's own names, "ip_adapter": {"<n>.to_k_ip.weight", ...}}`` for
    tiny_kolors's UNet, n = 1, 3, 5, ... over its cross-attentions in diffusers' order) and ``image_encoder/``
    (config.json + model.safetensors of a random full-size CLIPVisionModelWithProjection ViT-L/14-336, fp16, about
    0.6 GB). Built once (about 30 s) and cached."""
    path = _kolors_cached("kolors-ip-adapter-plus")
    if (path / "ip_adapter_plus_general.bin").exists():
        return path
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(tiny_kolors("kolors", "fp32") / "unet")
    proj, adapter = _ip_adapter_plus_weights(unet, TINY_RESAMPLER, SEED + 11, spread=0.05, proj_out_spread=0.1,
                                             ip_spread=0.3)
    with _building(path) as tmp:
        torch.save({"image_proj": proj, "ip_adapter": adapter}, tmp / "ip_adapter_plus_general.bin")
        torch.manual_seed(SEED)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**KOLORS_IMAGE_ENCODER)).to(torch.float16)
        encoder.save_pretrained(tmp / "image_encoder", safe_serialization=True)
    return path


def medium_kolors_controlnet() -> Path:
    """A Kolors ControlNet made from medium_kolors's UNet as ``ControlNetModel.from_unet`` makes one (Kolors's real
    widths, the medium depths), random weights, fp16, in Kwai-Kolors's layout (config.json + weights); for benchmarks."""
    path = _kolors_cached("kolors-controlnet-medium-fp16")
    if not (path / "config.json").exists():
        _build_controlnet(path, medium_kolors() / "unet", variant="fp16")
    return path


# Kolors-IP-Adapter-Plus's Resampler at its real size: 1280 wide (20 heads of 64), depth 4, 16 queries, 2048-wide tokens
REAL_RESAMPLER = dict(dim=1280, depth=4, queries=16, ff=5120)


def medium_kolors_ip_adapter() -> Path:
    """Kolors-IP-Adapter-Plus at its real Resampler size for medium_kolors's UNet (``to_k_ip``/``to_v_ip`` for each of
    its cross-attentions), random weights, with tiny_kolors_ip_adapter's full-size image encoder; for benchmarks."""
    path = _kolors_cached("kolors-ip-adapter-plus-medium")
    if (path / "ip_adapter_plus_general.bin").exists():
        return path
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(medium_kolors() / "unet", variant="fp16", torch_dtype=torch.float32)
    proj, adapter = _ip_adapter_plus_weights(unet, REAL_RESAMPLER, SEED + 13, spread=0.02)
    encoder = tiny_kolors_ip_adapter() / "image_encoder"
    with _building(path) as tmp:
        torch.save({"image_proj": {k: v.half() for k, v in proj.items()},
                    "ip_adapter": {k: v.half() for k, v in adapter.items()}}, tmp / "ip_adapter_plus_general.bin")
        (tmp / "image_encoder").symlink_to(encoder, target_is_directory=True)
    return path


def _ip_adapter_plus_weights(unet, resampler: dict, seed: int, spread: float, proj_out_spread: float | None = None,
                             ip_spread: float | None = None) -> tuple[dict, dict]:
    """Random Kolors-IP-Adapter-Plus weights for ``unet``: the Resampler (``resampler``'s sizes, reading ViT-L's
    1024-wide states, giving tokens of the UNet's cross-attention width) in IP-Adapter's own names, and
    ``<n>.to_k_ip.weight`` / ``<n>.to_v_ip.weight`` for each cross-attention, n = 1, 3, 5, ... in diffusers' order.
    Normal values of std ``spread`` (``proj_out_spread`` for proj_out's weight, ``ip_spread`` for to_k_ip/to_v_ip)."""
    import torch

    cross = [name for name in unet.attn_processors if ".attn2." in name]
    modules = dict(unet.named_modules())
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, around=0.0, spread=spread):
        return around + spread * torch.randn(shape, generator=gen)

    r, width, image_width = resampler, unet.config.cross_attention_dim, KOLORS_IMAGE_ENCODER["hidden_size"]
    proj = {"latents": rand(1, r["queries"], r["dim"], spread=r["dim"] ** -0.5),
            "proj_in.weight": rand(r["dim"], image_width), "proj_in.bias": rand(r["dim"]),
            "proj_out.weight": rand(width, r["dim"], spread=proj_out_spread or spread), "proj_out.bias": rand(width),
            "norm_out.weight": rand(width, around=1.0), "norm_out.bias": rand(width)}
    for i in range(r["depth"]):
        p = f"layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            proj[f"{p}{norm}.weight"], proj[f"{p}{norm}.bias"] = rand(r["dim"], around=1.0), rand(r["dim"])
        proj[f"{p}0.to_q.weight"] = rand(r["dim"], r["dim"])
        proj[f"{p}0.to_kv.weight"] = rand(2 * r["dim"], r["dim"])
        proj[f"{p}0.to_out.weight"] = rand(r["dim"], r["dim"])
        proj[f"{p}1.1.weight"], proj[f"{p}1.3.weight"] = rand(r["ff"], r["dim"]), rand(r["dim"], r["ff"])
    adapter = {}
    for n, name in zip(range(1, 2 * len(cross), 2), cross):
        shape = modules[name[: -len(".processor")]].to_k.weight.shape
        adapter[f"{n}.to_k_ip.weight"] = rand(*shape, spread=ip_spread or spread)
        adapter[f"{n}.to_v_ip.weight"] = rand(*shape, spread=ip_spread or spread)
    return proj, adapter
