"""Kolors as an ordinary ComfyUI MODEL, CLIP and VAE, built from ComfyUI's own classes.

- MODEL: ComfyUI's SDXL-family ``UNetModel`` with one more module, ``encoder_hid_proj`` (Kolors's projection of the
  4096-wide ChatGLM3 context to the UNet's cross-attention width), in a ``model_base.SDXL`` subclass; the SDXL size
  conditioning (pooled text + 6 x 256 size features, the image's own size) is ComfyUI's. Its model config is
  registered in ``comfy.supported_models.models``, the list ComfyUI's model detection reads, so a Kolors UNet saved
  by ModelSave or kept as one file in models/unet loads through core loaders too.
- CLIP: ``comfy.sd.CLIP`` around ChatGLM3 (``kolors.chatglm``) with ComfyUI's weighted-prompt parsing and
  ``ClipTokenWeightEncoder`` weighting; the context is 256 tokens, left padded, as Kolors's pipeline makes it.
- VAE: ``comfy.sd.VAE`` configured from the folder's vae/config.json.
Everything is wrapped in ModelPatchers, so ComfyUI's model management moves, offloads and frees it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import comfy.diffusers_convert
import comfy.latent_formats
import comfy.ldm.modules.attention as attention
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.ldm.modules.encoders.noise_aug_modules import CLIPEmbeddingNoiseAugmentation
from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

from ..common.tensors import LazyWeights, load_into_module
from ..kolors import configs, quantize
from ..kolors.chatglm import ChatGLM3, load_chatglm_state_dict
from ..kolors.folder import KolorsFolder, KolorsFolderError, chatglm3_weights, read_weights
from ..kolors.tokenizer import ChatGLM3Tokenizer
from . import compat

log = logging.getLogger("aesthete.kolors")

ENCODER_KEY = "chatglm3"  # the tokenizer's and text encoder's name in ComfyUI's token dictionaries
MAX_TOKENS = 256  # Kolors's context length: ChatGLM3's prefix tokens, the prompt, left padding
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FP8 = "fp8_e4m3fn"  # weight-only storage for ChatGLM3 (half of fp16); ComfyUI's manual_cast ops compute in fp16/fp32
QUANTIZED = quantize.KINDS  # 8-bit and 4-bit block storage for ChatGLM3 (kolors.quantize), dequantized per layer


# ---------------------------------------------------------------------------------------------------- the MODEL
class KolorsUNetModel(UNetModel):
    """ComfyUI's UNet plus Kolors's text projection, applied to the cross-attention context."""

    def __init__(self, encoder_hid_dim: int, context_dim: int, dtype=None, device=None, operations=None, **kwargs):
        super().__init__(context_dim=context_dim, dtype=dtype, device=device, operations=operations, **kwargs)
        self.encoder_hid_proj = operations.Linear(encoder_hid_dim, context_dim, dtype=dtype, device=device)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        if context is not None:
            context = self.encoder_hid_proj(context)
        return super().forward(x, timesteps, context, y, control, transformer_options, **kwargs)


class Kolors(comfy.model_base.SDXL):
    """SDXL's conditioning (pooled text + size features) on the Kolors UNet."""

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.EPS, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, model_type, device=device,
                                            unet_model=KolorsUNetModel)
        self.embedder = Timestep(configs.SIZE_EMBED_DIM)
        self.noise_augmentor = CLIPEmbeddingNoiseAugmentation(
            noise_schedule_config={"timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}, timestep_dim=1280)


ENCODER_HID_KEY = "encoder_hid_proj.weight"


def _is_kolors(unet_config: dict, state_dict) -> bool:
    """An SDXL-family UNet config (size conditioning) whose weights carry Kolors's text projection."""
    if state_dict is None or "num_res_blocks" not in unet_config or not unet_config.get("adm_in_channels"):
        return False
    return any(k.endswith(ENCODER_HID_KEY) for k in state_dict)


_matches_kolors = compat.never_raising_matches(_is_kolors, "Kolors")


class KolorsModelConfig(comfy.supported_models.SDXL):
    """Kolors in ComfyUI's model detection: an SDXL-family UNet with ``encoder_hid_proj``."""

    unet_config = {}
    # SDXL's extra config would overwrite the head layout read from config.json; it is only a default here, for
    # UNets found by detection (their weights do not tell the head width: Kolors's is 64 channels, as SDXL's)
    unet_extra_config = {}
    detection_defaults = {"num_heads": -1, "num_head_channels": 64}
    required_keys = {ENCODER_HID_KEY}
    # Kolors's scheduler: 1100 steps, scaled linear 0.00085 .. 0.014, epsilon
    sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.014, "timesteps": 1100}
    latent_format = comfy.latent_formats.SDXL

    def __init__(self, unet_config):
        super().__init__({**self.detection_defaults, **unet_config})

    @classmethod
    def matches(cls, unet_config, state_dict=None, *args, **kwargs):
        """Core's detection asks every entry on every load: this takes whatever core passes (the newest adds
        ``unet_key_prefix``) and never raises (``compat.never_raising_matches``)."""
        return _matches_kolors(unet_config, state_dict)

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.EPS

    def get_model(self, state_dict, prefix="", device=None):
        if "encoder_hid_dim" not in self.unet_config:  # found by detection: read the width off the weights
            key = next(k for k in state_dict if k.startswith(prefix) and k.endswith(ENCODER_HID_KEY))
            self.unet_config["encoder_hid_dim"] = state_dict[key].shape[1]
        model = Kolors(self, model_type=self.model_type(state_dict, prefix), device=device)
        if self.inpaint_model():  # Kolors-Inpainting: 9 input channels (latent, mask, masked image's latent)
            model.set_inpaint()
        return model

    def clip_target(self, state_dict={}):
        return None  # a single-file Kolors UNet carries no text encoder: load ChatGLM3 with its own loader


def register_model_config() -> None:
    """Put Kolors first in ComfyUI's detection list (before SDXL, whose config it would otherwise match); called once
    by the extension's start-up (nodes/__init__.py), never at import."""
    compat.register_model_config(KolorsModelConfig)


def _load_device_dtype(dtype_name: str, parameters: int, weight_dtype, model_config):
    load_device = mm.get_torch_device()
    if dtype_name == "auto":
        dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes),
                              weight_dtype=weight_dtype)
    else:
        dtype = DTYPES[dtype_name]
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    return load_device, dtype, manual_cast


