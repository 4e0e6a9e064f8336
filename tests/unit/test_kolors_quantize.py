"""ChatGLM3 in 8 and 4 bits (aesthete.kolors.quantize), without ComfyUI: the block formats round-trip within their
precision, the bytes held are the formats' sizes, the tiny ChatGLM3 quantized while it loads gives nearly the fp32
context, and the real ChatGLM3's shapes fit the issue's budget (4-bit at most 4 GB)."""

from __future__ import annotations

import math

import pytest
import torch
from aesthete.kolors.chatglm import ChatGLM3, load_chatglm_state_dict
from aesthete.kolors.folder import find_kolors_folder, read_weights
from aesthete.kolors.quantize import (BLOCK, chatglm3_bytes, dequantize, quantize, quantized_bytes,
                                      quantized_operations)
from aesthete.kolors.tokenizer import ChatGLM3Tokenizer
from devkit.kolors_models import RECIPE_PROMPT, tiny_kolors
from devkit.kolors_reference import real_chatglm3_keys

# relative error of a normal weight matrix after a round trip (measured: 0.5 % and 7.7 %)
WEIGHT_ERROR = {"q8_0": 0.01, "q4_1": 0.1}


@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
def test_round_trip_error_and_bytes(kind):
    weight = torch.randn(48, 3 * BLOCK + 5, generator=torch.manual_seed(0))  # a partial last block
    parts = quantize(weight, kind)
    back = dequantize(parts, kind, weight.shape[1], torch.float32)
    assert back.shape == weight.shape
    assert (back - weight).norm() / weight.norm() < WEIGHT_ERROR[kind]
    assert sum(t.numel() * t.element_size() for t in parts.values()) == quantized_bytes(*weight.shape, kind)
    # a block of equal values (zero range) stays exact and finite
    flat = quantize(torch.full((2, BLOCK), 0.25), kind)
    assert torch.allclose(dequantize(flat, kind, BLOCK, torch.float32), torch.full((2, BLOCK), 0.25), atol=1e-3)


def test_a_layer_quantizes_the_checkpoint_weight_as_it_loads():
    dense = torch.nn.Linear(64, 40)
    layer = quantized_operations("q4_1").Linear(64, 40)
    layer.load_state_dict(dense.state_dict())
    assert set(layer.state_dict()) == {"codes", "scale", "low", "bias"}
    x = torch.randn(3, 64)
    assert (layer(x) - dense(x)).norm() / dense(x).norm() < 0.1
    with pytest.raises(RuntimeError, match="size mismatch"):
        quantized_operations("q8_0").Linear(32, 40).load_state_dict(dense.state_dict())


@pytest.fixture(scope="module")
def tiny_chatglm():
    folder = find_kolors_folder(tiny_kolors("kolors", "fp32"), prefer_fp16=False)
    tokenizer = ChatGLM3Tokenizer.from_file(folder.tokenizer_model)
    ids = tokenizer.batch([tokenizer.encode(RECIPE_PROMPT), tokenizer.encode("a cat on a red chair")])
    return folder, read_weights(folder.text_encoder_files), ids


@pytest.mark.parametrize("kind, bound", [("q8_0", 0.01), ("q4_1", 0.1)])
def test_quantized_chatglm3_context_stays_close_to_fp32(tiny_chatglm, kind, bound):
    """The measured drift on the tiny random ChatGLM3 (docs/benchmarks.md gives it with the real-shaped layers of the
    benchmark): context and pooled within ``bound`` of fp32; every matrix and the embedding table held quantized."""
    folder, weights, ids = tiny_chatglm
    full = ChatGLM3(folder.text_encoder_config).eval()
    load_chatglm_state_dict(full, dict(weights))
    small = ChatGLM3(folder.text_encoder_config, operations=quantized_operations(kind)).eval()
    load_chatglm_state_dict(small, dict(weights))
    with torch.no_grad():
        (context, pooled), (ref_context, ref_pooled) = small(*ids), full(*ids)
    assert (context - ref_context).norm() / ref_context.norm() < bound
    assert (pooled - ref_pooled).norm() / ref_pooled.norm() < bound
    quantized = [m for m in small.modules() if hasattr(m, "codes")]  # the embedding in 8 bits in both modes
    assert len(quantized) == 1 + 4 * folder.text_encoder_config["num_layers"]  # embedding + 4 matrices per layer
    assert not any(p.dim() == 2 for p in small.parameters())  # no full-precision matrix left


def test_the_real_chatglm3_fits_the_budget_in_4_bits():
    """Bytes the real ChatGLM3-6B holds (its config's shapes, the LM head left out as the loader leaves it out, norms
    and biases in fp16): 4-bit at most 4 GB, 8-bit below fp16 by 45 %; a built layer holds what the count says."""
    shapes = {k: s for k, s in real_chatglm3_keys(prefix="").items() if "output_layer" not in k}
    fp16 = sum(2 * math.prod(s) for s in shapes.values())
    assert chatglm3_bytes(shapes, "q4_1") <= 4e9 < fp16
    assert chatglm3_bytes(shapes, "q8_0") < 0.55 * fp16
    layer = quantized_operations("q4_1").Linear(4096, 4608, bias=False)
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) == quantized_bytes(4608, 4096, "q4_1")


