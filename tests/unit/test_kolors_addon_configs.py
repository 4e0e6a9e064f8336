"""Config rules of the Kolors add-ons, without ComfyUI: which head counts matter, what a Kolors ControlNet config
must say, and the error a wrong one gives."""

from __future__ import annotations

import json

import pytest
from aesthete.kolors import configs
from aesthete.kolors.folder import KolorsFolderError
from devkit.kolors_models import FIXTURES, TINY_UNET


def _real_unet_config() -> dict:
    return {k: v for k, v in json.loads((FIXTURES / "unet_config.json").read_text()).items() if not k.startswith("_")}


def test_a_head_count_on_the_level_without_attention_is_ignored():
    """Kolors's first level is a DownBlock2D: a valid diffusers config may give it any head count (diffusers never
    reads it); only levels with attention decide the head width."""
    config = _real_unet_config()
    heads = list(config["attention_head_dim"])
    config["attention_head_dim"] = [heads[0] + 3] + heads[1:]
    settings = configs.unet_settings(config)
    assert settings["num_head_channels"] == 64 and settings["num_heads"] == -1


def test_differing_head_widths_on_attention_levels_are_refused():
    # both levels attend: 32 / 2 = 16 channels per head on the first, 64 / 3 on the second, 2 and 3 heads
    config = dict(TINY_UNET, attention_head_dim=(2, 3), down_block_types=("CrossAttnDownBlock2D",) * 2,
                  up_block_types=("CrossAttnUpBlock2D",) * 2)
    with pytest.raises(KolorsFolderError, match="head"):
        configs.unet_settings(config)


def test_controlnet_settings_mirror_the_unet_encoder():
    config = {k: v for k, v in TINY_UNET.items() if k not in ("up_block_types", "out_channels", "sample_size")}
    settings = configs.controlnet_settings(config)
    unet = configs.unet_settings(dict(TINY_UNET))
    assert settings["hint_channels"] == 3 and "out_channels" not in settings
    assert {k: v for k, v in settings.items() if k != "hint_channels"} == \
        {k: v for k, v in unet.items() if k != "out_channels"}


@pytest.mark.parametrize("change, words", [
    ({"encoder_hid_dim": None, "encoder_hid_dim_type": None}, "not a Kolors ControlNet"),
    ({"conditioning_embedding_out_channels": [16, 32, 64, 256]}, "conditioning embedding"),
    ({"controlnet_conditioning_channel_order": "bgr"}, "bgr"),
])
def test_a_controlnet_config_kolors_does_not_use_is_refused(change, words):
    config = {k: v for k, v in TINY_UNET.items() if k != "up_block_types"}
    config.update(change)
    with pytest.raises(KolorsFolderError, match=words):
        configs.controlnet_settings(config)
