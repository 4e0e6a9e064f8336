"""Nodes that exist only in the test server: they look inside what other nodes return.

``TestOnlyCompareWeights`` computes, inside ComfyUI, the weights two MODELs (and optionally two CLIPs) would be
sampled with: every patched weight through ComfyUI's own ``comfy.lora.calculate_weight`` in float32, as
ModelPatcher does when it patches a model, without writing the models to disk.
"""

from __future__ import annotations

import json

import comfy.lora
import comfy.utils
import torch


def _original(patcher, key: str) -> torch.Tensor:
    backup = patcher.backup.get(key)  # the weight before an earlier run patched it in place
    weight = backup.weight if backup is not None else comfy.utils.get_attr(patcher.model, key)
    return weight.detach().to(torch.float32, copy=True)


def _compare(a, b) -> dict:
    keys_a, keys_b = set(a.patches), set(b.patches)
    result = {"patched": len(keys_a), "only_a": sorted(map(str, keys_a - keys_b))[:20],
              "only_b": sorted(map(str, keys_b - keys_a))[:20], "unequal": [], "max_abs_diff": 0.0,
              "max_change": 0.0, "unchanged": []}
    for key in sorted(keys_a & keys_b, key=str):
        original = _original(a, key)
        wa = comfy.lora.calculate_weight(a.patches[key], original.clone(), key)
        wb = comfy.lora.calculate_weight(b.patches[key], original.clone(), key)
        if not torch.equal(wa, wb):
            result["unequal"].append(key)
            result["max_abs_diff"] = max(result["max_abs_diff"], (wa - wb).abs().max().item())
        change = (wa - original).abs().max().item()
        result["max_change"] = max(result["max_change"], change)
        if change == 0:
            result["unchanged"].append(key)
    return result


class TestOnlyCompareWeights:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_a": ("MODEL",), "model_b": ("MODEL",)},
                "optional": {"clip_a": ("CLIP",), "clip_b": ("CLIP",)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "compare"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def compare(self, model_a, model_b, clip_a=None, clip_b=None):
        result = {"unet": _compare(model_a, model_b)}
        if clip_a is not None and clip_b is not None:
            result["clip"] = _compare(clip_a.patcher, clip_b.patcher)
        text = json.dumps(result)
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"TestOnlyCompareWeights": TestOnlyCompareWeights}


class TestOnlySavePatchedWeights:
    """Writes output/<name>.safetensors with every weight the MODEL patches, as ComfyUI computes it (float32):
    a few MB where ModelSave would write the whole model."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "patched"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, model, name):
        import os

        import folder_paths
        from safetensors.torch import save_file

        tensors = {}
        for key in model.patches:
            original = _original(model, key)
            tensors[key] = comfy.lora.calculate_weight(model.patches[key], original, key).contiguous()
        path = os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors")
        save_file(tensors, path)
        return {"ui": {"text": [path]}}


NODE_CLASS_MAPPINGS["TestOnlySavePatchedWeights"] = TestOnlySavePatchedWeights
