"""Kolors's text encoder: ChatGLM3 and its tokenizer give the reference's numbers.

The reference is diffusers' KolorsPipeline.encode_prompt with its ChatGLMModel and ChatGLMTokenizer; both
sides get the same tiny random weights and the same tiny sentencepiece model."""

from __future__ import annotations

import copy
import io
import logging
from types import SimpleNamespace

import pytest
import torch

from aesthete.kolors.chatglm import IGNORED_KEYS, ChatGLM3, load_chatglm_state_dict
from aesthete.kolors.tokenizer import ChatGLM3Tokenizer

diffusers_kolors = pytest.importorskip("diffusers.pipelines.kolors")
sentencepiece = pytest.importorskip("sentencepiece")

RECIPE_PROMPT = "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"
TRAINING_LINES = [
    RECIPE_PROMPT,
    "一个蓝发少女站在花田里，杰作，最好的质量，精致的脸",
    "低质量，模糊，畸形的手，多余的手指，水印",
    "a girl with blue hair standing in a field of flowers, masterpiece, best quality",
    "portrait of an old man, oil painting, dramatic lighting, 4k",
    "The quick brown fox jumps over the lazy dog.",
]
PROMPTS = {
    "chinese": "一个蓝发少女站在花田里，杰作",
    "english": "portrait of an old man, oil painting, dramatic lighting",
    "mixed": RECIPE_PROMPT,
    "empty": "",
    "odd": "  spaces  and\nnewlines <unk> </s> [gMASK] sop <|user|> Ω☃ 123 ",
    "long": "genshin impact, 蓝发少女, " * 60,
}
CONFIG = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, kv_channels=16, num_attention_heads=4,
              multi_query_attention=True, multi_query_group_num=2, seq_length=256, original_rope=True,
              add_qkv_bias=True, add_bias_linear=False, rmsnorm=True, post_layer_norm=True,
              apply_residual_connection_post_layernorm=False, layernorm_epsilon=1e-5, use_cache=False)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    model = io.BytesIO()
    # byte_fallback like ChatGLM3's own model: characters outside the vocabulary become byte pieces
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TRAINING_LINES * 20), model_writer=model,
                                             vocab_size=420, model_type="bpe", character_coverage=1.0,
                                             byte_fallback=True, minloglevel=2)
    path = tmp_path_factory.mktemp("chatglm-tokenizer") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="module")
def reference_tokenizer(tokenizer_file):
    return diffusers_kolors.ChatGLMTokenizer(vocab_file=str(tokenizer_file))


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    return ChatGLM3Tokenizer.from_file(tokenizer_file)


@pytest.fixture(scope="module")
def config(tokenizer):
    return dict(CONFIG, padded_vocab_size=tokenizer.vocab_size + 8)


@pytest.fixture(scope="module")
def reference_model(config):
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    model = ChatGLMModel(ChatGLMConfig(**config)).eval()
    # ChatGLMModel leaves its weights uninitialised: set them
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


@pytest.fixture(scope="module")
def model(config, reference_model):
    ours = ChatGLM3(config).eval()
    load_chatglm_state_dict(ours, reference_model.state_dict())
    return ours


def reference_encode(reference_tokenizer, reference_model, prompts):
    """(context, pooled) from KolorsPipeline.encode_prompt itself (no UNet, VAE or scheduler needed for it)."""
    pipe = diffusers_kolors.KolorsPipeline(vae=None, text_encoder=reference_model, tokenizer=reference_tokenizer,
                                           unet=None, scheduler=None)
    with torch.no_grad():
        context, _, pooled, _ = pipe.encode_prompt(prompts, device=torch.device("cpu"),
                                                   do_classifier_free_guidance=False)
    return context, pooled


