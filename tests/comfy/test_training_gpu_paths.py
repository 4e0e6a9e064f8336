"""Train LoRA under conditions of a GPU run, simulated in the real ComfyUI on the CPU with the small SD1.5: weights
patched by a LoRA and moved outside inference mode (what loading onto a GPU does), an attention without a backward
pass chosen either way ComfyUI chooses attention (for the whole process at start-up, as --use-sage-attention does;
per MODEL through its attention override), and CUDA running out of memory in a phase of the run."""

from __future__ import annotations

import pytest
import torch
from harness.servers import running_test_server
from devkit.client import ComfyClient
from devkit.factories import small_sd15_checkpoint
from devkit.graph import new_graph
from devkit.training_graphs import dataset_node, train_node
from devkit.training_data import write_pattern_folder
from safetensors import safe_open
from safetensors.torch import save_file

DATASET = "aesthete_gpu_paths"
# 2 images of 64x64, batch 2: one step per epoch; lr 1e-2 moves every LoRA layer visibly in 2 steps
TRAIN = {"epochs": 2, "rank": 2, "alpha": 2.0}


def train_graph(ckpt: str, name: str, patch=None, validate: bool = False):
    """Checkpoint -> (``patch(g, model)`` -> MODEL) -> Train LoRA -> Save LoRA under ``name``."""
    g = new_graph()
    loader = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    model = patch(g, loader) if patch else loader.out(0)
    data = dataset_node(g, DATASET)
    extra = {}
    if validate:
        extra["validation"] = g.node("AestheteValidationSettings", prompts="ptn, stripes", negative="", seed=1,
                                     steps=1, width=64, height=64, images_per_prompt=1, cfg=1.0, sampler_name="euler",
                                     scheduler="normal", output_lora="last epoch").out(0)
    train = train_node(g, model, loader.out(1), loader.out(2), data.out(0), checkpoint_name=f"gpu_paths/{name}_ckpt",
                       **TRAIN, **extra)
    g.node("AestheteSaveLora", lora=train.out(1), name_prefix=f"gpu_paths/{name}", precision="fp32",
           diffsynth_copy=False)
    return g, train