# --- GGUF: the same block formats as the gguf package (llama.cpp's reference), and ChatGLM3 GGUF files -------------
@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
def test_our_blocks_hold_what_the_gguf_package_quantizes(kind):
    """Our q8_0 / q4_1 are GGUF's Q8_0 / Q4_1: on a real-shaped ChatGLM3 matrix the numbers they give back equal the
    gguf package's own quantizer's, except where a value sits on a rounding edge (theirs rounds with the fp32 scale,
    ours with the stored fp16 one), and there by one step at most; the bytes are GGUF's."""
    import gguf

    weight = 0.02 * torch.randn(512, 4096, generator=torch.manual_seed(1))
    qtype = gguf.GGMLQuantizationType[kind.upper()]
    packed = gguf.quants.quantize(weight.numpy(), qtype)
    theirs = torch.from_numpy(gguf.quants.dequantize(packed, qtype))
    ours = dequantize(quantize(weight, kind), kind, weight.shape[1], torch.float32)
    step = (weight.reshape(512, -1, BLOCK).abs().amax(-1) / (127 if kind == "q8_0" else 7.5)).repeat_interleave(BLOCK, 1)
    differ = (ours - theirs).abs() > 1e-7
    assert differ.float().mean() < 0.01
    assert ((ours - theirs).abs() <= step * 1.01 + 1e-7).all()
    assert packed.nbytes == quantized_bytes(*weight.shape, kind)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "F16"])
def test_a_chatglm3_gguf_file_reads_as_chatglm3_weights(kind):
    """A ChatGLM3 GGUF as llama.cpp writes it (written here by the gguf package) reads under ChatGLM3's own names and
    shapes, every tensor within its type's precision of the fp16 weights it was made from; the tiny ChatGLM3 loads it
    and its context stays close to the fp16 file's."""
    from aesthete.kolors.folder import chatglm3_weights
    from devkit.kolors_models import tiny_chatglm3_gguf

    folder = find_kolors_folder(tiny_kolors("kolors", "fp16"))
    original = {k: v for k, v in read_weights(folder.text_encoder_files).items() if "rotary" not in k}
    lazy = chatglm3_weights([tiny_chatglm3_gguf(kind)])
    assert {k: tuple(lazy[k].shape) for k in lazy} == {k: tuple(v.shape) for k, v in original.items()}
    bound = {"Q8_0": 0.01, "Q4_1": 0.1, "F16": 1e-6}[kind]
    loaded = {k: lazy.take(k) for k in list(lazy)}
    for key, tensor in original.items():
        assert (loaded[key].float() - tensor.float()).norm() / tensor.float().norm() <= bound, key
    tokenizer = ChatGLM3Tokenizer.from_file(folder.tokenizer_model)
    ids = tokenizer.batch([tokenizer.encode(RECIPE_PROMPT)])
    from_gguf, from_file = ChatGLM3(folder.text_encoder_config).eval(), ChatGLM3(folder.text_encoder_config).eval()
    load_chatglm_state_dict(from_gguf, {k: v.float() for k, v in loaded.items()})
    load_chatglm_state_dict(from_file, {k: v.float() for k, v in original.items()})
    with torch.no_grad():
        context, ref = from_gguf(*ids)[0], from_file(*ids)[0]
    assert (context - ref).norm() / ref.norm() < max(bound, 1e-5) * 2


def test_a_q8_0_gguf_loaded_in_q8_0_keeps_its_numbers():
    """GGUF's Q8_0 blocks re-quantized into ours give back the same codes and scales: the quantized ChatGLM3 built from
    a Q8_0 file computes what the file's numbers compute in full precision."""
    from aesthete.kolors.folder import chatglm3_weights
    from devkit.kolors_models import tiny_chatglm3_gguf

    folder = find_kolors_folder(tiny_kolors("kolors", "fp16"))
    path = tiny_chatglm3_gguf("Q8_0")
    full = ChatGLM3(folder.text_encoder_config).eval()
    load_chatglm_state_dict(full, chatglm3_weights([path]))
    small = ChatGLM3(folder.text_encoder_config, operations=quantized_operations("q8_0")).eval()
    load_chatglm_state_dict(small, chatglm3_weights([path]))
    tokenizer = ChatGLM3Tokenizer.from_file(folder.tokenizer_model)
    ids = tokenizer.batch([tokenizer.encode(RECIPE_PROMPT)])
    with torch.no_grad():
        (context, pooled), (ref, ref_pooled) = small(*ids), full(*ids)
    assert torch.allclose(context, ref, atol=1e-5, rtol=1e-4) and torch.allclose(pooled, ref_pooled, atol=1e-5)


def test_a_gguf_of_another_model_or_a_truncated_one_is_a_clear_error(tmp_path):
    import gguf
    import numpy as np
    from aesthete.kolors.folder import KolorsFolderError
    from aesthete.kolors.folder import chatglm3_weights

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(KolorsFolderError, match="llama model, not ChatGLM3"):
        chatglm3_weights([path])
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(KolorsFolderError, match="not a readable GGUF"):
        chatglm3_weights([tmp_path / "broken.gguf"])
    from devkit.kolors_models import tiny_chatglm3_gguf

    whole = tiny_chatglm3_gguf("Q8_0").read_bytes()
    (tmp_path / "truncated.gguf").write_bytes(whole[:-5000])
    with pytest.raises(KolorsFolderError, match="truncated.gguf: not a readable GGUF file"):
        chatglm3_weights([tmp_path / "truncated.gguf"])