def encode(tokenizer, model, prompts, dtype=None):
    batch = tokenizer.batch([tokenizer.encode(p) for p in prompts])
    with torch.no_grad():
        return model(*batch, dtype=dtype)


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_token_ids_equal_the_reference_tokenizer(kind, tokenizer, reference_tokenizer):
    prompt = PROMPTS[kind]
    expected = reference_tokenizer(prompt, padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    input_ids, attention_mask, position_ids = tokenizer.batch([tokenizer.encode(prompt)])
    assert input_ids.tolist() == expected["input_ids"].tolist()
    assert attention_mask.tolist() == expected["attention_mask"].tolist()
    assert position_ids.tolist() == expected["position_ids"].tolist()
    assert tokenizer.vocab_size == reference_tokenizer.vocab_size
    assert tokenizer.pad_id == reference_tokenizer.pad_token_id
    assert tokenizer.prefix_ids == reference_tokenizer.get_prefix_tokens()


def test_a_long_prompt_keeps_the_prefix_and_loses_its_end(tokenizer):
    ids = tokenizer.encode(PROMPTS["long"])
    assert len(ids) > 256
    input_ids, attention_mask, position_ids = tokenizer.batch([ids])
    assert input_ids[0].tolist() == tokenizer.prefix_ids + ids[:254]
    assert attention_mask.all() and position_ids[0].tolist() == list(range(256))
    assert tokenizer.text_capacity(256) == 254


def test_decode_gives_back_the_text(tokenizer):
    input_ids, _, _ = tokenizer.batch([tokenizer.encode(PROMPTS["english"])])
    assert tokenizer.decode(input_ids[0]) == PROMPTS["english"]


def test_checkpoint_keys_are_the_reference_keys(model, reference_model):
    ours = set(model.state_dict())
    reference = {"transformer." + k for k in reference_model.state_dict()}
    assert reference - ours == set(IGNORED_KEYS)
    assert ours <= reference


def test_context_and_pooled_equal_encode_prompt(tokenizer, model, reference_tokenizer, reference_model):
    prompts = [PROMPTS["mixed"], PROMPTS["english"]]
    expected_context, expected_pooled = reference_encode(reference_tokenizer, reference_model, prompts)
    context, pooled = encode(tokenizer, model, prompts)
    assert context.shape == expected_context.shape == (2, 256, 64)
    assert pooled.shape == expected_pooled.shape == (2, 64)
    context_diff = (context - expected_context).abs().max().item()
    pooled_diff = (pooled - expected_pooled).abs().max().item()
    logging.getLogger(__name__).info("max |diff|: context %.3g, pooled %.3g", context_diff, pooled_diff)
    assert context_diff <= 1e-5 and pooled_diff <= 1e-5
    # the tolerance is small against the numbers compared
    assert expected_context.abs().max() > 1e-2 and expected_pooled.abs().max() > 1e-2


def test_pooled_is_taken_before_the_final_norm(tokenizer, model, reference_model):
    """The reference's hidden_states[-1] is the last layer's output before final_layernorm."""
    batch = tokenizer.batch([tokenizer.encode(PROMPTS["chinese"])])
    with torch.no_grad():
        out = reference_model(input_ids=batch[0], attention_mask=batch[1], position_ids=batch[2],
                              output_hidden_states=True)
        _, pooled = model(*batch)
    torch.testing.assert_close(pooled, out.hidden_states[-1][-1], atol=1e-5, rtol=0)
    assert not torch.allclose(pooled, out.last_hidden_state[-1], atol=1e-3)


def test_a_prompt_that_fills_all_256_tokens_equals_the_reference(tokenizer, model, reference_tokenizer,
                                                                  reference_model):
    """No padding at all takes the reference's other attention path (plain causal)."""
    expected_context, expected_pooled = reference_encode(reference_tokenizer, reference_model, [PROMPTS["long"]])
    context, pooled = encode(tokenizer, model, [PROMPTS["long"]])
    torch.testing.assert_close(context, expected_context, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=0)


def test_position_ids_default_to_the_tokenizers(tokenizer, model):
    input_ids, attention_mask, position_ids = tokenizer.batch([tokenizer.encode(p) for p in PROMPTS.values()])
    with torch.no_grad():
        expected = model(input_ids, attention_mask, position_ids)
        derived = model(input_ids, attention_mask, None)
    assert torch.equal(expected[0], derived[0]) and torch.equal(expected[1], derived[1])


@pytest.mark.parametrize("index", [0, 1, -1])
def test_other_hidden_states_equal_the_reference(index, tokenizer, model, reference_model):
    batch = tokenizer.batch([tokenizer.encode(PROMPTS["mixed"]), tokenizer.encode(PROMPTS["empty"])])
    with torch.no_grad():
        out = reference_model(input_ids=batch[0], attention_mask=batch[1], position_ids=batch[2],
                              output_hidden_states=True)
        context, _ = model(*batch, intermediate_output=index)
    torch.testing.assert_close(context, out.hidden_states[index].transpose(0, 1), atol=1e-5, rtol=0)


VARIANTS = {
    "plain multi-head attention": dict(multi_query_attention=False),
    "residual after the norm": dict(apply_residual_connection_post_layernorm=True),
    "layernorm, biases everywhere": dict(rmsnorm=False, add_bias_linear=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_chatglm_configs_equal_the_reference(variant, config, tokenizer, reference_tokenizer):
    """Options Kolors does not use, read from config.json all the same: weights and biases all random here."""
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    variant_config = dict(config, **VARIANTS[variant])
    reference = ChatGLMModel(ChatGLMConfig(**variant_config)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if name.endswith("layernorm.weight") else 0.02 * noise)
    ours = ChatGLM3(variant_config).eval()
    load_chatglm_state_dict(ours, reference.state_dict())
    prompts = [PROMPTS["mixed"], PROMPTS["empty"]]
    expected_context, expected_pooled = reference_encode(reference_tokenizer, reference, prompts)
    context, pooled = encode(tokenizer, ours, prompts)
    torch.testing.assert_close(context, expected_context, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_equals_the_reference_in_the_same_dtype(dtype, config, reference_model, tokenizer,
                                                              reference_tokenizer):
    """The reference keeps its rotary table in the model dtype; so does ChatGLM3, so half precision matches too."""
    reference_half = copy.deepcopy(reference_model).to(dtype)
    half = ChatGLM3(config, dtype=dtype).eval()
    load_chatglm_state_dict(half, reference_half.state_dict())
    prompts = [PROMPTS["mixed"], PROMPTS["empty"]]
    context, pooled = encode(tokenizer, half, prompts)
    assert context.dtype == pooled.dtype == dtype
    assert torch.isfinite(context).all() and torch.isfinite(pooled).all()
    expected_context, expected_pooled = reference_encode(reference_tokenizer, reference_half, prompts)
    # measured: equal to the bit; a little room for another CPU's kernels
    tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(context, expected_context, atol=tolerance * expected_context.abs().max().item(), rtol=0)
    torch.testing.assert_close(pooled, expected_pooled, atol=tolerance * expected_pooled.abs().max().item(), rtol=0)


def test_a_missing_key_is_named(config, reference_model):
    sd = {"transformer." + k: v for k, v in reference_model.state_dict().items()}
    del sd["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"]
    with pytest.raises(KeyError, match=r"missing.*transformer\.encoder\.layers\.1\.mlp\.dense_4h_to_h\.weight"):
        load_chatglm_state_dict(ChatGLM3(config), sd)


def test_an_unexpected_key_is_named(config, reference_model):
    sd = dict(reference_model.state_dict(), **{"encoder.layers.2.input_layernorm.weight": torch.ones(64)})
    with pytest.raises(KeyError, match=r"unexpected.*transformer\.encoder\.layers\.2\.input_layernorm\.weight"):
        load_chatglm_state_dict(ChatGLM3(config), sd)


def test_lm_head_and_rotary_table_are_ignored(config, reference_model):
    sd = {"transformer." + k: v for k, v in reference_model.state_dict().items()}
    assert {"transformer.output_layer.weight", "transformer.rotary_pos_emb.inv_freq"} <= set(sd)
    model = ChatGLM3(config)
    assert load_chatglm_state_dict(model, sd) == sorted(IGNORED_KEYS)
    assert not any("output_layer" in name or "rotary" in name for name in model.state_dict())


def test_keys_under_an_outer_prefix_load(config, reference_model, model):
    sd = {"text_encoders.chatglm3.transformer." + k: v for k, v in reference_model.state_dict().items()}
    other = ChatGLM3(config)
    load_chatglm_state_dict(other, sd)
    for name, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], value)


class _CountingLinear(torch.nn.Linear):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_custom_operations_are_used(config, reference_model, model, tokenizer):
    ops = SimpleNamespace(Linear=_CountingLinear, Embedding=torch.nn.Embedding, RMSNorm=torch.nn.RMSNorm)
    custom = ChatGLM3(config, operations=ops).eval()
    load_chatglm_state_dict(custom, reference_model.state_dict())
    assert isinstance(custom.transformer.encoder.layers[0].self_attention.dense, _CountingLinear)
    assert isinstance(custom.transformer.encoder.layers[0].input_layernorm, torch.nn.RMSNorm)
    context, pooled = encode(tokenizer, custom, [PROMPTS["mixed"]])
    expected_context, expected_pooled = encode(tokenizer, model, [PROMPTS["mixed"]])
    assert _CountingLinear.calls == 2 * 4
    torch.testing.assert_close(context, expected_context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=1e-5)


def test_a_broken_tokenizer_file_is_named(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="tokenizer.model"):
        ChatGLM3Tokenizer.from_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        ChatGLM3Tokenizer.from_file(tmp_path / "missing.model")


# Kolors's text_encoder/config.json (ChatGLM3-6B-base), the fields that decide the weights' names and shapes
KOLORS_TEXT_ENCODER_CONFIG = dict(num_layers=28, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128,
                                  num_attention_heads=32, multi_query_attention=True, multi_query_group_num=2,
                                  padded_vocab_size=65024, seq_length=32768, add_qkv_bias=True, add_bias_linear=False,
                                  rmsnorm=True, post_layer_norm=True, apply_residual_connection_post_layernorm=False,
                                  layernorm_epsilon=1e-5, original_rope=True, use_cache=True)


def test_the_full_size_key_and_shape_list_is_the_references():
    """Built on the meta device: no weights, only names and shapes."""
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    with torch.device("meta"):
        reference = ChatGLMModel(ChatGLMConfig(**KOLORS_TEXT_ENCODER_CONFIG))
        ours = ChatGLM3(KOLORS_TEXT_ENCODER_CONFIG)
    expected = {"transformer." + k: tuple(v.shape) for k, v in reference.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: v for k, v in expected.items() if k not in IGNORED_KEYS} == shapes
    assert len(shapes) == 2 + 28 * 7
    assert expected["transformer.output_layer.weight"] == (65024, 4096)
    # 5.98 B parameters: ChatGLM3-6B without its LM head (0.27 B)
    assert 5.9e9 < sum(p.numel() for p in ours.parameters()) < 6.1e9
