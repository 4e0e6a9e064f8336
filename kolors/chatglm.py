"""ChatGLM3, Kolors's text encoder, as a plain torch module (no ComfyUI import).

Numerically the text-encoder half of diffusers' ``KolorsPipeline.encode_prompt``
(``diffusers.pipelines.kolors.text_encoder.ChatGLMModel``): same weights, same masks, same rotary
embedding, same outputs. Written in the manner of ComfyUI's ``comfy/text_encoders/llama.py``: the
caller passes an ``operations`` namespace (``comfy.ops.manual_cast`` in the server, plain torch here)
so that the same module runs under ComfyUI's weight casting and offloading.

Layout differences from the reference, none of which changes a number:
- batch-first tensors ([B, L, H]) instead of ChatGLM's sequence-first ones;
- the LM head (``output_layer``, 65024 x 4096) is not built: Kolors never uses it;
- the last layer runs only for the last token, the one Kolors pools (the context is the input of the
  last layer, ``hidden_states[-2]``), unless the caller asks for the last layer's output itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..common.tensors import load_into_module

log = logging.getLogger(__name__)

# Keys a ChatGLM3 checkpoint holds that this module does not: the LM head (never used for image
# conditioning) and the rotary table (recomputed from the config).
IGNORED_KEYS = ("transformer.output_layer.weight", "transformer.rotary_pos_emb.inv_freq")

# the key every ChatGLM checkpoint has, used to find the prefix a file stores its keys under
_ANCHOR_KEY = "embedding.word_embeddings.weight"


class RMSNorm(nn.Module):
    """ChatGLM's RMSNorm: normalises in fp32 and casts the product with the weight back to the input dtype."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(normalized_shape, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return (self.weight * (x * torch.rsqrt(variance + self.eps))).to(x.dtype)


def _torch_operations() -> SimpleNamespace:
    return SimpleNamespace(Linear=nn.Linear, Embedding=nn.Embedding, RMSNorm=RMSNorm, LayerNorm=nn.LayerNorm)


