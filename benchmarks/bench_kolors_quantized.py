"""ChatGLM3, Kolors's text encoder, stored in 8 and 4 bits (kolors.quantize) against its fp16 weights, one run.

    .venv/bin/python -m benchmarks.bench_kolors_quantized [--repeats 3]

The weights: ``medium_chatglm3_file`` (devkit/kolors_models.py): ChatGLM3-6B's real layer shapes (hidden 4096,
feed-forward 13696, vocabulary 65024) with 2 of its 28 layers, random, saved in fp16 as users keep
chatglm3-fp16.safetensors. Each choice of the loaders' text-encoder dtype loads that file through our loader
(``kolors_clip``, ComfyUI's CLIP) in its own process on the CPU:
- fp32: the fp16 file's values computed in fp32 (what "auto" does on a CPU): the baseline and the reference;
- fp8_e4m3fn: weight-only fp8 (ComfyUI's manual cast), computed in fp32;
- q8_0, q4_1: block-quantized while loading, dequantized layer by layer into fp32 at each matrix product.
Printed per choice: bytes the encoder's layers and token table hold (this model, then the whole real ChatGLM3-6B
from its config's shapes), the context's and pooled vector's relative error against the baseline (one prompt, the
256-token context Kolors uses), encode time (median of ``repeats`` after one warm-up) and its ratio to the baseline
(above 1.0x: slower than the baseline), the peak resident memory of loading.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from devkit.child import MIB, enter_comfy, memory_mib, print_result, run_child

PROMPT = "二次元，genshin impact，ganyu，蓝发少女，白色背景, a girl with blue hair on a white background, anime style"
CHOICES = ("fp32", "fp8_e4m3fn", "q8_0", "q4_1")


def worker(choice: str, repeats: int, out_dir: Path) -> dict:
    import statistics
    import time

    import torch

    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import read_json
    from aesthete.nodes.kolors_model import kolors_clip
    from aesthete.training.memory import reset_resident_peak
    from devkit.kolors_models import medium_chatglm3_file

    files = medium_chatglm3_file()
    reset_resident_peak()
    before = memory_mib("VmRSS")
    clip = kolors_clip([files["chatglm3"]], read_json(files["config"]), files["tokenizer"], choice, "cpu",
                       state_dict=LazyWeights([files["chatglm3"]]))
    load_peak = (memory_mib("VmHWM") - before) * MIB
    held = sum(t.numel() * t.element_size() for t in clip.cond_stage_model.transformer.state_dict().values())
    tokens = clip.tokenize(PROMPT)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            if i:
                times.append(time.perf_counter() - start)
    torch.save({"cond": cond.clone(), "pooled": pooled.clone()}, out_dir / f"{choice}.pt")
    return {"held": held, "seconds": statistics.median(times), "load_peak": load_peak}


def real_bytes(choice: str) -> float:
    from aesthete.kolors.quantize import chatglm3_bytes
    from devkit.kolors_reference import real_chatglm3_keys

    shapes = {k: s for k, s in real_chatglm3_keys(prefix="").items() if "output_layer" not in k}
    if choice in ("q8_0", "q4_1"):
        return chatglm3_bytes(shapes, choice)
    size = {"fp32": 2, "fp8_e4m3fn": 1}[choice]  # fp32 here computes the fp16 file's values: count it as fp16
    return sum((size if len(s) == 2 else 2) * math.prod(s) for s in shapes.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        enter_comfy("--cpu")
        print_result(worker(args.worker, args.repeats, Path(args.out)))
        return 0

    import torch

    from devkit.kolors_models import medium_chatglm3_file

    medium_chatglm3_file()  # built once, outside the timed processes
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for choice in CHOICES:
            results[choice] = run_child(__spec__.name, "--worker", choice, "--repeats", args.repeats, "--out", tmp)
            results[choice].update(torch.load(Path(tmp) / f"{choice}.pt"))
    base = results["fp32"]
    lines = ["ChatGLM3 text encoder, real layer shapes (2 of 28 layers), CPU, one prompt of 256 tokens",
             f"{'choice':<12}{'held (this)':>13}{'held (6B)':>11}{'context err':>13}{'pooled err':>12}"
             f"{'encode s':>10}{'time ratio':>12}{'load peak':>11}"]
    for choice, r in results.items():
        err = ((r["cond"] - base["cond"]).norm() / base["cond"].norm()).item()
        perr = ((r["pooled"] - base["pooled"]).norm() / base["pooled"].norm()).item()
        lines.append(f"{choice:<12}{r['held'] / 2**30:>10.2f} GiB{real_bytes(choice) / 1e9:>8.2f} GB{err:>12.2%}"
                     f"{perr:>12.2%}{r['seconds']:>10.2f}{r['seconds'] / base['seconds']:>11.2f}x"
                     f"{r['load_peak'] / 2**30:>7.2f} GiB")
    lines.append("held (6B): the whole ChatGLM3-6B's weights Kolors reads (fp32 row: its fp16 file); time ratio: "
                 "this choice / fp32, above 1.0x is slower")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
