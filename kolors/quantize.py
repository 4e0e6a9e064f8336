"""8-bit and 4-bit weight-only storage for ChatGLM3 in plain torch: no compiled kernel, so the same code runs on a
CPU and on any CUDA GPU (old or new). No ComfyUI import.

The formats are GGUF's simplest block formats, the ones ComfyUI-GGUF dequantizes in torch the same way: weights are
cut into blocks of 32 along the input features, and each block keeps

- ``q8_0``: 32 signed bytes and one fp16 scale (value = q * scale): 8.5 bits per weight;
- ``q4_1``: 32 four-bit codes packed two to a byte, an fp16 scale and an fp16 minimum (value = q * scale + min):
  5 bits per weight.

The token table is kept in 8 bits in both modes. A layer keeps only the codes and scales; its forward dequantizes its own weight into the compute dtype just before
the matrix product and drops it afterwards, so at most one layer's weight exists in full precision at a time.
Quantization happens while a checkpoint is loaded (``_load_from_state_dict``): a fp16/bf16/fp32 ChatGLM3 file goes in,
the quantized model comes out, one tensor at a time.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 32
KINDS = ("q8_0", "q4_1")
_BITS = {"q8_0": 8, "q4_1": 4}
_SCALES = {"q8_0": 1, "q4_1": 2}  # fp16 numbers per block: the scale (and the minimum)


def quantized_bytes(rows: int, columns: int, kind: str) -> int:
    """Bytes one [rows, columns] weight takes in ``kind`` (columns padded to whole blocks)."""
    blocks = -(-columns // BLOCK)
    return rows * blocks * (BLOCK * _BITS[kind] // 8 + 2 * _SCALES[kind])


ROWS_AT_ONCE = 512  # rows quantized together: the fp32 temporaries stay near 512 x columns x 4 bytes a few times


def quantize(weight: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """The codes and scales of a 2-D ``weight`` (computed in fp32 on the weight's device, ROWS_AT_ONCE rows at a time,
    so quantizing ChatGLM3's largest matrix does not hold several fp32 copies of it)."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")
    chunks = [_quantize_rows(weight[i:i + ROWS_AT_ONCE], kind) for i in range(0, weight.shape[0], ROWS_AT_ONCE)]
    return {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}


def _quantize_rows(weight: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    rows, columns = weight.shape
    pad = -columns % BLOCK
    w = F.pad(weight.float(), (0, pad)).reshape(rows, -1, BLOCK)
    if kind == "q8_0":
        scale = w.abs().amax(-1, keepdim=True) / 127
        scale16 = scale.half()
        codes = torch.round(w / scale16.float().clamp_min(1e-30)).clamp(-127, 127).to(torch.int8)
        return {"codes": codes.reshape(rows, -1), "scale": scale16.squeeze(-1)}
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale16, low16 = ((high - low) / 15).half(), low.half()
    codes = torch.round((w - low16.float()) / scale16.float().clamp_min(1e-30)).clamp(0, 15).to(torch.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return {"codes": packed.reshape(rows, -1), "scale": scale16.squeeze(-1), "low": low16.squeeze(-1)}


def dequantize(parts: dict[str, torch.Tensor], kind: str, columns: int, dtype: torch.dtype) -> torch.Tensor:
    """The [rows, columns] weight in ``dtype`` from :func:`quantize`'s parts."""
    codes, scale = parts["codes"], parts["scale"]
    rows = codes.shape[0]
    # one full-size tensor, scaled in place: the weight is written once (half the memory traffic of w * scale)
    if kind == "q8_0":
        w = codes.reshape(rows, -1, BLOCK).to(dtype)
        w.mul_(scale.to(dtype).unsqueeze(-1))
    else:
        packed = codes.reshape(rows, -1, BLOCK // 2)
        w = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(rows, -1, BLOCK).to(dtype)
        w.mul_(scale.to(dtype).unsqueeze(-1)).add_(parts["low"].to(dtype).unsqueeze(-1))
    return w.reshape(rows, -1)[:, :columns]


class _Quantized(nn.Module):
    """Holds one weight as codes and scales (buffers, so ``.to(device)`` and ``state_dict`` carry them); the
    checkpoint's full-precision ``weight`` is quantized as it is loaded."""

    kind = "q8_0"

    def _init_weight(self, rows: int, columns: int, device) -> None:
        self.rows, self.columns = rows, columns
        blocks = -(-columns // BLOCK)
        code_dtype = torch.int8 if self.kind == "q8_0" else torch.uint8
        self.register_buffer("codes", torch.empty(rows, blocks * BLOCK * _BITS[self.kind] // 8, dtype=code_dtype,
                                                  device=device))
        self.register_buffer("scale", torch.empty(rows, blocks, dtype=torch.float16, device=device))
        if self.kind == "q4_1":
            self.register_buffer("low", torch.empty(rows, blocks, dtype=torch.float16, device=device))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        if key in state_dict:
            weight = state_dict.pop(key)
            if tuple(weight.shape) != (self.rows, self.columns):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, the "
                                  f"model's is {(self.rows, self.columns)}")
            else:
                for name, tensor in quantize(weight.to(self.codes.device), self.kind).items():
                    state_dict[prefix + name] = tensor
        elif prefix + "codes" not in state_dict:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        parts = {name: getattr(self, name) for name in ("codes", "scale", "low") if hasattr(self, name)}
        return dequantize(parts, self.kind, self.columns, dtype)


class QuantizedLinear(_Quantized):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_weight(out_features, in_features, device)
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.dequantized(x.dtype), bias)


class QuantizedEmbedding(_Quantized):
    """The embedding table quantized by rows; a lookup dequantizes only the rows it reads."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self._init_weight(num_embeddings, embedding_dim, device)

    def forward(self, input_ids: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        ids = input_ids.to(self.codes.device)
        parts = {name: getattr(self, name)[ids.reshape(-1)] for name in ("codes", "scale", "low") if hasattr(self, name)}
        rows = dequantize(parts, self.kind, self.columns, out_dtype or self.dtype or torch.float32)
        return rows.reshape(*ids.shape, self.columns)


EMBEDDING_KIND = "q8_0"  # the token table stays in 8 bits in both modes


def quantized_operations(kind: str) -> SimpleNamespace:
    """``Linear`` classes that store their weights in ``kind`` and an ``Embedding`` in 8 bits, for ChatGLM3's
    ``operations`` (norms and biases stay in the model's dtype). The token table is kept in 8 bits also in 4-bit mode:
    on the tiny ChatGLM3 it cuts the 4-bit context's drift from 10.5 % to 7.0 % for 4 % more bytes (0.12 GB of the
    real encoder's 3.9 GB)."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")
    linear = type(f"QuantizedLinear_{kind}", (QuantizedLinear,), {"kind": kind})
    embedding = type(f"QuantizedEmbedding_{EMBEDDING_KIND}", (QuantizedEmbedding,), {"kind": EMBEDDING_KIND})
    return SimpleNamespace(Linear=linear, Embedding=embedding)


def chatglm3_bytes(shapes: dict[str, tuple[int, ...]], kind: str) -> int:
    """Bytes a ChatGLM3 of these weight shapes ({name: shape}, the LM head left out) holds in ``kind``: matrices in
    ``kind``, the token table in 8 bits, norms and biases in fp16."""
    total = 0
    for name, shape in shapes.items():
        if len(shape) != 2:
            total += 2 * shape[0]
        else:
            total += quantized_bytes(*shape, EMBEDDING_KIND if "word_embeddings" in name else kind)
    return total
