"""What a prompt-aware scorer does with ComfyUI batches and prompts (tiny random-weight PickScore and CLIPScore ViT-L/14
in DiffSynth's layout, the real CLIP tokenizer): NaN images skipped, a missing prompt named, a long prompt cut with a
warning. Their equality to DiffSynth is in tests/reference/test_scorer_clip.py."""

from __future__ import annotations

import math

import pytest
import torch
from devkit.scorer_models import tiny_clip_scorers_root
from PIL import Image

from aesthete.scoring.scorers import CATALOG, PromptRequired, load_scorer

PROMPTS = ["a red fox in the snow", "a bowl of ramen, studio light", "a red fox in the snow", "an old castle"]


@pytest.fixture(scope="module")
def root():
    return tiny_clip_scorers_root()


def test_a_comfy_batch_scores_as_its_saved_pngs_and_nan_images_are_skipped(root):
    scorer = load_scorer("pickscore-v1", root)
    batch = torch.rand(3, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    batch[1, 3, 3, 0] = math.nan
    scores = scorer.score_tensor(batch, PROMPTS[:3], batch_size=2)
    assert math.isnan(scores[1]) and not math.isnan(scores[0])
    from aesthete.common.images import tensor_to_pil

    assert scores[2] == pytest.approx(scorer.score_images([tensor_to_pil(batch[2])], [PROMPTS[2]])[0], abs=1e-5)


@pytest.mark.parametrize("prompts", [None, ["a fox", ""], ["a fox", "   "]])
def test_a_prompt_aware_scorer_without_a_prompt_names_itself(root, prompts):
    scorer = load_scorer("clipscore-vit-l-14", root)
    with pytest.raises(PromptRequired, match="clipscore-vit-l-14"):
        scorer.score_tensor(torch.rand(2, 32, 32, 3), prompts)
    assert CATALOG["clipscore-vit-l-14"].prompt_aware and scorer.prompt_aware


def test_a_prompt_longer_than_77_tokens_is_cut_with_one_warning_naming_the_cut(root, caplog):
    scorer = load_scorer("pickscore-v1", root)
    long = "a fox " * 40 + "under a purple moon"
    images = [Image.new("RGB", (40, 40), (200, 30, 30))] * 2
    with caplog.at_level("WARNING", logger="aesthete.scoring"):
        cut = scorer.score_images(images, [long, long])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "purple moon" in warnings[0] and "77" in warnings[0]
    # what was cut does not count: the prompt ending differently scores the same
    other = "a fox " * 40 + "in a green field"
    assert scorer.score_images(images, [other, long]) == pytest.approx(cut, rel=1e-6)
