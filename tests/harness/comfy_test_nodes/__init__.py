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


# ---- conditions of a GPU run, simulated on the CPU (tests/comfy/test_training_gpu_paths.py)

def _no_version_counter(t: torch.Tensor) -> bool:
    try:
        t._version  # noqa: B018
    except RuntimeError:
        return True
    return False


class TestOnlyMoveWeights:
    """``Module.to()`` on the MODEL's diffusion model outside inference mode, as ComfyUI's model management moves a
    model onto the GPU inside Train LoRA (here a dtype round trip: the same values). Says how many weights have no
    version counter afterwards (weights patched under inference mode, moved)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "after": ("LATENT",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "move"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def move(self, model, after):
        unet = model.model.diffusion_model
        with torch.inference_mode(False):
            unet.to(torch.float64).to(torch.float32)
        count = sum(_no_version_counter(p) for p in unet.parameters())
        return {"ui": {"text": [str(count)]}, "result": (model,)}


def no_grad(attention):
    """``attention`` run without a backward pass, as inference-only kernels (SageAttention's) are."""
    def run(*args, **kwargs):
        with torch.no_grad():
            return attention(*args, **kwargs)
    run.aesthete_test_no_grad = True
    return run


class TestOnlyNoGradAttention:
    """A MODEL whose attention override (``transformer_options["optimized_attention_override"]``, ComfyUI's per-MODEL
    choice) runs the attention under no_grad."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model):
        m = model.clone()
        m.model_options["transformer_options"]["optimized_attention_override"] = \
            lambda func, *args, **kwargs: no_grad(func)(*args, **kwargs)
        return (m,)


class TestOnlyOutOfMemory:
    """A MODEL whose attention raises CUDA's out-of-memory error in training steps (gradients on) or in sampling
    (gradients off: validation)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "when": (["training", "sampling"],)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, when):
        def attn1_patch(q, k, v, extra_options):
            if torch.is_grad_enabled() == (when == "training"):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return q, k, v

        m = model.clone()
        m.set_model_attn1_patch(attn1_patch)
        return (m,)


NODE_CLASS_MAPPINGS.update({"TestOnlyMoveWeights": TestOnlyMoveWeights,
                            "TestOnlyNoGradAttention": TestOnlyNoGradAttention,
                            "TestOnlyOutOfMemory": TestOnlyOutOfMemory})


def _attention_without_backward_everywhere() -> None:
    """With AESTHETE_TEST_NO_GRAD_ATTENTION=1 in its environment, the server's process-wide attention (what
    --use-sage-attention sets) runs without a backward pass."""
    import os

    if os.environ.get("AESTHETE_TEST_NO_GRAD_ATTENTION") != "1":
        return
    import comfy.ldm.modules.attention as attention

    attention.optimized_attention = no_grad(attention.optimized_attention)
    attention.optimized_attention_masked = no_grad(attention.optimized_attention_masked)


_attention_without_backward_everywhere()


class TestOnlyOnAnotherDevice:
    """The same scorer as the pack's loader gave, claiming another load device ("meta"): a judge must refuse to
    combine it with scorers loading on the CPU."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scorer": ("AESTHETIC_MODEL",)}}

    RETURN_TYPES = ("AESTHETIC_MODEL",)
    FUNCTION = "move"
    CATEGORY = "testing"

    def move(self, scorer):
        return (type(scorer)(scorer.scorer, torch.device("meta")),)


NODE_CLASS_MAPPINGS["TestOnlyOnAnotherDevice"] = TestOnlyOnAnotherDevice