def kolors_unet_from_diffusers(unet_sd: Mapping[str, torch.Tensor], unet_config: dict, scheduler_config: dict | None,
                               dtype_name: str = "auto", where: str = "unet") -> comfy.model_patcher.ModelPatcher:
    """A Kolors MODEL from diffusers-named UNet weights and the folder's config files. ``unet_sd`` is a dict of
    tensors (emptied as they are used) or a :class:`LazyWeights`, whose tensors are read one at a time."""
    settings = configs.unet_settings(unet_config)
    model_config = KolorsModelConfig(settings)
    if scheduler_config is not None:
        model_config.sampling_settings.update(configs.sampling_settings(scheduler_config))
    key_map = comfy.utils.unet_to_diffusers(settings)  # diffusers name -> ComfyUI name
    names = {comfy_key: diffusers_key for diffusers_key, comfy_key in key_map.items() if diffusers_key in unet_sd}
    for name in ("weight", "bias"):
        key = f"encoder_hid_proj.{name}"
        if key in unet_sd:
            names[key] = key
    leftover = sorted(set(unet_sd) - set(names.values()))
    comfy_sd = {comfy_key: unet_sd[diffusers_key] for comfy_key, diffusers_key in names.items()}
    take = unet_sd.take if isinstance(unet_sd, LazyWeights) else unet_sd.pop
    return _kolors_model(comfy_sd, model_config, dtype_name, where, leftover=leftover,
                         take=lambda comfy_key: take(names[comfy_key]))


def _kolors_model(comfy_sd: dict, model_config, dtype_name: str, where: str, leftover: list[str], take):
    """``comfy_sd``: ComfyUI-named tensors (meta tensors are enough); ``take(key)``: the real tensor of a key."""
    if leftover:
        raise KolorsFolderError(f"{where}: {len(leftover)} weights do not belong to a Kolors UNet with this "
                                f"config.json (for example {', '.join(leftover[:3])}); the weights and "
                                f"config.json do not match")
    parameters = comfy.utils.calculate_parameters(comfy_sd)
    load_device, dtype, manual_cast = _load_device_dtype(dtype_name, parameters, comfy.utils.weight_dtype(comfy_sd),
                                                         model_config)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model(comfy_sd, "").to(mm.unet_offload_device())
    report = load_into_module(model.diffusion_model, list(comfy_sd), take)
    if report:
        raise KolorsFolderError(f"{where}: the weights do not fit the UNet its config.json describes (missing "
                                f"{report.missing[:3]}, unexpected {report.unexpected[:3]}{_first(report.errors)}); "
                                f"download the UNet again")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    options = cpu_attention_options(load_device)
    if options:
        patcher.model_options.setdefault("transformer_options", {}).update(options)
    return patcher


