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
    models root where a user may already keep them (the publisher's layout)."""

    folder: str
    files: tuple[str, ...]
    huggingface: str | None = None
    elsewhere: tuple[str, ...] = ()

    def paths(self) -> list[str]:
        return [f"{self.folder}/{f}" if self.folder else f for f in self.files]


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

SPECS: dict[str, ScorerSpec] = {s.info.id: s for s in (
    ScorerSpec(ScorerInfo(
        "pickscore-v1", "PickScore v1", True, 3950, "MIT (PickScore repository)",
        "human preference between images for a prompt (Pick-a-Pic), model card scale: 100 x cosine",
        (17.0, 24.0), f"{QUALITY_METRIC}/PickScore_v1"),
        (Part("PickScore_v1", ("config.json", "model.safetensors"), "yuvalkirstain/PickScore_v1",
              _publisher("yuvalkirstain/PickScore_v1")),
         CLIP_H_PROCESSOR)),
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
