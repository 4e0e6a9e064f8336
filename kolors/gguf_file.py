"""ChatGLM3 weights from a GGUF file, read with the ``gguf`` package (llama.cpp's own reader, the one ComfyUI-GGUF
uses). No ComfyUI import.

Users share ChatGLM3-6B as GGUF files converted by llama.cpp (architecture ``chatglm``, tensors named ``token_embd``,
``blk.N.attn_qkv``, ...). The package maps those names back to ChatGLM3's own (``gguf.TensorNameMap``: the table
llama.cpp's converter wrote them with) and dequantizes every GGUF type it knows (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
Q5_*, the K-quants, ...) to numbers, one tensor at a time; the Kolors loaders then store them as the user chose
(fp16, fp32, or re-quantized in ``kolors.quantize``'s q8_0 / q4_1, which are GGUF's own block layouts, so a Q8_0 file
loaded as q8_0 keeps its numbers).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ARCHITECTURE = "chatglm"
_CHATGLM3_NAMES = ("embedding.word_embeddings.weight", "encoder.final_layernorm.weight", "output_layer.weight")
_LAYER_NAMES = ("input_layernorm.weight", "self_attention.query_key_value.weight",
                "self_attention.query_key_value.bias", "self_attention.dense.weight", "post_attention_layernorm.weight",
                "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")


class GGUFError(ValueError):
    """A file that is not a readable ChatGLM3 GGUF (the message names the file and what to do)."""


def _gguf():
    try:
        import gguf
    except ImportError as e:  # a dependency of the pack; an install that skipped it gets told how to fix it
        raise GGUFError("reading .gguf files needs the gguf package: pip install gguf") from e
    return gguf


class ChatGLM3GGUF:
    """The tensors of a ChatGLM3 GGUF file under ChatGLM3's names (``transformer.`` + the Hugging Face name):
    ``shapes`` for every tensor, ``tensor(name)`` dequantized to fp32 (F16 and BF16 tensors keep their dtype)."""

    def __init__(self, path: Path):
        gguf = _gguf()
        self.path = Path(path)
        try:
            reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError) as e:
            raise GGUFError(f"{self.path}: not a readable GGUF file ({e}); download it again") from e
        field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
        architecture = field.contents() if field is not None else None
        if architecture != ARCHITECTURE:
            raise GGUFError(f"{self.path}: a GGUF of a {architecture or 'unnamed'} model, not ChatGLM3 "
                            f"(architecture {ARCHITECTURE!r}); pick a ChatGLM3-6B GGUF or Kolors's text encoder")
        blocks = reader.get_field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=ARCHITECTURE))
        if blocks is None:
            raise GGUFError(f"{self.path}: no {ARCHITECTURE}.block_count in its metadata; download it again")
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.CHATGLM, int(blocks.contents()))
        ours = {}
        for name in (*_CHATGLM3_NAMES, *(f"encoder.layers.{i}.{n}" for i in range(int(blocks.contents()))
                                         for n in _LAYER_NAMES)):
            ours[names.get_name(name, try_suffixes=(".weight", ".bias"))] = "transformer." + name
        self._tensors = {}
        unknown = []
        for t in reader.tensors:
            if t.name in ours:
                self._tensors[ours[t.name]] = t
            elif not t.name.startswith("rope"):
                unknown.append(t.name)
        if unknown:
            raise GGUFError(f"{self.path}: tensors ChatGLM3 has not ({', '.join(unknown[:3])}); pick a ChatGLM3-6B "
                            f"GGUF")
        self._gguf = gguf

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        # GGUF keeps dimensions fastest-first (columns first); torch's order is the reverse
        return {name: tuple(int(n) for n in reversed(t.shape)) for name, t in self._tensors.items()}

    def dtype(self, name: str) -> torch.dtype:
        kind = self._tensors[name].tensor_type
        types = self._gguf.GGMLQuantizationType
        return {types.F16: torch.float16, types.BF16: torch.bfloat16}.get(kind, torch.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def tensor(self, name: str) -> torch.Tensor:
        t = self._tensors[name]
        shape = self.shapes[name]
        types = self._gguf.GGMLQuantizationType
        if t.tensor_type == types.BF16:
            return torch.from_numpy(np.ascontiguousarray(t.data).view(np.int16)).view(torch.bfloat16).reshape(shape)
        if t.tensor_type in (types.F16, types.F32):
            return torch.from_numpy(np.array(t.data)).reshape(shape)
        try:
            values = self._gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFError(f"{self.path}: {name} is stored as {t.tensor_type.name}, which the gguf package cannot "
                            f"read; use a file in another type (Q8_0, Q4_K_M, F16, ...)") from e
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)
