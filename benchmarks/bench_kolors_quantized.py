"""ChatGLM3, Kolors's text encoder, stored in 8 and 4 bits (kolors.quantize) against its fp16 weights, one run.

    .venv/bin/python -m benchmarks.bench_kolors_quantized [--repeats 3]

The weights: ``medium_chatglm3_file`` (devkit/kolors_models.py): ChatGLM3-6B's real layer shapes (hidden 4096,
feed-forward 13696, vocabulary 65024) with 2 of its 28 layers, random, saved in fp16 as users keep
chatglm3-fp16.safetensors. Each choice of the loaders' text-encoder dtype loads that file through our loader
(``kolors_clip``, ComfyUI's CLIP) in its own process on the CPU:
- fp32: the fp16 file's values computed in fp32 (what "auto" does on a CPU): the baseline and the reference;
- fp8_e4m3fn: weight-only fp8 (ComfyUI's manual cast), computed in fp32;
- q8_0, q4_1: block-quantized while loading, dequantized layer by layer into fp32 at each matrix product;
- the libraries measured against ours (LIBRARY_CHOICES; a row says "did not run" with the reason where a package is
  missing or a format does not run on this machine): the fp32-loaded matrices replaced by the library's layers, the
  token table in our 8 bits as in q8_0/q4_1, so only the matrices' format differs: torchao's int8 weight-only (per
  row, per 32) and int4 (IntxWeightOnly per 32; Int4WeightOnly packed), bitsandbytes' int8 (LLM.int8 without
  outliers) and nf4, comfy-kitchen's int8 (ComfyUI's newest quantized layers: weights per row, activations quantized
  on the fly) and nvfp4, and the gguf package's own Q8_0 / Q4_1 quantizer with its numpy dequantizer.
Printed per choice: bytes the encoder's layers and token table hold (this model, then the whole real ChatGLM3-6B
from its config's shapes), the context's and pooled vector's relative error against the baseline (one prompt, the
256-token context Kolors uses), encode time (median of ``repeats`` after one warm-up) and its ratio to the baseline
(above 1.0x: slower than the baseline) and to our layout of the same width, the peak resident memory of loading.
Install the other libraries into the venv first (only gguf is a dependency of the pack): ``pip install torchao bitsandbytes
comfy-kitchen`` (check with ``pip install --dry-run`` that nothing is downgraded).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from devkit.child import MIB, ChildFailed, enter_comfy, memory_mib, print_result, run_child
PROMPT = "二次元，genshin impact，ganyu，蓝发少女，白色背景, a girl with blue hair on a white background, anime style"
CHOICES = ("fp32", "fp8_e4m3fn", "q8_0", "q4_1")
# the libraries measured against ours: each quantizes the same fp32-loaded layers (the token table in our 8 bits, as in
# q8_0/q4_1, so only the matrices' format differs); the package each needs, installed or not (then reported)
LIBRARY_CHOICES = {
    "torchao int8": "torchao", "torchao int8 g32": "torchao", "torchao int4 g32": "torchao",
    "torchao int4 packed": "torchao",
    "bnb int8": "bitsandbytes", "bnb nf4": "bitsandbytes",
    "kitchen int8": "comfy_kitchen", "kitchen nvfp4": "comfy_kitchen",
    "gguf q8_0": "gguf", "gguf q4_1": "gguf",
}


# ---------------------------------------------------------------------------------------- the libraries' layers
def tensor_bytes(t) -> int:
    """Bytes a tensor holds, looking inside tensor subclasses (torchao, comfy_kitchen) and bitsandbytes' parameters."""
    import torch

    if t is None:
        return 0
    if hasattr(t, "quant_state") and t.quant_state is not None:  # bitsandbytes 4-bit: codes + block absmax
        qs = t.quant_state
        extra = tensor_bytes(qs.absmax) + tensor_bytes(getattr(qs, "code", None))
        if getattr(qs, "state2", None) is not None:
            extra += tensor_bytes(qs.state2.absmax) + tensor_bytes(qs.state2.code)
        return t.data.numel() * t.data.element_size() + extra
    if hasattr(t, "_qdata"):  # comfy_kitchen's QuantizedTensor: codes + its layout's tensors
        params = t._params
        return tensor_bytes(t._qdata) + sum(tensor_bytes(getattr(params, f)) for f in params._tensor_fields())
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):  # torchao
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    extra = tensor_bytes(getattr(t, "SCB", None)) if hasattr(t, "SCB") else 0  # bitsandbytes int8: row scales
    return t.numel() * t.element_size() + extra


