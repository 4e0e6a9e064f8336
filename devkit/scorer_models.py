"""Random-weight scorer models in the real file layouts (DiffSynth's ``QualityMetric/...``), built locally with the
real classes, cached in tests/.models and written atomically (a temporary folder renamed into place).

Tiny where the reference takes a config (transformers CLIPModel: PickScore, CLIPScore ViT-L/14); the real tokenizer
(CLIP's BPE, from ComfyUI's copy) so prompts tokenize as they do for users."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from . import REPO
from .comfy_server import COMFY_DIR
from .factories import _cached

CLIP_TOKENIZER = COMFY_DIR / "comfy" / "sd1_tokenizer"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_clip_config(act: str, projection_dim: int = 16, image_size: int = 32):
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, hidden_act=act, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def write_clip_model(folder: Path, config, seed: int) -> None:
    import torch
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # spread the embeddings so that images and prompts differ clearly
        model.visual_projection.weight.normal_(0, 1.0)
        model.text_projection.weight.normal_(0, 1.0)
    model.save_pretrained(folder)


def write_clip_processor(folder: Path, image_size: int, pad_token: str) -> None:
    from transformers import CLIPImageProcessor, CLIPTokenizer

    CLIPImageProcessor(do_resize=True, size={"shortest_edge": image_size}, resample=3, do_center_crop=True,
                       crop_size={"height": image_size, "width": image_size}, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                       do_convert_rgb=True).save_pretrained(folder)
    tok = CLIPTokenizer(str(CLIP_TOKENIZER / "vocab.json"), str(CLIP_TOKENIZER / "merges.txt"),
                        pad_token=pad_token, model_max_length=77)
    tok.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):  # the slow tokenizer's files, as the published repositories have them
        if not (folder / name).is_file():
            shutil.copy(CLIP_TOKENIZER / name, folder / name)


def _build_root(name: str, build: Callable[[Path], None]) -> Path:
    root = _cached(name)
    if root.is_dir():
        return root
    tmp = root.with_name(f"{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.replace(tmp, root)
    except OSError:  # another run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def tiny_clip_scorers_root() -> Path:
    """A models root with PickScore_v1 (tiny CLIPModel, gelu as ViT-H), CLIP-ViT-H-14-laion2B-s32B-b79K (its
    processor and tokenizer, pad "!" as LAION's) and clip-vit-large-patch14 (tiny, quick_gelu as OpenAI's, with its
    processor) under QualityMetric/."""
    def build(root: Path) -> None:
        qm = root / "QualityMetric"
        write_clip_model(qm / "PickScore_v1", tiny_clip_config("gelu"), seed=1)
        write_clip_processor(qm / "CLIP-ViT-H-14-laion2B-s32B-b79K", 32, "!")
        write_clip_model(qm / "clip-vit-large-patch14", tiny_clip_config("quick_gelu"), seed=2)
        write_clip_processor(qm / "clip-vit-large-patch14", 32, "<|endoftext|>")
    return _build_root("scorers-tiny-clip-1", build)


def reference_bar(ours: list[float], reference: list[float]) -> float:
    """The issue's equality bar: the largest difference as a fraction of the spread of the reference's scores over
    the images (must be <= 1e-3), after checking that no two images are ranked in opposite order."""
    assert len(ours) == len(reference) >= 2
    spread = max(reference) - min(reference)
    assert spread > 0, f"the reference scores every image the same ({reference}): the test images prove nothing"
    for i in range(len(ours)):
        for j in range(len(ours)):
            if reference[i] < reference[j]:
                assert ours[i] < ours[j], f"images {i} and {j} ranked in opposite order: {ours} vs {reference}"
    figure = max(abs(a - b) for a, b in zip(ours, reference)) / spread
    import logging

    logging.getLogger("aesthete.tests").info("difference / spread = %.2e (ours %s, reference %s)", figure, ours,
                                             reference)
    return figure


def image_files(folder: Path, count: int = 4, sizes=((64, 48), (40, 72), (96, 96), (50, 50))) -> list[Path]:
    """PNG files of different sizes and content (photo_like), written once into ``folder``."""
    from PIL import Image

    from .scoring_files import photo_like

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        path = folder / f"image{i}.png"
        Image.fromarray(photo_like(w, h, seed=10 + i)).save(path)
        paths.append(path)
    return paths


def tiny_mps_root() -> Path:
    """A models root for MPS: QualityMetric/CLIP-ViT-H-14-laion2B-s32B-b79K (a tiny CLIP config projecting to the
    cross model's fixed 1024 width, its processor and tokenizer) and MPS_overall_checkpoint/
    MPS_overall_checkpoint_diffsynth.safetensors written by DiffSynth's own MPS class (the real key layout; its
    cross model is full size, 4 layers of 1024: about 470 MB)."""
    from .reference import run_reference

    def build(root: Path) -> None:
        qm = root / "QualityMetric"
        clip = qm / "CLIP-ViT-H-14-laion2B-s32B-b79K"
        tiny_clip_config("gelu", projection_dim=1024).save_pretrained(clip)
        write_clip_processor(clip, 32, "!")
        (qm / "MPS_overall_checkpoint").mkdir(parents=True)
        run_reference("diffsynth", REPO / "tests" / "reference" / "build_diffsynth_mps.py",
                      str(clip), str(qm / "MPS_overall_checkpoint" / "MPS_overall_checkpoint_diffsynth.safetensors"),
                      "3")
    return _build_root("scorers-tiny-mps-1", build)


def bpe_vocabulary(path: Path) -> None:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz`` format (a header line, then the merges) from CLIP's merges as
    ComfyUI ships them: the 48894 merges CLIP's tokenizer reads."""
    import gzip

    lines = (CLIP_TOKENIZER / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines[1:] if line.strip()]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write("bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges) + "\n")
    os.replace(tmp, path)


def full_vit_h_root() -> Path:
    """A models root where HPS_v2/HPS_v2_compressed.safetensors, HPS_v2/HPS_v2.1_compressed.safetensors and
    CLIP-ViT-H-14-laion2B-s32B-b79K/open_clip_model.safetensors are ONE file (hard links): a full-size random-weight
    open_clip ViT-H-14 (DiffSynth hard-codes the size) written by DiffSynth's own open_clip in fp16 (about 2 GB),
    and bpe_simple_vocab_16e6.txt.gz. Built once, cached."""
    from .reference import run_reference

    def build(root: Path) -> None:
        qm = root / "QualityMetric"
        (qm / "HPS_v2").mkdir(parents=True)
        (qm / "CLIP-ViT-H-14-laion2B-s32B-b79K").mkdir()
        weights = qm / "HPS_v2" / "HPS_v2.1_compressed.safetensors"
        run_reference("diffsynth", REPO / "tests" / "reference" / "build_diffsynth_openclip.py",
                      str(weights), "4")
        os.link(weights, qm / "HPS_v2" / "HPS_v2_compressed.safetensors")
        os.link(weights, qm / "CLIP-ViT-H-14-laion2B-s32B-b79K" / "open_clip_model.safetensors")
        bpe_vocabulary(qm / "bpe_simple_vocab_16e6.txt.gz")
    return _build_root("scorers-full-vit-h-1", build)


BERT_VOCAB = COMFY_DIR / "comfy" / "text_encoders" / "hydit_clip_tokenizer" / "vocab.txt"  # a real WordPiece one


def imagereward_root() -> Path:
    """A models root for ImageReward: ImageReward/ImageReward.safetensors written by DiffSynth's own class (BLIP's
    ViT-L at full size, which it hard-codes; a 2-layer MED text encoder of BERT width 768, which its MLP needs),
    ImageReward/med_config.json, and bert-base-uncased/ (a WordPiece vocabulary: ComfyUI's copy of one)."""
    from .reference import run_reference

    def build(root: Path) -> None:
        qm = root / "QualityMetric"
        (qm / "ImageReward").mkdir(parents=True)
        bert = qm / "bert-base-uncased"
        bert.mkdir()
        shutil.copy(BERT_VOCAB, bert / "vocab.txt")
        vocab = len(BERT_VOCAB.read_text(encoding="utf-8").splitlines())
        (bert / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}))
        med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
               "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 1024,
               "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
               "num_attention_heads": 12, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
               "vocab_size": vocab + 2, "encoder_width": 768, "add_cross_attention": True}
        (qm / "ImageReward" / "med_config.json").write_text(json.dumps(med, indent=2))
        run_reference("diffsynth", REPO / "tests" / "reference" / "build_diffsynth_imagereward.py",
                      str(qm / "ImageReward" / "med_config.json"), str(bert),
                      str(qm / "ImageReward" / "ImageReward.safetensors"), "5")
    return _build_root("scorers-imagereward-1", build)


