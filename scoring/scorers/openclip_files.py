"""open_clip ViT-H/14 files (HPSv2, HPSv2.1, LAION's CLIP ViT-H/14) read into a transformers ``CLIPModel``, and
open_clip's tokenizer made from its ``bpe_simple_vocab_16e6.txt.gz``.

Why convert instead of depending on open_clip: the two models are the same math (pre-norm transformer blocks with
exact GELU, a class token, ``ln_post`` on the pooled token then ``proj``; a causal text transformer pooled at the end
token then ``text_projection``), the attention's fused ``in_proj`` splits into q, k, v, and the projections are
transposed. The converted model runs on the speed path the other CLIP scorers use (``speed.FastScorer``) and needs
no new dependency; the tests hold it to DiffSynth's open_clip within float rounding.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import tempfile
from pathlib import Path

import torch

from .errors import ScorerFileError
from .weights import REDOWNLOAD, load_strict

# open_clip's ViT-H-14 (model_configs/ViT-H-14.json)
VIT_H_14 = {"embed_dim": 1024, "vision": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                                          "patch_size": 14},
            "text": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}

BLOCK_PARTS = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
               "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def clip_config(arch: dict = VIT_H_14):
    from transformers import CLIPConfig

    v, t = arch["vision"], arch["text"]
    return CLIPConfig(
        text_config=dict(vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
                         num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                         max_position_embeddings=t["context_length"], hidden_act="gelu", layer_norm_eps=1e-5,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=v["width"], intermediate_size=4 * v["width"], num_hidden_layers=v["layers"],
                           num_attention_heads=v["width"] // v["head_width"], image_size=v["image_size"],
                           patch_size=v["patch_size"], hidden_act="gelu", layer_norm_eps=1e-5),
        projection_dim=arch["embed_dim"])


def arch_of(state: dict[str, torch.Tensor], path: Path) -> dict:
    """The architecture an open_clip state dict holds (ViT-H/14 in the published files; smaller in tests)."""
    try:
        width = state["visual.conv1.weight"].shape[0]
        patch = state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = 1 + max(int(m.group(1)) for k in state
                         if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k)))
        t_layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
        t_width = state["token_embedding.weight"].shape[1]
        return {"embed_dim": state["text_projection"].shape[1],
                "vision": {"image_size": grid * patch, "layers": layers, "width": width,
                           "head_width": 80 if width % 80 == 0 else 64, "patch_size": patch},
                "text": {"context_length": state["positional_embedding"].shape[0],
                         "vocab_size": state["token_embedding.weight"].shape[0], "width": t_width,
                         "heads": t_width // 64, "layers": t_layers}}
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        raise ScorerFileError(f"{path}: not an open_clip CLIP state dict ({type(e).__name__}: {e}); "
                              f"{REDOWNLOAD}") from e


def to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip key names and layouts -> transformers CLIPModel's. Unknown keys are kept as they are (the strict
    load then names them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        tower, rest = ("vision_model", key[len("visual."):]) if key.startswith("visual.") else ("text_model", key)
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)$", rest)  # in_proj_weight too
        if m:
            i, part, kind = m.groups()
            prefix = f"{tower}.encoder.layers.{i}"
            if part == "attn.in_proj":
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                    out[f"{prefix}.self_attn.{name}.{kind}"] = chunk
            elif part in BLOCK_PARTS:
                out[f"{prefix}.{BLOCK_PARTS[part]}.{kind}"] = value
            else:
                out[key] = value
            continue
        simple = {"visual.class_embedding": "vision_model.embeddings.class_embedding",
                  "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
                  "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                  "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
                  "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
                  "visual.ln_post.weight": "vision_model.post_layernorm.weight",
                  "visual.ln_post.bias": "vision_model.post_layernorm.bias",
                  "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                  "positional_embedding": "text_model.embeddings.position_embedding.weight",
                  "ln_final.weight": "text_model.final_layer_norm.weight",
                  "ln_final.bias": "text_model.final_layer_norm.bias",
                  "logit_scale": "logit_scale"}
        if key in simple:
            out[simple[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t()
        elif key == "text_projection":
            out["text_projection.weight"] = value.t()
        else:
            out[key] = value
    return out


def load_openclip_as_transformers(path: Path, state: dict[str, torch.Tensor], device, dtype):
    from transformers import CLIPModel

    if "state_dict" in state and isinstance(state["state_dict"], dict):  # a training checkpoint
        state = state["state_dict"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    config = clip_config(arch_of(state, path))
    model = load_strict(lambda: CLIPModel(config), to_transformers(state), path,
                        ignore=lambda k: k.endswith("position_ids") or k == "attn_mask")
    return model.to(device=device, dtype=dtype)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which CLIP's BPE vocabulary is written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer_from_bpe(bpe_path: Path):
    """open_clip's SimpleTokenizer vocabulary (bytes, bytes + "</w>", the first 48894 merges, start and end) as a
    transformers CLIPTokenizer: the same ids, truncation to 77 keeps the end token as open_clip does."""
    from transformers import CLIPTokenizer

    try:
        lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ScorerFileError(f"{bpe_path}: not a readable BPE vocabulary ({e}); {REDOWNLOAD}") from e
    merges = lines[1:49152 - 256 - 2 + 1]
    if len(merges) != 49152 - 256 - 2:
        raise ScorerFileError(f"{bpe_path}: {len(merges)} merges where CLIP's has 48894; {REDOWNLOAD}")
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token="!",
                             model_max_length=77)


def clean_prompt(text: str) -> str:
    """open_clip's text cleaning before its BPE (HTML entities, runs of white space); the tokenizer lower-cases."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()