class _Config:
    """The fields of a ChatGLM ``config.json`` this module reads, with ChatGLMConfig's defaults."""

    def __init__(self, config: dict):
        get = config.get
        self.num_layers = int(get("num_layers", 28))
        self.hidden_size = int(get("hidden_size", 4096))
        self.ffn_hidden_size = int(get("ffn_hidden_size", 13696))
        self.num_attention_heads = int(get("num_attention_heads", 32))
        kv_channels = get("kv_channels", 128)
        self.head_dim = int(kv_channels) if kv_channels is not None else self.hidden_size // self.num_attention_heads
        self.multi_query_attention = bool(get("multi_query_attention", False))
        self.kv_groups = int(get("multi_query_group_num", 1)) if self.multi_query_attention else self.num_attention_heads
        self.vocab_size = int(get("padded_vocab_size", get("vocab_size", 65024)))
        self.eps = float(get("layernorm_epsilon", 1e-5))
        self.rmsnorm = bool(get("rmsnorm", True))
        self.qkv_bias = bool(get("add_bias_linear", False) or get("add_qkv_bias", False))
        self.linear_bias = bool(get("add_bias_linear", False))
        self.residual_post_norm = bool(get("apply_residual_connection_post_layernorm", False))
        self.post_layer_norm = bool(get("post_layer_norm", True))
        # ChatGLM3's own code scales the RoPE base by rope_ratio (the 32k variants); absent in Kolors's config
        self.rope_base = 10000.0 * float(get("rope_ratio", 1.0) or 1.0)
        if get("pre_seq_len") is not None:
            raise ValueError("ChatGLM config: pre_seq_len (a P-tuning prefix) is set; Kolors's text encoder has none, "
                             "use the text_encoder/config.json of the Kolors folder")
        if self.num_attention_heads % self.kv_groups:
            raise ValueError(f"ChatGLM config: num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"multi_query_group_num {self.kv_groups}")


def _rope(position_ids: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, L, 1, head_dim // 4]: ChatGLM rotates the first half of each head, in interleaved pairs."""
    n_elem = head_dim // 2
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=position_ids.device) / n_elem))
    angles = position_ids.to(torch.float)[..., None] * theta
    cos, sin = torch.cos(angles), torch.sin(angles)
    if dtype in (torch.float16, torch.bfloat16):
        # the reference keeps its rotary table in the model's dtype ("to mimic complex32")
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos[:, :, None, :], sin[:, :, None, :]


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, head_dim]."""
    rot_dim = cos.shape[-1] * 2
    x, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    pairs = x.reshape(*x.shape[:-1], rot_dim // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(3)
    return torch.cat((rotated, x_pass), dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, cfg: _Config, device, dtype, ops):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.kv_groups = cfg.kv_groups
        self.head_dim = cfg.head_dim
        self.multi_query = cfg.multi_query_attention
        inner = self.heads * self.head_dim
        qkv = inner + 2 * self.kv_groups * self.head_dim
        self.query_key_value = ops.Linear(cfg.hidden_size, qkv, bias=cfg.qkv_bias, device=device, dtype=dtype)
        self.dense = ops.Linear(inner, cfg.hidden_size, bias=cfg.linear_bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, rope: tuple, mask: torch.Tensor | None, last_only: bool = False) -> torch.Tensor:
        """x [B, L, H]; mask: bool [B, 1, Lq, L], True = may attend, None = causal. last_only: queries of the
        last position only (mask then [B, 1, 1, L] or None for all keys)."""
        b, length, _ = x.shape
        mixed = self.query_key_value(x)
        if self.multi_query:
            q, k, v = mixed.split([self.heads * self.head_dim, self.kv_groups * self.head_dim,
                                   self.kv_groups * self.head_dim], dim=-1)
            q = q.view(b, length, self.heads, self.head_dim)
            k = k.view(b, length, self.kv_groups, self.head_dim)
            v = v.view(b, length, self.kv_groups, self.head_dim)
        else:
            # without multi-query attention ChatGLM interleaves q, k, v per head
            q, k, v = mixed.view(b, length, self.heads, 3 * self.head_dim).split(self.head_dim, dim=-1)
        cos, sin = rope
        if last_only:
            q = _apply_rope(q[:, -1:], cos[:, -1:], sin[:, -1:])
        else:
            q = _apply_rope(q, cos, sin)
        k = _apply_rope(k, cos, sin)
        if self.kv_groups != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_groups, dim=2)
            v = v.repeat_interleave(self.heads // self.kv_groups, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and not last_only)
        return self.dense(out.transpose(1, 2).reshape(b, q.shape[2], self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: _Config, device, dtype, ops):
        super().__init__()
        self.dense_h_to_4h = ops.Linear(cfg.hidden_size, cfg.ffn_hidden_size * 2, bias=cfg.linear_bias,
                                        device=device, dtype=dtype)
        self.dense_4h_to_h = ops.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.linear_bias,
                                        device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


def _norm(cfg: _Config, device, dtype, ops) -> nn.Module:
    if cfg.rmsnorm:
        return ops.RMSNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)
    return ops.LayerNorm(cfg.hidden_size, eps=cfg.eps, device=device, dtype=dtype)


class GLMBlock(nn.Module):
    def __init__(self, cfg: _Config, device, dtype, ops):
        super().__init__()
        self.residual_post_norm = cfg.residual_post_norm
        self.input_layernorm = _norm(cfg, device, dtype, ops)
        self.self_attention = SelfAttention(cfg, device, dtype, ops)
        self.post_attention_layernorm = _norm(cfg, device, dtype, ops)
        self.mlp = MLP(cfg, device, dtype, ops)

    def forward(self, x: torch.Tensor, rope: tuple, mask: torch.Tensor | None, last_only: bool = False):
        normed = self.input_layernorm(x)
        attn = self.self_attention(normed, rope, mask, last_only=last_only)
        if last_only:
            x, normed = x[:, -1:], normed[:, -1:]
        x = (normed if self.residual_post_norm else x) + attn
        normed = self.post_attention_layernorm(x)
        return (normed if self.residual_post_norm else x) + self.mlp(normed)


class _Embedding(nn.Module):
    def __init__(self, cfg: _Config, device, dtype, ops):
        super().__init__()
        self.word_embeddings = ops.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)


class _Encoder(nn.Module):
    def __init__(self, cfg: _Config, device, dtype, ops):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(cfg, device, dtype, ops) for _ in range(cfg.num_layers)])
        if cfg.post_layer_norm:
            # kept so that checkpoints load strictly; Kolors uses hidden states from before it
            self.final_layernorm = _norm(cfg, device, dtype, ops)


class _Transformer(nn.Module):
    def __init__(self, cfg: _Config, device, dtype, ops):
        super().__init__()
        self.embedding = _Embedding(cfg, device, dtype, ops)
        self.encoder = _Encoder(cfg, device, dtype, ops)


def _attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The reference's mask (ChatGLMPreTrainedModel.get_masks), as bool [B, 1, Lq, L], True = may attend.

    A real token attends causally to the real tokens; a padding position attends to EVERY position, the
    later real tokens included (get_masks adds 1 to the rows of padding queries). The padding positions'
    states are part of the 256-token context the UNet sees, so this is reproduced, not cleaned up."""
    valid = attention_mask.to(torch.bool)
    length = valid.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril_()
    mask = (causal[None] & valid[:, None, :]) | ~valid[:, :, None]
    return mask[:, None]