def held_bytes(module) -> int:
    """Bytes of every parameter and buffer of ``module`` and its children, and of the quantized weights that layers
    keep as a plain attribute (``qweight``, comfy_kitchen's tensors here)."""
    seen, total = set(), 0
    for child in module.modules():
        tensors = [*child._parameters.values(), *child._buffers.values(), getattr(child, "qweight", None)]
        for t in tensors:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(t)
    return total


def _gguf_linear(linear, kind: str):
    import gguf
    import torch

    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_1": gguf.GGMLQuantizationType.Q4_1}[kind]

    class GGUFLinear(torch.nn.Module):  # the gguf package's own quantizer and (numpy) dequantizer
        def __init__(self):
            super().__init__()
            self.register_buffer("codes", torch.from_numpy(gguf.quants.quantize(linear.weight.detach().float().numpy(), qtype)))
            self.bias = linear.bias

        def forward(self, x):
            w = torch.from_numpy(gguf.quants.dequantize(self.codes.numpy(), qtype)).to(x.dtype)
            return torch.nn.functional.linear(x, w, self.bias)

    return GGUFLinear()


def library_linear(choice: str, linear):
    """The layer ``choice`` makes of one loaded full-precision ``linear``."""
    import torch

    weight, bias = linear.weight.detach().float(), linear.bias
    if choice.startswith("torchao"):
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        config = {"torchao int8": lambda: Int8WeightOnlyConfig(),
                  "torchao int8 g32": lambda: Int8WeightOnlyConfig(granularity=PerGroup(32)),
                  "torchao int4 g32": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
                  "torchao int4 packed": lambda: Int4WeightOnlyConfig(group_size=32)}[choice]()
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.weight.data, layer.bias = weight, bias
        holder = torch.nn.Sequential(layer)
        quantize_(holder, config)
        return holder[0]
    if choice.startswith("bnb"):
        import bitsandbytes as bnb

        if choice == "bnb int8":
            layer = bnb.nn.Linear8bitLt(weight.shape[1], weight.shape[0], bias=bias is not None,
                                        has_fp16_weights=False, threshold=0.0)
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=bias is not None,
                                      compute_dtype=torch.float32, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        layer.bias = bias
        return layer.to("cpu")  # bitsandbytes quantizes when the layer moves to its device
    if choice.startswith("kitchen"):
        from comfy_kitchen.tensor import QuantizedTensor

        qt = (QuantizedTensor.from_float(weight, "TensorWiseINT8Layout", per_channel=True, is_weight=True)
              if choice == "kitchen int8" else QuantizedTensor.from_float(weight, "TensorCoreNVFP4Layout"))

        class KitchenLinear(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.qweight, self.bias = qt, bias

            def forward(self, x):
                return torch.nn.functional.linear(x, self.qweight, self.bias)

        return KitchenLinear()
    return _gguf_linear(linear, choice.split()[1])


def quantize_with_library(chatglm, choice: str) -> tuple[int, int]:
    """Replaces every matrix of ``chatglm`` (loaded in fp32) by ``choice``'s layer and its token table by our 8-bit
    one; returns (bytes, weights) of the matrices (biases left out) to scale to the whole ChatGLM3-6B."""
    import torch

    from aesthete.kolors import quantize

    table = chatglm.get_input_embeddings().weight.detach()
    embedding = quantize.quantized_operations("q8_0").Embedding(*table.shape)
    embedding.load_state_dict({"weight": table})
    chatglm.transformer.embedding.word_embeddings = embedding
    matrix_bytes = weights = 0
    for name, module in list(chatglm.named_modules()):
        if isinstance(module, torch.nn.Linear):
            parent = chatglm.get_submodule(name.rsplit(".", 1)[0])
            layer = library_linear(choice, module)
            setattr(parent, name.rsplit(".", 1)[1], layer)
            matrix_bytes += held_bytes(layer) - tensor_bytes(module.bias)
            weights += module.weight.numel()
    return matrix_bytes, weights


def worker(choice: str, repeats: int, out_dir: Path) -> dict:
    import gc
    import statistics
    import time

    import torch

    from aesthete.kolors.folder import chatglm3_weights, read_json
    from aesthete.nodes.kolors_model import kolors_clip
    from aesthete.training.memory import reset_resident_peak
    from devkit.kolors_models import medium_chatglm3_file

    files = medium_chatglm3_file()
    reset_resident_peak()
    before = memory_mib("VmRSS")
    library = choice in LIBRARY_CHOICES
    clip = kolors_clip([files["chatglm3"]], read_json(files["config"]), files["tokenizer"],
                       "fp32" if library else choice, "cpu", state_dict=chatglm3_weights([files["chatglm3"]]))
    bits = None
    if library:
        matrix_bytes, weights = quantize_with_library(clip.cond_stage_model.transformer, choice)
        bits = 8 * matrix_bytes / weights
        gc.collect()
    load_peak = (memory_mib("VmHWM") - before) * MIB
    held = held_bytes(clip.cond_stage_model.transformer)
    tokens = clip.tokenize(PROMPT)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            if i:
                times.append(time.perf_counter() - start)
    torch.save({"cond": cond.clone(), "pooled": pooled.clone()}, out_dir / f"{choice}.pt")
    return {"held": held, "seconds": statistics.median(times), "load_peak": load_peak, "bits": bits}


def real_bytes(choice: str, bits: float | None) -> float:
    """Bytes the whole ChatGLM3-6B holds in ``choice``; a library's matrices at the ``bits`` per weight measured."""
    from aesthete.kolors.quantize import chatglm3_bytes, quantized_bytes
    from devkit.kolors_reference import real_chatglm3_keys

    shapes = {k: s for k, s in real_chatglm3_keys(prefix="").items() if "output_layer" not in k}
    if choice in ("q8_0", "q4_1"):
        return chatglm3_bytes(shapes, choice)
    if bits is not None:
        return sum(quantized_bytes(*s, "q8_0") if "word_embeddings" in k else bits / 8 * math.prod(s)
                   if len(s) == 2 else 2 * s[0] for k, s in shapes.items())
    size = {"fp32": 2, "fp8_e4m3fn": 1}[choice]  # fp32 here computes the fp16 file's values: count it as fp16
    return sum((size if len(s) == 2 else 2) * math.prod(s) for s in shapes.values())


def ours_for(choice: str) -> str:
    """Our layout of the same width, the row a choice's ratios are taken against."""
    return "q4_1" if "4" in choice.split()[-1] else "q8_0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--libraries", nargs="*", default=list(LIBRARY_CHOICES),
                        help="which library rows to run beside ours (default: all; none: only ours)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        enter_comfy("--cpu")
        print_result(worker(args.worker, args.repeats, Path(args.out)))
        return 0

    import importlib.util

    import torch

    from devkit.kolors_models import medium_chatglm3_file

    medium_chatglm3_file()  # built once, outside the timed processes
    results, failed = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for choice in (*CHOICES, *args.libraries):
            package = LIBRARY_CHOICES.get(choice)
            if package and importlib.util.find_spec(package) is None:
                failed[choice] = f"{package} is not installed"
                continue
            try:
                results[choice] = run_child(__spec__.name, "--worker", choice, "--repeats", args.repeats, "--out", tmp)
            except ChildFailed as e:
                if not package:
                    raise
                failed[choice] = e.last_line[:150]
            results[choice].update(torch.load(Path(tmp) / f"{choice}.pt"))
    base = results["fp32"]
    lines = ["ChatGLM3 text encoder, real layer shapes (2 of 28 layers), CPU, one prompt of 256 tokens",
             f"{'choice':<21}{'held (this)':>13}{'held (6B)':>11}{'context err':>13}{'pooled err':>12}"
             f"{'encode s':>10}{'vs fp32':>9}{'vs ours':>9}{'load peak':>11}"]
    for choice, r in results.items():
        err = ((r["cond"] - base["cond"]).norm() / base["cond"].norm()).item()
        perr = ((r["pooled"] - base["pooled"]).norm() / base["pooled"].norm()).item()
        ours = results.get(ours_for(choice)) if choice != "fp32" else None
        vs_ours = f"{r['seconds'] / ours['seconds']:>8.2f}x" if ours else f"{'':>9}"
        lines.append(f"{choice:<21}{r['held'] / 2**30:>10.2f} GiB{real_bytes(choice, r['bits']) / 1e9:>8.2f} GB"
                     f"{err:>12.2%}{perr:>12.2%}{r['seconds']:>10.2f}{r['seconds'] / base['seconds']:>8.2f}x"
                     f"{vs_ours}{r['load_peak'] / 2**30:>7.2f} GiB")
    for choice, why in failed.items():
        lines.append(f"{choice:<21}did not run: {why}")
    lines.append("held (6B): the whole ChatGLM3-6B's weights Kolors reads (fp32 row: its fp16 file; a library's "
                 "matrices at the bits per weight measured here, its token table in our 8 bits); vs fp32 / vs ours: "
                 "encode time against fp32 and against our layout of the same width (q8_0 or q4_1), above 1.0x is "
                 "slower; load peak of a library row includes the fp32 load it quantizes from")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
