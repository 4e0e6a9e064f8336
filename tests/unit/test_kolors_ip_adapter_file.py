"""Kolors-IP-Adapter-Plus's file and image projection without ComfyUI: the Resampler in the file's own key names gives
what diffusers' converted IPAdapterPlusImageProjection gives on the same weights; the attention order is diffusers';
a file that is not an IP-Adapter Plus is refused by name."""

from __future__ import annotations

import pytest
import torch
from aesthete.kolors.folder import KolorsFolderError
from aesthete.kolors.ip_adapter import IPAdapterPlus, diffusers_attention_order, read_ip_adapter
from devkit.kolors_models import TINY_UNET, tiny_kolors_ip_adapter


def test_image_projection_equals_diffusers_ip_adapter_plus_projection():
    from diffusers import UNet2DConditionModel

    data = read_ip_adapter(tiny_kolors_ip_adapter() / "ip_adapter_plus_general.bin")
    ours = IPAdapterPlus(data).eval()
    reference = UNet2DConditionModel(**TINY_UNET)._convert_ip_adapter_image_proj_to_diffusers(
        data["image_proj"], low_cpu_mem_usage=False).eval()
    states = torch.randn(2, 577, 1024, generator=torch.manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours.image_proj(states), reference(states), atol=1e-5)
    assert ours.attentions == 12  # the tiny UNet's cross-attentions (Kolors's: 70)


def test_attention_order_is_diffusers_module_order():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**TINY_UNET)
    expected = [k[: -len(".processor")] for k in unet.attn_processors if ".attn2." in k]
    shuffled = sorted(expected, key=lambda name: name[::-1])
    assert diffusers_attention_order(shuffled) == expected
    assert diffusers_attention_order(["down_blocks.2.attentions.0.transformer_blocks.10.attn2",
                                      "down_blocks.2.attentions.0.transformer_blocks.9.attn2"])[0].endswith("9.attn2")


def test_an_ip_adapter_without_resampler_is_refused(tmp_path):
    path = tmp_path / "ip-adapter_sdxl.bin"
    torch.save({"image_proj": {"proj.weight": torch.zeros(8, 4)}, "ip_adapter": {"1.to_k_ip.weight": torch.zeros(4, 4)}},
               path)
    with pytest.raises(KolorsFolderError, match="only IP-Adapter Plus"):
        read_ip_adapter(path)