class ChatGLM3(nn.Module):
    """ChatGLM3 (Kolors's text encoder) returning what Kolors conditions on.

    ``config`` is the ``text_encoder/config.json`` contents. ``operations``: a namespace with ``Linear``,
    ``Embedding`` and ``RMSNorm`` (and ``LayerNorm`` for a config with ``rmsnorm: false``), for example
    ``comfy.ops.manual_cast``; None builds plain torch modules with ChatGLM's own RMSNorm. Parameter names
    are the checkpoint keys (``transformer.encoder.layers.0.self_attention.query_key_value.weight``...);
    load a checkpoint with :func:`load_chatglm_state_dict`."""

    def __init__(self, config: dict, dtype=None, device=None, operations=None):
        super().__init__()
        ops = _torch_operations()
        if operations is not None:
            ops = SimpleNamespace(**{name: getattr(operations, name, getattr(ops, name))
                                     for name in ("Linear", "Embedding", "RMSNorm", "LayerNorm")})
        self.config = _Config(config)
        self.num_layers = self.config.num_layers
        self.dtype = dtype
        self.transformer = _Transformer(self.config, device, dtype, ops)

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.embedding.word_embeddings

    def _embed(self, input_ids: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """The embedding rows of ``input_ids``. With fp8 storage (and a compute ``dtype``) the rows are read in the
        compute dtype: CUDA's embedding lookup has no fp8 kernel. ComfyUI's operations cast the table for it
        (``out_dtype``, as ComfyUI's own text encoders ask); plain torch modules are read as bytes."""
        embedding = self.get_input_embeddings()
        weight = getattr(embedding, "weight", None)
        if weight is None:  # a quantized table (kolors.quantize) dequantizes the rows it reads
            return embedding(input_ids, out_dtype=dtype)
        if dtype is None or weight.element_size() != 1 or not weight.is_floating_point():
            return embedding(input_ids)
        if hasattr(embedding, "comfy_cast_weights"):
            return embedding(input_ids, out_dtype=dtype)
        rows = F.embedding(input_ids.to(weight.device), weight.view(torch.uint8))
        return rows.view(weight.dtype).to(input_ids.device, dtype)

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, intermediate_output: int = -2,
                embeds: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask (1 = token, 0 = padding), position_ids: [B, L] as
        :meth:`ChatGLM3Tokenizer.batch` makes them (attention_mask None: no padding; position_ids None: counted
        from the attention mask as the tokenizer counts them with left padding). ``embeds`` [B, L, H]
        replaces the embedding lookup; ``dtype`` is the compute dtype (default: the embedding's; another one
        needs operations that cast the weights, such as ``comfy.ops.manual_cast``).

        Returns (context [B, L, H], pooled [B, H]): context = hidden state ``intermediate_output`` of the
        reference's ``hidden_states`` tuple (embeddings, then each layer's output, all before the final
        norm; -2 = the input of the last layer, what Kolors uses); pooled = the last layer's output at the
        last position, before the final norm (the reference's ``hidden_states[-1][-1]``)."""
        x = embeds if embeds is not None else self._embed(input_ids, dtype)
        if dtype is not None:
            x = x.to(dtype)
        b, length, _ = x.shape
        n = self.num_layers
        wanted = intermediate_output + n + 1 if intermediate_output < 0 else intermediate_output
        if not 0 <= wanted <= n:
            raise ValueError(f"intermediate_output {intermediate_output}: ChatGLM3 has hidden states 0..{n} "
                             f"(or -{n + 1}..-1)")
        if position_ids is None and attention_mask is not None:
            # what the tokenizer gives with left padding: 0 on the padding, 0, 1, 2... on the tokens
            position_ids = (attention_mask.to(x.device).long().cumsum(-1) - 1).clamp(min=0)
        elif position_ids is None:
            position_ids = torch.arange(length, device=x.device).expand(b, length)
        rope = _rope(position_ids.to(x.device), self.config.head_dim, self.config.rope_base, x.dtype)
        # like the reference: no padding -> plain causal attention
        padded = attention_mask is not None and not bool(attention_mask.all())
        mask = _attention_mask(attention_mask.to(x.device)) if padded else None
        last_mask = mask[:, :, -1:] if padded else None

        context = x if wanted == 0 else None
        layers = self.transformer.encoder.layers
        for index, layer in enumerate(layers[:-1], start=1):
            x = layer(x, rope, mask)
            if index == wanted:
                context = x
        if wanted == n:
            context = layers[-1](x, rope, mask)
            pooled = context[:, -1]
        else:
            pooled = layers[-1](x, rope, last_mask, last_only=True)[:, -1]
        return context, pooled


def _own_names(sd: Mapping, prefix: str | None = None) -> dict[str, str]:
    """This module's name of each key -> the file's: whatever prefix the file stores them under becomes
    ``transformer.``."""
    if prefix is None:
        anchors = [k for k in sd if k.endswith(_ANCHOR_KEY)]
        if not anchors:
            raise KeyError(f"not a ChatGLM3 state dict: no '{_ANCHOR_KEY}' key among {len(sd)} keys (first: "
                           f"{sorted(sd)[:3]}); pick the text encoder's weights (ChatGLM3, Kolors's text_encoder)")
        prefix = min(anchors, key=len)[: -len(_ANCHOR_KEY)]
    return {"transformer." + k[len(prefix):]: k for k in sd if k.startswith(prefix)}


def load_chatglm_state_dict(model: ChatGLM3, sd: Mapping, prefix: str | None = None) -> list[str]:
    """Loads ``sd`` into ``model`` strictly, except :data:`IGNORED_KEYS`; returns the ignored keys found.

    Keys may sit under any prefix (``transformer.`` as in Kolors's shards and chatglm3-6b, none as diffusers'
    ChatGLMModel saves them, or an outer one such as ``text_encoders.chatglm3.transformer.``); ``prefix``
    names it explicitly (the part before ``embedding.word_embeddings.weight``), otherwise it is found from
    that key. Keys outside the prefix are left out. Raises KeyError naming the missing
    and unexpected keys, ValueError naming a key whose shape differs. ``sd`` may be a
    :class:`~aesthete.common.tensors.LazyWeights`: each tensor is then read just as it is copied in (the ignored ones
    never), so loading holds one file tensor beside the model, not the whole file."""
    names = _own_names(sd, prefix)
    ignored = sorted(k for k in names if k in IGNORED_KEYS)
    names = {k: v for k, v in names.items() if k not in IGNORED_KEYS}
    take = getattr(sd, "take", sd.__getitem__)
    report = load_into_module(model, list(names), lambda key: take(names[key]))
    if report.missing or report.unexpected:
        parts = []
        if report.missing:
            parts.append(f"{len(report.missing)} missing (first: {', '.join(sorted(report.missing)[:5])})")
        if report.unexpected:
            parts.append(f"{len(report.unexpected)} unexpected (first: {', '.join(sorted(report.unexpected)[:5])})")
        raise KeyError(f"ChatGLM3 weights do not fit its config: {'; '.join(parts)}. Check that the weight files "
                       f"and config.json come from the same text encoder (ChatGLM3-6B / Kolors text_encoder), all "
                       f"shards present; quantized (4/8-bit) ChatGLM files are not supported here")
    if report.errors:
        raise ValueError(f"ChatGLM3 weights: {report.errors[0].strip()}; use the config.json of the same model")
    return ignored