def cpu_attention_options(load_device) -> dict:
    """The transformer options that make a Kolors model on the CPU attend with PyTorch's SDPA where ComfyUI would take
    its sub-quadratic kernel (no attention option on its command line); empty elsewhere."""
    if mm.is_device_cpu(load_device) and _cpu_default_attention_is_sub_quad():
        return {"optimized_attention_override": _pytorch_attention}
    return {}


def _cpu_default_attention_is_sub_quad() -> bool:
    """ComfyUI falls back to its sub-quadratic attention on the CPU unless the user picked one on its command line."""
    from comfy.cli_args import args

    chosen = (args.use_split_cross_attention or args.use_quad_cross_attention or args.use_pytorch_cross_attention
              or getattr(args, "use_sage_attention", False) or getattr(args, "use_flash_attention", False))
    return not chosen and attention.optimized_attention is attention.attention_sub_quad


def _pytorch_attention(func, *args, **kwargs):
    """The Kolors UNet's attention on the CPU: PyTorch's scaled_dot_product_attention (exact, computed in tiles,
    so no larger than the sub-quadratic kernel), which does the same work with fewer copies; measured with
    benchmarks/bench_kolors.py (the README's Benchmarks)."""
    return attention.attention_pytorch(*args, **kwargs)


def _first(errors: list[str]) -> str:
    return f"; {errors[0].strip()}" if errors else ""


