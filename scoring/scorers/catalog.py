"""What each scorer is (``ScorerInfo``, shown to users) and which files it reads (``Part``s, found or downloaded).

Files live in DiffSynth-Studio's layout, ``<models>/QualityMetric/<path>`` (the ModelScope repository
``DiffSynth-Studio/QualityMetric_reward_pretrained`` holds every file at the same relative path); the LAION heads
stay in ``<models>/aesthetic/<name>`` (scoring/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import KNOWN_PREDICTORS

QUALITY_METRIC = "QualityMetric"  # DiffSynth's folder under the models root
DIFFSYNTH_REPO = "DiffSynth-Studio/QualityMetric_reward_pretrained"  # ModelScope: every file, DiffSynth's paths
CLIP_H = "CLIP-ViT-H-14-laion2B-s32B-b79K"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


@dataclass(frozen=True)
class ScorerInfo:
    id: str
    display_name: str
    prompt_aware: bool
    size_mb: int  # what is downloaded (weights and side files), rounded
    licence: str  # as the publisher states it
    measures: str  # one line
    typical_range: tuple[float, float]  # the scale the scorer lives on
    folder: str  # where its files live under the models root


@dataclass(frozen=True)
class Part:
    """Files that must sit in one folder: ``folder`` under QualityMetric ("" for its top), the publisher's Hugging Face
    repository for the second source (None where it publishes no file of this format), and other folders under the
    models root where a user may already keep them (the publisher's layout). A file given as "a|b" is either name
    (ModelScope has the first, Hugging Face the last)."""

    folder: str
    files: tuple[str, ...]
    huggingface: str | None = None
    elsewhere: tuple[str, ...] = ()
    modelscope: str | None = DIFFSYNTH_REPO  # another repository holds the files at its top (None: none does)
    url: str | None = None  # the publisher's own download of a single file (a third source)

    def paths(self, pick: int | None = None) -> list[str]:
        """Every file's path under QualityMetric; ``pick`` (0 or -1) chooses among a file's alternative names."""
        names = [f if pick is None else f.split("|")[pick] for f in self.files]
        return [f"{self.folder}/{f}" if self.folder else f for f in names]


@dataclass(frozen=True)
class ScorerSpec:
    info: ScorerInfo
    parts: tuple[Part, ...] = field(default=())


def _publisher(repo: str) -> tuple[str, ...]:
    """A Hugging Face repository downloaded as its own folder (``--local-dir models/<name>``)."""
    return (repo.split("/")[-1],)


CLIP_H_CONFIG = Part(CLIP_H, ("config.json", "preprocessor_config.json") + TOKENIZER_FILES,
                     "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", _publisher("laion/" + CLIP_H))
CLIP_H_PROCESSOR = Part(CLIP_H, ("preprocessor_config.json",) + TOKENIZER_FILES,
                        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", _publisher("laion/" + CLIP_H))

BPE = Part("", ("bpe_simple_vocab_16e6.txt.gz",))  # open_clip's tokenizer vocabulary (ships inside open_clip)

SPECS: dict[str, ScorerSpec] = {s.info.id: s for s in (
    ScorerSpec(ScorerInfo(
        "pickscore-v1", "PickScore v1", True, 3950, "MIT (PickScore repository)",
        "human preference between images for a prompt (Pick-a-Pic), model card scale: 100 x cosine",
        (17.0, 24.0), f"{QUALITY_METRIC}/PickScore_v1"),
        (Part("PickScore_v1", ("config.json", "model.safetensors"), "yuvalkirstain/PickScore_v1",
              _publisher("yuvalkirstain/PickScore_v1")),
         CLIP_H_PROCESSOR)),
    ScorerSpec(ScorerInfo(
        "aesthetic-v2.5", "Aesthetic Predictor V2.5", False, 3520, "AGPL-3.0 (aesthetic-predictor-v2-5)",
        "aesthetic rating from the image alone (SigLIP so400m/14, about 1-10; 5.5+ is good)",
        (1.0, 10.0), f"{QUALITY_METRIC}/aesthetic-predictor-v2-5"),
        (Part("aesthetic-predictor-v2-5", ("aesthetic_predictor_v2_5.pth",), modelscope=None,
              url="https://github.com/discus0434/aesthetic-predictor-v2-5/raw/main/models/aesthetic_predictor_v2_5.pth"),
         Part("siglip-so400m-patch14-384", ("config.json", "model.safetensors", "preprocessor_config.json"),
              "google/siglip-so400m-patch14-384", _publisher("google/siglip-so400m-patch14-384"),
              modelscope="AI-ModelScope/siglip-so400m-patch14-384"))),
    ScorerSpec(ScorerInfo(
        "clipscore-vit-l-14", "CLIPScore ViT-L/14", True, 1710, "MIT (OpenAI CLIP)",
        "prompt alignment: cosine of the prompt's and the image's CLIP ViT-L/14 embeddings",
        (0.1, 0.4), f"{QUALITY_METRIC}/clip-vit-large-patch14"),
        (Part("clip-vit-large-patch14", ("config.json", "model.safetensors", "preprocessor_config.json")
              + TOKENIZER_FILES, "openai/clip-vit-large-patch14", _publisher("openai/clip-vit-large-patch14")),)),
    ScorerSpec(ScorerInfo(
        "mps-overall", "MPS (overall)", True, 3940, "Apache-2.0 (Kwai-Kolors MPS)",
        "multi-dimensional human preference (Kolors team), overall condition: aesthetics, quality, alignment",
        (0.0, 15.0), f"{QUALITY_METRIC}/MPS_overall_checkpoint"),
        # the publisher's own checkpoint is a pickled model object; only DiffSynth publishes safetensors
        (Part("MPS_overall_checkpoint", ("MPS_overall_checkpoint_diffsynth.safetensors",)),
         CLIP_H_CONFIG)),
    # ImageReward's publisher (THUDM/ImageReward) publishes a pickled .pt; only DiffSynth publishes safetensors
    ScorerSpec(ScorerInfo(
        "imagereward-v1", "ImageReward v1.0", True, 1790, "Apache-2.0 (ImageReward)",
        "human preference for text-to-image (ImageRewardDB), BLIP image-text reward, standardised",
        (-2.0, 2.0), f"{QUALITY_METRIC}/ImageReward"),
        (Part("ImageReward", ("ImageReward.safetensors", "med_config.json")),
         Part("bert-base-uncased", ("vocab.txt", "tokenizer_config.json"), "google-bert/bert-base-uncased",
              _publisher("google-bert/bert-base-uncased")))),
    # HPS's publisher (xswu/HPSv2) publishes pickled .pt files; only DiffSynth publishes safetensors
    ScorerSpec(ScorerInfo(
        "hpsv2", "HPS v2", True, 1970, "Apache-2.0 (HPSv2)",
        "human preference (HPD v2), an open_clip ViT-H/14 fine-tuned: cosine of prompt and image",
        (0.2, 0.3), f"{QUALITY_METRIC}/HPS_v2"),
        (Part("HPS_v2", ("HPS_v2_compressed.safetensors",)), BPE)),
    ScorerSpec(ScorerInfo(
        "hpsv2.1", "HPS v2.1", True, 1970, "Apache-2.0 (HPSv2)",
        "human preference (HPD v2, v2.1 training), an open_clip ViT-H/14: cosine of prompt and image",
        (0.2, 0.35), f"{QUALITY_METRIC}/HPS_v2"),
        (Part("HPS_v2", ("HPS_v2.1_compressed.safetensors",)), BPE)),
    ScorerSpec(ScorerInfo(
        "clipscore-vit-h-14", "CLIPScore ViT-H/14", True, 3940, "MIT (LAION CLIP ViT-H/14)",
        "prompt alignment: cosine of the prompt's and the image's LAION CLIP ViT-H/14 embeddings",
        (0.1, 0.4), f"{QUALITY_METRIC}/{CLIP_H}"),
        (Part(CLIP_H, ("open_clip_pytorch_model.bin|open_clip_model.safetensors",),
              "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", _publisher("laion/" + CLIP_H)), BPE)),
)}


def laion_info(name: str) -> ScorerInfo:
    return ScorerInfo(name, f"LAION aesthetic ({name})", False, 1710 if "l14" in name else 600,
                      "Apache-2.0 (LAION improved aesthetic predictor)",
                      "aesthetic rating from the image alone (LAION, 1-10)", (1.0, 10.0), f"aesthetic/{name}")


def catalog() -> dict[str, ScorerInfo]:
    out = {spec.info.id: spec.info for spec in SPECS.values()}
    out.update({name: laion_info(name) for name in KNOWN_PREDICTORS})
    return out


CATALOG: dict[str, ScorerInfo] = catalog()