def tiny_aesthetic_v25_root() -> Path:
    """A models root for Aesthetic Predictor V2.5: QualityMetric/siglip-so400m-patch14-384 (a tiny random SiglipModel,
    text tower included as in the published repository, and its 32 px image processor) and
    QualityMetric/aesthetic-predictor-v2-5/aesthetic_predictor_v2_5.pth (the head's tensors, pickled as the
    publisher's file is)."""
    def build(root: Path) -> None:
        from collections import OrderedDict

        import torch
        from transformers import SiglipModel

        qm = root / "QualityMetric"
        siglip = qm / "siglip-so400m-patch14-384"
        config = _siglip_config(2, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
        torch.manual_seed(6)
        SiglipModel(config).save_pretrained(siglip)
        _siglip_processor(32).save_pretrained(siglip)
        head = _v25_head(32)
        with torch.no_grad():
            for p in head.parameters():
                p.normal_(0, 0.3)
        (qm / "aesthetic-predictor-v2-5").mkdir(parents=True)
        torch.save(OrderedDict((f"scoring_head.{k}", v) for k, v in head.state_dict().items()),
                   qm / "aesthetic-predictor-v2-5" / "aesthetic_predictor_v2_5.pth")
    return _build_root("scorers-tiny-aesthetic-v25-1", build)


# ---- full-size random-weight models for benchmarks/bench_judge.py (the real cost; fp16 files, like the published
# compressed ones, loaded in fp32 by both sides). Built once, cached.

def _save_fp16(model, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()
               if not k.endswith("position_ids")}, str(path))