# ----------------------------------------------------------------------------------------------------- the CLIP
class KolorsTokenizer:
    """ComfyUI's tokenizer interface over ChatGLM3's: ``(text:1.2)`` weights parsed the way CLIPTextEncode parses
    them, one chunk of 256 tokens, left padded after ChatGLM3's prefix. A prompt past 256 tokens is returned whole
    (so token counts stay true) and cut to the first 256 by the encoder, with a warning naming what was cut."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        data = tokenizer_data.get("chatglm3_tokenizer")
        if data is None:
            raise ValueError("the Kolors tokenizer needs the bytes of ChatGLM3's tokenizer.model")
        self.tokenizer = ChatGLM3Tokenizer.from_bytes(data)
        self.max_length = MAX_TOKENS

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        tokens = []
        parsed = comfy.sd1_clip.token_weights(comfy.sd1_clip.escape_important(text), 1.0)
        for word_id, (segment, weight) in enumerate(parsed, start=1):
            for t in self.tokenizer.encode(comfy.sd1_clip.unescape_important(segment)):
                tokens.append((t, weight, word_id))
        prefix = [(t, 1.0, 0) for t in self.tokenizer.prefix_ids]
        padding = [(self.tokenizer.pad_id, 1.0, 0)] * max(0, self.max_length - len(prefix) - len(tokens))
        chunk = padding + prefix + tokens
        if not return_word_ids:
            chunk = [(t, w) for t, w, _ in chunk]
        return {ENCODER_KEY: [chunk]}

    def untokenize(self, token_weight_pair):
        return [(p, self.tokenizer.decode([p[0]])) for p in token_weight_pair]

    def state_dict(self):
        return {}


def kolors_text_encoder_class(te_config: dict, tokenizer: ChatGLM3Tokenizer):
    """The class ``comfy.sd.CLIP`` instantiates (it passes device, dtype and model_options)."""

    class KolorsTextEncoder(torch.nn.Module, comfy.sd1_clip.ClipTokenWeightEncoder):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__()
            operations = model_options.get("custom_operations") or comfy.ops.manual_cast
            self.transformer = ChatGLM3(te_config, dtype=dtype, device=device, operations=operations)
            self.dtypes = {dtype}
            # where ComfyUI runs it: a model loaded in part (--lowvram) keeps its first weights on the CPU
            self.execution_device = model_options.get("load_device")
            # fp8 is storage only: the embedding is read into the compute dtype and every layer casts its weights
            self.compute_dtype = model_options.get("compute_dtype")
            # the compute dtype ComfyUI's patcher sets (the newest comfy.sd.CLIP sets fp32 for every text encoder, as
            # an object patch of this attribute); None: the one above
            self.manual_cast_dtype = None
            self.layer = -2  # Kolors's pipeline takes hidden_states[-2]
            self.special_tokens = {"pad": tokenizer.pad_id}

        def set_clip_options(self, options):
            layer = options.get("layer")
            if layer is not None:
                self.layer = layer

        def reset_clip_options(self):
            self.layer = -2

        def gen_empty_tokens(self, special_tokens, length):
            return [tokenizer.pad_id] * (MAX_TOKENS - len(tokenizer.prefix_ids)) + list(tokenizer.prefix_ids)

        def encode_token_weights(self, token_weight_pairs):
            return comfy.sd1_clip.ClipTokenWeightEncoder.encode_token_weights(self, token_weight_pairs[ENCODER_KEY])

        def encode(self, token_lists):
            device = self.execution_device or next(self.transformer.parameters()).device
            rows = [_fit_to_context(list(ids), tokenizer) for ids in token_lists]
            ids = torch.tensor(rows, dtype=torch.long, device=device)
            mask, positions = context_mask_and_positions(ids, tokenizer.prefix_ids[0])
            context, pooled = self.transformer(ids, mask, positions, intermediate_output=self.layer,
                                               dtype=self.manual_cast_dtype or self.compute_dtype)
            return context.float(), pooled.float()

        def load_sd(self, sd):
            return load_chatglm_state_dict(self.transformer, sd)

    return KolorsTextEncoder


def _fit_to_context(ids: list[int], tokenizer: ChatGLM3Tokenizer) -> list[int]:
    if len(ids) > MAX_TOKENS:
        cut = ids[MAX_TOKENS:]
        log.warning("Kolors prompt is %d tokens, past ChatGLM3's %d: the end was cut: %r", len(ids), MAX_TOKENS,
                    tokenizer.decode(cut))
        return ids[:MAX_TOKENS]
    return [tokenizer.pad_id] * (MAX_TOKENS - len(ids)) + ids


def context_mask_and_positions(ids: torch.Tensor, gmask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention mask and position ids of a left-padded batch: everything from ChatGLM3's [gMASK] on is prompt
    (a pad id can also be a real token, so the mask is never read off the ids themselves)."""
    is_start = (ids == gmask_id).int()
    mask = (torch.cumsum(is_start, dim=1) > 0).long()
    positions = (torch.cumsum(mask, dim=1) - 1).clamp(min=0)
    return mask, positions


def kolors_clip(te_files: list[Path], te_config: dict, tokenizer_model: Path, dtype_name: str = "auto",
                device: str = "default", state_dict: Mapping | None = None) -> comfy.sd.CLIP:
    """ChatGLM3 as a ComfyUI CLIP from its weight files (or their ``state_dict``: tensors, or a LazyWeights), each
    tensor read as it is copied in."""
    tokenizer_bytes = Path(tokenizer_model).read_bytes()
    try:
        tokenizer = ChatGLM3Tokenizer.from_bytes(tokenizer_bytes)
    except Exception as e:  # noqa: BLE001 - sentencepiece raises plain RuntimeErrors
        raise KolorsFolderError(f"{tokenizer_model}: not a readable sentencepiece tokenizer ({e}); put ChatGLM3's "
                                f"tokenizer.model there") from e
    model_options: dict = {}
    if device == "cpu":
        model_options["load_device"] = model_options["offload_device"] = torch.device("cpu")
    elif device == "gpu":
        model_options["load_device"] = mm.get_torch_device()
    load_device = model_options.setdefault("load_device", mm.text_encoder_device())
    if dtype_name in ("auto", FP8, *QUANTIZED):
        dtype = text_encoder_dtype(load_device)
    else:
        dtype = DTYPES[dtype_name]
    if dtype_name == FP8:
        model_options["compute_dtype"] = torch.float32 if mm.is_device_cpu(load_device) else torch.float16
        dtype = torch.float8_e4m3fn
    elif dtype_name in QUANTIZED:
        # matrices and the embedding table in blocks of 8 or 4 bits; norms and biases in the compute dtype
        dtype = torch.float32 if mm.is_device_cpu(load_device) else torch.float16
        model_options["compute_dtype"] = dtype
        ops = quantize.quantized_operations(dtype_name)
        model_options["custom_operations"] = type(f"Quantized_{dtype_name}", (comfy.ops.manual_cast,),
                                                  {"Linear": ops.Linear, "Embedding": ops.Embedding})
    model_options["dtype"] = dtype
    target = comfy.supported_models_base.ClipTarget(KolorsTokenizer, kolors_text_encoder_class(te_config, tokenizer))
    parameters = _chatglm_parameters(te_config)
    clip = comfy.sd.CLIP(target, tokenizer_data={"chatglm3_tokenizer": tokenizer_bytes}, parameters=parameters,
                         model_options=model_options)
    sd = state_dict if state_dict is not None else chatglm3_weights(te_files)
    try:
        clip.load_sd(sd)
    except (KeyError, RuntimeError, ValueError) as e:
        raise KolorsFolderError(f"{te_files[0].parent}: the text encoder weights do not fit its config.json ({e})") \
            from e
    return clip


