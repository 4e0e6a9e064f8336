"""Devices and dtypes asked of ComfyUI, and the ComfyUI internals that differ in the newest ComfyUI (nodes/compat.py),
checked inside the embedded ComfyUI's import world with the GPU condition simulated: ComfyUI's device functions
answering a CUDA device, a text encoder kept on the CPU by --lowvram, CUDA's embedding lookup lacking fp8, the newest
ComfyUI's training flag and dynamic models, ComfyUI's fp8 fast path that has no backward pass."""

from __future__ import annotations

from harness.in_comfy import run_in_comfy
from devkit.kolors_models import tiny_kolors


def _simulated_gpu():
    """ComfyUI's device functions answer ``cuda:0`` (in the child process only); returns that device."""
    import comfy.model_management as mm
    import torch

    gpu = torch.device("cuda", 0)
    mm.get_torch_device = lambda: gpu
    return gpu


def _predictor_choices_on_a_gpu() -> dict:
    import comfy.model_management as mm
    import torch

    gpu = _simulated_gpu()
    from aesthete.nodes.scoring_adapter import predictor_device, predictor_dtype

    mm.should_use_fp16 = lambda device=None, prioritize_performance=True, **kw: False
    slow_fp16 = str(predictor_dtype("auto", gpu))
    mm.should_use_fp16 = lambda device=None, prioritize_performance=True, **kw: True
    return {"cuda": str(predictor_device("cuda")), "auto": str(predictor_device("auto")),
            "cpu": str(predictor_device("cpu")), "slow_fp16": slow_fp16,
            "fast_fp16": str(predictor_dtype("auto", gpu)), "on_cpu": str(predictor_dtype("auto", torch.device("cpu"))),
            "chosen": str(predictor_dtype("bf16", gpu))}


def test_the_predictor_loader_asks_comfyui_for_its_gpu_and_for_fp16():
    """"cuda" was ``torch.device("cuda")``, a device ComfyUI's memory manager does not match with its ``cuda:0``,
    so it never freed memory for or around the predictor; "auto" dtype was fp16 on any CUDA device, also where
    ComfyUI keeps models in fp32 (GPUs without fast fp16)."""
    result = run_in_comfy(_predictor_choices_on_a_gpu)
    assert result == {"cuda": "cuda:0", "auto": "cuda:0", "cpu": "cpu", "slow_fp16": "torch.float32",
                      "fast_fp16": "torch.float16", "on_cpu": "torch.float32", "chosen": "torch.bfloat16"}


def _kolors_text_encoder_under_lowvram(folder: str) -> dict:
    import comfy.model_management as mm
    import torch

    _simulated_gpu()
    mm.text_encoder_device = lambda: torch.device("cpu")  # what --lowvram answers
    mm.text_encoder_dtype = lambda device=None: torch.float16
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_clip

    f = find_kolors_folder(folder)
    clip = kolors_clip(f.text_encoder_files, f.text_encoder_config, f.tokenizer_model, "auto")
    encoder = clip.cond_stage_model
    weights = str(next(encoder.transformer.parameters()).dtype)
    seen = {}

    def record(ids, *args, **kwargs):
        seen["ids"] = str(ids.device)
        raise StopIteration

    encoder.transformer.forward = record
    encoder.execution_device = torch.device("meta")  # the load device, another than the weights'
    try:
        encoder.encode([[1, 2, 3]])
    except StopIteration:
        pass
    return {"weights": weights, "load_device": str(clip.patcher.load_device), "ids": seen["ids"]}


def test_kolors_text_encoder_runs_where_comfyui_loads_it_and_in_its_dtype_under_lowvram():
    """Under --lowvram ComfyUI puts text encoders on the CPU; the Kolors loader picked fp32 for ChatGLM3 there
    (about 25 GB of RAM) where ComfyUI uses fp16. And the token ids went to the device of ChatGLM3's first weight,
    which is the CPU when ComfyUI loads it in part, not to the CLIP's load device."""
    result = run_in_comfy(_kolors_text_encoder_under_lowvram, str(tiny_kolors("kolors", "fp16")))
    assert result == {"weights": "torch.float16", "load_device": "cpu", "ids": "meta"}


def _fp8_chatglm3_without_an_fp8_lookup(folder: str) -> dict:
    import torch
    import torch.nn.functional as F
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import FP8, kolors_clip

    f = find_kolors_folder(folder)
    clip = kolors_clip(f.text_encoder_files, f.text_encoder_config, f.tokenizer_model, FP8, "cpu")
    tokens = clip.tokenize("blue hair")
    allowed = clip.encode_from_tokens(tokens)
    lookup = F.embedding

    def no_fp8_kernel(ids, weight, *args, **kwargs):
        if weight.element_size() == 1:
            raise RuntimeError('"index_select_cuda" not implemented for \'Float8_e4m3fn\'')
        return lookup(ids, weight, *args, **kwargs)

    F.embedding = no_fp8_kernel
    torch.nn.functional.embedding = no_fp8_kernel
    encoded = clip.encode_from_tokens(tokens)
    return {"dtype": str(next(clip.cond_stage_model.transformer.parameters()).dtype),
            "diff": (encoded - allowed).abs().max().item()}


def test_fp8_chatglm3_reads_its_embedding_in_the_compute_dtype():
    """CUDA's embedding lookup has no fp8 kernel (simulated: the lookup refuses fp8 tables); ChatGLM3 stored in fp8
    (the loader's "auto, text encoder fp8") looked its tokens up in fp8. It reads them in the compute dtype, with the
    same numbers as looking up the fp8 values."""
    result = run_in_comfy(_fp8_chatglm3_without_an_fp8_lookup, str(tiny_kolors("kolors", "fp16")))
    assert result == {"dtype": "torch.float8_e4m3fn", "diff": 0.0}


