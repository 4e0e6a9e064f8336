"""The real Kolors UNet (built from its config.json on the meta device: every key and shape, no weights) fits the
model class Aesthete registers with ComfyUI: no missing key, no unexpected key, every shape equal."""

from __future__ import annotations

from harness.in_comfy import run_in_comfy


def _real_unet_keys_against_our_model_class() -> dict:
    import json
    from pathlib import Path

    import torch
    from diffusers import UNet2DConditionModel

    import aesthete.kolors as k
    import comfy.ops
    import comfy.utils
    from aesthete.kolors import configs
    from aesthete.nodes.kolors_model import KolorsUNetModel

    config = json.loads((Path(k.__file__).parent / "kolors_unet_config.json").read_text())
    with torch.device("meta"):
        reference = UNet2DConditionModel.from_config(config)
        settings = configs.unet_settings(config)
        ours = KolorsUNetModel(**settings, device="meta", operations=comfy.ops.disable_weight_init)
    ref_shapes = {key: list(v.shape) for key, v in reference.state_dict().items()}
    key_map = comfy.utils.unet_to_diffusers(settings)
    mapped = {comfy_key: ref_shapes[d] for d, comfy_key in key_map.items() if d in ref_shapes}
    for name in ("weight", "bias"):
        mapped[f"encoder_hid_proj.{name}"] = ref_shapes[f"encoder_hid_proj.{name}"]
    used = {d for d in key_map if d in ref_shapes} | {"encoder_hid_proj.weight", "encoder_hid_proj.bias"}
    our_shapes = {key: list(v.shape) for key, v in ours.state_dict().items()}
    return {"missing": sorted(set(our_shapes) - set(mapped)), "unexpected": sorted(set(mapped) - set(our_shapes)),
            "unmapped_reference": sorted(set(ref_shapes) - used),
            "shape_diff": sorted(k for k in our_shapes if k in mapped and mapped[k] != our_shapes[k]),
            "count": len(ref_shapes), "adm": settings["adm_in_channels"]}


def test_real_kolors_unet_keys_and_shapes_load_into_our_model_class():
    result = run_in_comfy(_real_unet_keys_against_our_model_class)
    assert result["count"] > 1600  # the full SDXL-size UNet, not a toy
    assert result["adm"] == 5632
    assert result["missing"] == []
    assert result["unexpected"] == []
    assert result["unmapped_reference"] == []
    assert result["shape_diff"] == []