def saved(models_dir, name: str) -> dict[str, torch.Tensor]:
    with safe_open(str(models_dir / "loras" / "gpu_paths" / f"{name}_00001.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def zero_lora_layers(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k, v in tensors.items() if k.endswith("lora_up.weight") and not v.any())


@pytest.fixture(scope="module")
def dataset(comfy_server):
    write_pattern_folder(comfy_server.input_dir / DATASET, count=2)


def write_attention_lora(path, checkpoint) -> None:
    """A small LoRA (rank 2) on every attention projection of the checkpoint's UNet, in ComfyUI's key format."""
    g = torch.Generator().manual_seed(3)
    tensors = {}
    with safe_open(str(checkpoint), "pt") as f:
        for key in f.keys():
            if key.startswith("model.diffusion_model.") and key.endswith((".to_q.weight", ".to_v.weight")):
                out_features, in_features = f.get_slice(key).get_shape()
                base = "diffusion_model." + key[len("model.diffusion_model."):-len(".weight")]
                tensors[base + ".lora_down.weight"] = torch.randn(2, in_features, generator=g) * 0.1
                tensors[base + ".lora_up.weight"] = torch.randn(out_features, 2, generator=g) * 0.1
                tensors[base + ".alpha"] = torch.tensor(2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def test_training_on_a_lora_after_sampling_and_a_move_of_the_weights(comfy, comfy_server, dataset):
    """The sequence of a GPU run: core LoraLoaderModelOnly, KSampler (ComfyUI patches the LoRA into the weights
    under inference mode), the weights moved by ``Module.to()`` outside inference mode (as loading onto the GPU inside
    Train LoRA does), then Train LoRA on that MODEL. The moved weights have no version counter; training on them
    failed with "Inference tensors do not track version counter"; now it trains."""
    ckpt = comfy_server.link_model("checkpoints", small_sd15_checkpoint(), "aesthete-test-sd15-moved.safetensors")
    write_attention_lora(comfy_server.models_dir / "loras" / "gpu_paths" / "base_lora.safetensors",
                         small_sd15_checkpoint())
    moved = {}

    def lora_sampled_and_moved(g, loader):
        lora = g.node("LoraLoaderModelOnly", model=loader.out(0), lora_name="gpu_paths/base_lora.safetensors",
                      strength_model=1.0)
        text = g.node("CLIPTextEncode", text="stripes", clip=loader.out(1))
        latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
        sampled = g.node("KSampler", model=lora.out(0), positive=text.out(0), negative=text.out(0),
                         latent_image=latent.out(0), seed=1, steps=1, cfg=1.0, sampler_name="euler",
                         scheduler="normal", denoise=1.0)
        moved["node"] = g.node("TestOnlyMoveWeights", model=lora.out(0), after=sampled.out(0))
        return moved["node"].out(0)

    g, train = train_graph(ckpt, "moved", lora_sampled_and_moved)
    result = comfy.run(g.finalize(), timeout=480)
    assert int(result.node_output(moved["node"].id)["text"][0]) > 0  # the condition is there: weights without one
    assert zero_lora_layers(saved(comfy_server.models_dir, "moved")) == []


@pytest.fixture(scope="module")
def no_grad_everywhere_server():
    """A second ComfyUI whose process-wide attention has no backward pass, as when started with
    --use-sage-attention (the test nodes' pack sets it at start-up when told through its environment)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AESTHETE_TEST_NO_GRAD_ATTENTION", "1")
        with running_test_server("aesthete-comfy-nograd-") as server:
            mp.delenv("AESTHETE_TEST_NO_GRAD_ATTENTION")
            write_pattern_folder(server.input_dir / DATASET, count=2)
            yield server


@pytest.mark.parametrize("chosen", ["per MODEL (attention override)", "for the process (start-up flag)"])
def test_an_attention_without_backward_does_not_stop_any_lora_layer_learning(request, chosen):
    """Sampling may run an attention that has no backward pass. Training runs PyTorch's SDPA instead, so every LoRA
    layer learns: before, every q, k and v layer stayed exactly zero and only to_out learned, without a word."""
    if chosen.startswith("per MODEL"):
        server, patch = request.getfixturevalue("comfy_server"), \
            lambda g, loader: g.node("TestOnlyNoGradAttention", model=loader.out(0)).out(0)
        request.getfixturevalue("dataset")
    else:
        server, patch = request.getfixturevalue("no_grad_everywhere_server"), None
    ckpt = server.link_model("checkpoints", small_sd15_checkpoint(), "aesthete-test-sd15.safetensors")
    name = "nograd_model" if patch else "nograd_process"
    g, _ = train_graph(ckpt, name, patch)
    ComfyClient(server.url).run(g.finalize(), timeout=480)
    tensors = saved(server.models_dir, name)
    assert any(".to_q.lora_up" in k for k in tensors) and zero_lora_layers(tensors) == []


@pytest.mark.parametrize("phase", ["training", "validation"])
def test_out_of_memory_reaches_comfyui_as_cuda_oom_naming_the_phase(comfy, comfy_server, sd15_ckpt, dataset, phase):
    """CUDA running out of memory inside a step (or inside validation's sampling) stays CUDA's out-of-memory error, so
    ComfyUI's own handler runs (it unloads every model and gives its advice), and the message says which phase of
    Train LoRA ran out and what to change. Before, it became a MemoryError that ComfyUI's handler does not know."""
    when = "training" if phase == "training" else "sampling"
    g, train = train_graph(sd15_ckpt, f"oom_{phase}",
                           lambda g, loader: g.node("TestOnlyOutOfMemory", model=loader.out(0), when=when).out(0),
                           validate=phase == "validation")
    start = len(comfy_server.log_text())
    result = comfy.run(g.finalize(), timeout=480, expect_error=True)
    error = result.events_of("execution_error")[0]["data"]
    assert error["node_id"] == train.id and error["exception_type"] == "torch.OutOfMemoryError", error
    assert f"Train LoRA ran out of memory during {phase}: CUDA out of memory" in error["exception_message"]
    assert "Got an OOM, unloading all loaded models." in comfy_server.log_text()[start:]


def test_a_unet_stored_in_fp8_trains(comfy, comfy_server, dataset):
    """UNETLoader's fp8_e4m3fn (what 8-12 GB GPU users load): the weights stay fp8 and each layer casts them to its
    compute dtype, which has a backward pass; every LoRA layer learns."""
    unet = comfy_server.link_model("diffusion_models", small_sd15_checkpoint(), "aesthete-test-sd15-unet.safetensors")
    ckpt = comfy_server.link_model("checkpoints", small_sd15_checkpoint(), "aesthete-test-sd15.safetensors")
    loaded = {}

    def fp8_unet(g, loader):
        loaded["node"] = g.node("UNETLoader", unet_name=unet, weight_dtype="fp8_e4m3fn")
        return loaded["node"].out(0)

    g, train = train_graph(ckpt, "fp8", fp8_unet)
    result = comfy.run(g.finalize(), timeout=480)
    losses = result.node_output(train.id)["loss"]
    assert len(losses) == TRAIN["epochs"] and all(0 < v < 10 for v in losses)
    assert zero_lora_layers(saved(comfy_server.models_dir, "fp8")) == []
    assert "model weight dtype torch.float8_e4m3fn" in comfy_server.log_text()