def _training_switches_around_training_steps() -> dict:
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    import torch
    from aesthete.nodes import compat
    from aesthete.nodes.training_adapter import TrainingSteps

    before = (attention.optimized_attention, attention.optimized_attention_masked)
    no_flag = []
    with compat.training_mode():
        no_flag.append(hasattr(mm, "in_training"))  # 0.3.75: nothing set
    mm.in_training = False  # the newest ComfyUI's flag
    seen = {}
    steps = TrainingSteps(torch.nn.Linear(2, 2))
    with steps:
        seen["training"] = (mm.in_training, attention.optimized_attention is attention.attention_pytorch,
                            attention.optimized_attention_masked is attention.attention_pytorch)
        with steps.paused():
            seen["validation"] = (mm.in_training, attention.optimized_attention is before[0])
        seen["again"] = mm.in_training
    seen["after"] = (mm.in_training, (attention.optimized_attention, attention.optimized_attention_masked) == before)
    loads = []
    mm.load_models_gpu = lambda models, **kwargs: loads.append(kwargs)

    class Patcher:  # the newest ComfyUI's ModelPatcher answers is_dynamic()
        def __init__(self, dynamic):
            self.dynamic = dynamic

        def is_dynamic(self):
            return self.dynamic

    compat.load_for_training(Patcher(True))
    compat.load_for_training(Patcher(False))
    compat.load_for_training(object())  # 0.3.75's ModelPatcher has no is_dynamic
    return {"no_flag": no_flag, **{k: list(v) if isinstance(v, tuple) else v for k, v in seen.items()},
            "full_loads": [kw["force_full_load"] for kw in loads], "memory": [kw["memory_required"] for kw in loads]}


def test_training_switches_of_the_newest_comfyui_are_set_while_training_and_put_back():
    """The newest ComfyUI's trainer sets ``comfy.model_management.in_training`` (its layers take their differentiable
    paths then) and loads dynamic models without ``force_full_load``; 0.3.75 has neither (simulated here). The
    process-wide attention is SDPA while training and exactly what it was afterwards."""
    result = run_in_comfy(_training_switches_around_training_steps)
    assert result == {"no_flag": [False], "training": [True, True, True], "validation": [False, True], "again": True,
                      "after": [False, True], "full_loads": [False, True, True], "memory": [1e20] * 3}


def _lora_gradients_through_an_fp8_fast_path() -> dict:
    import comfy.ops
    import torch
    from aesthete.nodes.training_adapter import TrainingSteps
    from aesthete.training.lora_network import LoraNetwork

    def inference_only(self, input):
        with torch.no_grad():
            return torch.nn.functional.linear(input, self.weight.to(input.dtype), self.bias.to(input.dtype))

    comfy.ops.fp8_linear = inference_only

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = torch.nn.Linear(4, 4)
            self.proj = comfy.ops.fp8_ops.Linear(4, 4, dtype=torch.float8_e4m3fn)
            self.proj.weight = torch.nn.Parameter(torch.randn(4, 4).to(torch.float8_e4m3fn), requires_grad=False)
            self.proj.bias = torch.nn.Parameter(torch.zeros(4), requires_grad=False)

        def forward(self, x):
            return self.proj(self.to_q(x))

    model = Model().eval().requires_grad_(False)
    grads = {}
    for label, training in (("before", False), ("training", True)):
        network = LoraNetwork.create(model, rank=2, alpha=2.0, targets=("to_q",))
        with torch.no_grad():
            network.layers[0].up.weight.fill_(0.1)
        network.attach(model)
        steps = TrainingSteps(model)
        if training:
            steps.__enter__()
        out = model(torch.randn(3, 4))
        grads[label] = out.requires_grad
        if out.requires_grad:
            out.square().sum().backward()
            grads[label] = bool(network.layers[0].up.weight.grad.any())
        if training:
            steps.__exit__(None, None, None)
        network.detach()
    return {**grads, "training_mode_after": model.proj.training}


def test_comfyuis_fp8_fast_path_is_off_while_training_so_the_backward_pass_reaches_the_lora():
    """``comfy.ops.fp8_ops`` (``--fast`` on GPUs with fp8 compute) multiplies in fp8 with a kernel that has no backward
    pass, unless the layer is in training mode (simulated: the fast path runs without gradients). While the training
    steps run those layers are in training mode, so a LoRA before them learns; afterwards they are as they were."""
    result = run_in_comfy(_lora_gradients_through_an_fp8_fast_path)
    assert result == {"before": False, "training": True, "training_mode_after": False}


def _errors_inside_inference_only_layers_named() -> dict:
    from aesthete.nodes.training_adapter import inference_only_layers_named

    out = {}
    for label, text in (("fp8", "derivative for aten::_scaled_mm is not implemented"), ("other", "shape mismatch")):
        try:
            with inference_only_layers_named():
                raise RuntimeError(text)
        except RuntimeError as e:
            out[label] = str(e)
    return out


def test_a_backward_pass_through_an_operation_without_one_is_refused_in_words():
    """Where a layer cannot be switched to a differentiable path (a scaled-fp8 checkpoint's fp8 matrix multiplication
    under --fast), autograd's error becomes one that says what to change; other errors pass unchanged."""
    result = run_in_comfy(_errors_inside_inference_only_layers_named)
    assert result["other"] == "shape mismatch"
    assert result["fp8"].startswith("Train LoRA cannot train through one of this model's layers")
    assert "_scaled_mm" in result["fp8"] and "without --fast" in result["fp8"]