def full_clip_h_transformers_state() -> dict:
    """The shared full-size open_clip ViT-H-14 (full_vit_h_root) as transformers CLIPModel tensors (fp16)."""
    from safetensors.torch import load_file

    from aesthete.scoring.scorers.openclip_files import to_transformers

    weights = full_vit_h_root() / "QualityMetric" / "HPS_v2" / "HPS_v2.1_compressed.safetensors"
    return to_transformers(load_file(str(weights)))


def full_bench_root() -> Path:
    """A models root with every scorer at full size: PickScore_v1 and the MPS checkpoint made from the shared ViT-H
    (converted to transformers), clip-vit-large-patch14 (random ViT-L/14), ImageReward (BLIP ViT-L + a 12-layer
    BERT-base MED encoder), Aesthetic V2.5 (SigLIP so400m/14 vision tower at 384 px, a tiny text tower), and the
    HPS/CLIP-H files as hard links to the shared ViT-H."""
    def build(root: Path) -> None:
        import torch
        from safetensors.torch import save_file
        from transformers import CLIPConfig, CLIPModel, SiglipModel

        from aesthete.scoring.scorers.imagereward import ImageRewardModel
        from aesthete.scoring.scorers.mps import CROSS_LAYERS, CrossModel
        from aesthete.scoring.scorers.openclip_files import clip_config

        qm = root / "QualityMetric"
        shared = full_vit_h_root() / "QualityMetric"
        for rel in ("HPS_v2/HPS_v2_compressed.safetensors", "HPS_v2/HPS_v2.1_compressed.safetensors",
                    "CLIP-ViT-H-14-laion2B-s32B-b79K/open_clip_model.safetensors", "bpe_simple_vocab_16e6.txt.gz"):
            (qm / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(shared / rel, qm / rel)
        clip_h = qm / "CLIP-ViT-H-14-laion2B-s32B-b79K"
        config = clip_config()
        config.save_pretrained(clip_h)
        write_clip_processor(clip_h, 224, "!")
        state = full_clip_h_transformers_state()
        (qm / "PickScore_v1").mkdir()
        config.save_pretrained(qm / "PickScore_v1")
        save_file({k: v.contiguous() for k, v in state.items()}, str(qm / "PickScore_v1" / "model.safetensors"))
        torch.manual_seed(7)
        cross = {f"cross_model.{k}": v.half() for k, v in CrossModel().state_dict().items()}
        for i in range(CROSS_LAYERS):  # DiffSynth's constant buffers, as its checkpoint holds them
            for j in (0, 1):
                cross[f"cross_model.layers.{i}.{j}.fn.norm.bias"] = torch.zeros(1024, dtype=torch.float16)
            cross[f"cross_model.layers.{i}.1.fn.rotary_emb.inv_freq"] = 1.0 / (
                10000 ** (torch.arange(0, 64, 2).float() / 64))
        (qm / "MPS_overall_checkpoint").mkdir()
        save_file({**{f"model.{k}": v.contiguous() for k, v in state.items()}, **cross},
                  str(qm / "MPS_overall_checkpoint" / "MPS_overall_checkpoint_diffsynth.safetensors"))
        del state, cross
        large = CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                            bos_token_id=49406, eos_token_id=49407),
                           vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, image_size=224, patch_size=14,
                                              hidden_act="quick_gelu"), projection_dim=768)
        folder = qm / "clip-vit-large-patch14"
        large.save_pretrained(folder)
        _save_fp16(CLIPModel(large), folder / "model.safetensors")
        write_clip_processor(folder, 224, "<|endoftext|>")
        bert = qm / "bert-base-uncased"
        bert.mkdir()
        shutil.copy(BERT_VOCAB, bert / "vocab.txt")
        (bert / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}))
        med = {"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 768, "intermediate_size": 3072,
               "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
               "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2,
               "vocab_size": len(BERT_VOCAB.read_text(encoding="utf-8").splitlines()) + 2, "encoder_width": 768,
               "add_cross_attention": True, "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1}
        (qm / "ImageReward").mkdir()
        (qm / "ImageReward" / "med_config.json").write_text(json.dumps(med, indent=2))
        _save_fp16(ImageRewardModel(med), qm / "ImageReward" / "ImageReward.safetensors")
        siglip = qm / "siglip-so400m-patch14-384"
        so400m = _siglip_config(1, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=384, patch_size=14)
        so400m.save_pretrained(siglip)
        _save_fp16(SiglipModel(so400m), siglip / "model.safetensors")
        _siglip_processor(384).save_pretrained(siglip)
        head = _v25_head(1152)
        (qm / "aesthetic-predictor-v2-5").mkdir()
        from collections import OrderedDict

        torch.save(OrderedDict((f"scoring_head.{k}", v) for k, v in head.state_dict().items()),
                   qm / "aesthetic-predictor-v2-5" / "aesthetic_predictor_v2_5.pth")
    return _build_root("scorers-full-bench-1", build)


def laion_pair_root() -> Path:
    """The same LAION V2 linear head in both layouts: DiffSynth's (QualityMetric/aesthetic-predictor/
    sac+logos+ava1-l14-linearMSE.safetensors, the MLP alone, and QualityMetric/clip-vit-large-patch14, a CLIPModel)
    and ours (aesthetic/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE, simple-aesthetics-predictor's
    AestheticsPredictorV2Linear). A tiny CLIP whose projection is 768 wide (DiffSynth's MLP hard-codes it)."""
    def build(root: Path) -> None:
        import torch
        from aesthetics_predictor import AestheticsPredictorV2Linear
        from safetensors.torch import save_file
        from transformers import CLIPImageProcessor, CLIPModel

        qm = root / "QualityMetric"
        config = tiny_clip_config("quick_gelu", projection_dim=768)
        torch.manual_seed(8)
        clip = CLIPModel(config).eval()
        clip.save_pretrained(qm / "clip-vit-large-patch14")
        write_clip_processor(qm / "clip-vit-large-patch14", 32, "<|endoftext|>")
        vision = config.vision_config
        vision.projection_dim = 768  # the CLIPModel's projection width, which the predictor's vision config holds
        predictor = AestheticsPredictorV2Linear(vision)
        with torch.no_grad():
            for p in predictor.layers.parameters():
                p.normal_(0.0, 0.5)
        state = predictor.state_dict()
        clip_state = clip.state_dict()
        for key in state:
            if key.startswith(("vision_model.", "visual_projection.")):
                state[key] = clip_state[key]
        predictor.load_state_dict(state)
        folder = root / "aesthetic" / "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE"
        predictor.save_pretrained(folder)
        CLIPImageProcessor.from_pretrained(str(qm / "clip-vit-large-patch14")).save_pretrained(folder)
        (qm / "aesthetic-predictor").mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in predictor.state_dict().items() if k.startswith("layers.")},
                  str(qm / "aesthetic-predictor" / "sac+logos+ava1-l14-linearMSE.safetensors"))
    return _build_root("scorers-laion-pair-1", build)


def _siglip_config(text_layers: int, **vision):
    """A SigLIP config: ``vision`` as given (V2.5 reads only the vision tower), a tiny text tower of ``text_layers``."""
    from transformers import SiglipConfig

    return SiglipConfig(text_config=dict(vocab_size=128, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=text_layers, num_attention_heads=4,
                                         max_position_embeddings=16), vision_config=vision)


def _siglip_processor(size: int):
    """SigLIP so400m's image processor (the published one: bicubic to a square, [-1, 1]) at ``size`` px."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(do_resize=True, size={"height": size, "width": size}, resample=3, do_rescale=True,
                                rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _v25_head(width: int):
    """Aesthetic Predictor V2.5's head (its publisher's layer sizes and dropouts) over ``width``-wide embeddings."""
    import torch

    return torch.nn.Sequential(torch.nn.Linear(width, 1024), torch.nn.Dropout(0.5), torch.nn.Linear(1024, 128),
                               torch.nn.Dropout(0.5), torch.nn.Linear(128, 64), torch.nn.Dropout(0.5),
                               torch.nn.Linear(64, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