def text_encoder_dtype(load_device: torch.device) -> torch.dtype:
    """ChatGLM3's dtype for "auto": ComfyUI's choice for text encoders (fp16), except where ComfyUI itself runs on the
    CPU (--cpu), where fp32 is faster and gives the reference numbers. A GPU ComfyUI that keeps the text encoder on the
    CPU (--lowvram) gets ComfyUI's choice too: fp32 there would take about 25 GB of RAM."""
    if mm.is_device_cpu(mm.get_torch_device()):
        return torch.float32
    return mm.text_encoder_dtype(load_device)


def _chatglm_parameters(cfg: dict) -> int:
    hidden, ffn, layers = cfg["hidden_size"], cfg["ffn_hidden_size"], cfg["num_layers"]
    kv = cfg.get("kv_channels", hidden // cfg["num_attention_heads"]) * cfg.get("multi_query_group_num", 1) * 2
    per_layer = hidden * (hidden + kv) + hidden * hidden + hidden * ffn * 3
    return layers * per_layer + cfg.get("padded_vocab_size", 65024) * hidden


# ------------------------------------------------------------------------------------------------------ the VAE
def kolors_vae(vae_files: list[Path], vae_config: dict) -> comfy.sd.VAE:
    sd = read_weights(vae_files)
    if "decoder.up_blocks.0.resnets.0.norm1.weight" in sd:
        sd = comfy.diffusers_convert.convert_vae_state_dict(sd)
    ddconfig = configs.vae_settings(vae_config)
    vae = comfy.sd.VAE(sd=sd, config={"params": {"ddconfig": ddconfig, "embed_dim": ddconfig["z_channels"]}})
    missing = sorted(set(vae.first_stage_model.state_dict()) - set(sd))
    if missing:
        raise KolorsFolderError(f"{vae_files[0]}: the VAE weights do not fit vae/config.json (missing {missing[:3]})")
    return vae


TE_FP8 = "auto, text encoder fp8"  # the loader's dtype choice for GPUs under 16 GB
TE_QUANTIZED = {f"auto, text encoder {kind}": kind for kind in QUANTIZED}  # for GPUs of 8-12 GB


def load_kolors_folder(folder: KolorsFolder, dtype_name: str = "auto", text_encoder_device: str = "default"):
    """(MODEL, CLIP, VAE) of a Kolors folder in either layout. ``dtype_name``: auto, fp16, bf16, fp32, or
    TE_FP8 (UNet auto, ChatGLM3 stored in fp8) or one of TE_QUANTIZED (UNet auto, ChatGLM3 in 8 or 4 bits)."""
    if dtype_name == TE_FP8:
        unet_dtype, te_dtype = "auto", FP8
    elif dtype_name in TE_QUANTIZED:
        unet_dtype, te_dtype = "auto", TE_QUANTIZED[dtype_name]
    else:
        unet_dtype, te_dtype = dtype_name, dtype_name
    model = kolors_unet_from_diffusers(LazyWeights(folder.unet_files), folder.unet_config, folder.scheduler_config,
                                       unet_dtype, where=str(folder.root / "unet"))
    clip = kolors_clip(folder.text_encoder_files, folder.text_encoder_config, folder.tokenizer_model, te_dtype,
                       text_encoder_device)
    vae = kolors_vae(folder.vae_files, folder.vae_config)
    return model, clip, vae
