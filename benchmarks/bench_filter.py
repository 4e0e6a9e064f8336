"""Filtering speed: the Ray engine against the local engine in the same run, and the per-image costs behind both.

Scores N images of SIZE x SIZE (PNG) with a full-size random-weight ViT-L/14 V2 predictor (the real cost), through
``filter_folder`` (what ``aesthete filter`` runs) with the local engine and then with the Ray engine on a Ray started
on this machine (what ``--engine ray`` without ``--address`` does), each in its own process. Prints:

- per-image costs measured inside the local run: decode (``open_image``), preprocess (the predictor's image
  processor, per image of a batch), forward (``AestheticPredictor.forward``, per image of a batch);
- each engine's files/s end to end (local: from loading the predictor; Ray: from ``ray.init``, actors loading their
  predictor included) and steady (from the first batch's results to the last), and the Ray engine's overhead;
- the largest per-file score difference between the engines, and the load average around each run (other jobs on
  the machine slow a run down; compare runs made under the same load).

  .venv/bin/python -m benchmarks.bench_filter [--images 256] [--size 512] [--batch-size 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from devkit.child import print_result, run_child

log = logging.getLogger("aesthete.bench")


def timed(fn, bucket: list):
    """``fn``, adding its wall time and this process's CPU time (every thread) to ``bucket``. The local engine does
    one thing at a time, so the CPU time is that step's; unlike the wall time it hardly grows when other jobs load
    the machine."""
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[0] += time.perf_counter() - start
            bucket[1] += time.process_time() - cpu
    return wrapper


def run_local(model: Path, src: Path, dst: Path, batch_size: int) -> dict:
    from aesthete.scoring import folder as folder_mod
    from aesthete.scoring.filter import LocalEngine, filter_folder
    from aesthete.scoring.predictor import load_predictor

    start = time.perf_counter()
    predictor = load_predictor(model, "cpu", "fp32")
    costs = {"decode": [0.0, 0.0], "preprocess": [0.0, 0.0], "forward": [0.0, 0.0]}
    folder_mod.open_image = timed(folder_mod.open_image, costs["decode"])  # what score_files calls
    predictor.preprocess = timed(predictor.preprocess, costs["preprocess"])
    predictor.forward = timed(predictor.forward, costs["forward"])
    marks = []
    report = filter_folder(src, dst, LocalEngine(predictor, batch_size), min_score=None,
                           progress=lambda done, total: marks.append((time.perf_counter(), done)))
    end = time.perf_counter()
    return {"seconds": end - start, "marks": [(t - start, d) for t, d in marks],
            "scores": {f.name: f.score for f in report.files}, "costs": costs}


def run_ray(model: Path, src: Path, dst: Path, batch_size: int) -> dict:
    from aesthete.scoring.filter import filter_folder
    from aesthete.scoring.ray_engine import RayEngine, RayOptions

    start = time.perf_counter()
    marks = []
    with RayEngine(model, RayOptions(batch_size=batch_size, device="cpu", progress_bars=False)) as engine:
        plan = engine.plan
        report = filter_folder(src, dst, engine, min_score=None,
                               progress=lambda done, total: marks.append((time.perf_counter(), done)))
        end = time.perf_counter()
    return {"seconds": end - start, "marks": [(t - start, d) for t, d in marks],
            "scores": {f.name: f.score for f in report.files},
            "plan": {"actors": plan.actors, "threads": plan.threads, "device": plan.device}}


def steady(marks: list) -> float:
    """files/s from the first batch's results to the last (start-up and the first batch left out); NaN with fewer
    than 3 batches."""
    (t0, d0), (t1, d1) = marks[0], marks[-1]
    return (d1 - d0) / (t1 - t0) if len(marks) >= 3 and t1 > t0 else float("nan")


# On paper: what the measured per-image CPU costs give on GPU nodes (docs/benchmarks.md, Filtering, local and on Ray)
A100_FP16_FLOPS = 312e12  # dense tensor-core peak
GPU_EFFICIENCY = 0.4  # share of the peak a ViT-L forward in fp16 reaches in eager PyTorch (an assumption)
CLIP_RETRIEVAL_PER_A100 = 312  # images/s, clip-retrieval's published ViT-L/14 inference figure


def vit_flops(hidden: int, layers: int, image: int, patch: int, mlp: int) -> float:
    """FLOPs (2 per multiply-add) of one image through the vision tower as FastScorer runs it: every layer for
    every token, the last layer's query, output and MLP for the CLS token only."""
    tokens = (image // patch) ** 2 + 1
    per_token = 4 * hidden * hidden + 2 * hidden * mlp  # q, k, v, out projections; the two MLP matmuls
    full = tokens * per_token + 2 * tokens * tokens * hidden  # + attention scores and weighted sum
    last = tokens * 2 * hidden * hidden + (2 * hidden * hidden + 2 * hidden * mlp) + 2 * tokens * hidden
    embed = (tokens - 1) * 3 * patch * patch * hidden
    return 2.0 * ((layers - 1) * full + last + embed)


def paper_estimate(cpu_ms: dict, forward_wall_ms: float) -> dict:
    """Images/s of 1 and 8 GPU nodes (one A100 each, 16 or 32 CPU cores decoding): each node does the lesser of what
    its GPU forwards and what its cores decode and preprocess (measured CPU time per image here)."""
    from devkit.factories import FULL_VISION_CONFIG as c

    flops = vit_flops(c["hidden_size"], c["num_hidden_layers"], c["image_size"], c["patch_size"],
                      c["intermediate_size"])
    gpu = GPU_EFFICIENCY * A100_FP16_FLOPS / flops
    per_core = 1000.0 / (cpu_ms["decode"] + cpu_ms["preprocess"])
    nodes = {f"{n} node(s), {cores} cores": n * min(gpu, cores * per_core) for n in (1, 8) for cores in (16, 32)}
    return {"gflop_per_image": flops / 1e9, "cpu_gflops_measured": flops / forward_wall_ms / 1e6,
            "a100_forward_per_s": gpu, "decode_preprocess_per_core_per_s": per_core, "nodes": nodes,
            "clip_retrieval": {"1 node(s)": CLIP_RETRIEVAL_PER_A100, "8 node(s)": 8 * CLIP_RETRIEVAL_PER_A100}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--predictor", choices=["full", "tiny"], default="full",
                        help="tiny: a quick check that the script runs (its figures mean nothing)")
    parser.add_argument("--phase", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aesthete.scoring").setLevel(logging.WARNING)

    if args.phase:  # child process
        run = run_local if args.phase == "local" else run_ray
        result = run(args.model, args.src, args.dst, args.batch_size)
        print_result(result)
        return 0

    from benchmarks.bench_scoring import make_images
    from devkit.factories import aesthetic_predictor

    model = aesthetic_predictor(args.predictor)
    results, loads = {}, {}
    with tempfile.TemporaryDirectory(prefix="aesthete-bench-filter-") as tmp:
        src = Path(tmp) / "src"
        make_images(src, args.images, args.size)
        for phase in ("local", "ray"):
            before = os.getloadavg()[0]
            results[phase] = run_child(__spec__.name, "--phase", phase, "--model", model, "--src", src,
                                       "--dst", Path(tmp) / f"dst-{phase}", "--batch-size", args.batch_size)
            loads[phase] = (before, os.getloadavg()[0])
            log.info("%-5s %7.1f s (load average %.1f -> %.1f)", phase, results[phase]["seconds"], *loads[phase])

    n = args.images
    local, on_ray = results["local"], results["ray"]
    costs = {k: v[0] / n * 1000 for k, v in local["costs"].items()}
    cpu_costs = {k: v[1] / n * 1000 for k, v in local["costs"].items()}
    diff = max(abs(a - b) for name, a in local["scores"].items()
               if a is not None for b in [on_ray["scores"][name]])
    e2e = {p: n / r["seconds"] for p, r in results.items()}
    st = {p: steady(r["marks"]) for p, r in results.items()}
    first = {p: r["marks"][0][0] for p, r in results.items()}
    summary = {"predictor": args.predictor, "images": n, "size": args.size, "batch_size": args.batch_size, "cpus": os.cpu_count(),
               "per_image_ms": costs, "per_image_cpu_ms": cpu_costs, "seconds_to_first_results": first,
               "seconds": {p: r["seconds"] for p, r in results.items()}, "files_per_s_end_to_end": e2e, "files_per_s_steady": st,
               "ray_overhead_end_to_end": e2e["local"] / e2e["ray"] - 1, "ray_overhead_steady": st["local"] / st["ray"] - 1,
               "max_score_diff": diff, "load_average": loads, "ray_plan": on_ray["plan"]}
    log.info("")
    log.info("%d images %dx%d PNG, %s V2 predictor (random weights), fp32 CPU, batch %d, %d CPUs; Ray: %d actor(s) "
             "x %d thread(s)", n, args.size, args.size, "full-size ViT-L/14" if args.predictor == "full" else "tiny",
             args.batch_size, os.cpu_count(), on_ray["plan"]["actors"], on_ray["plan"]["threads"])
    log.info("per image (local run), wall / CPU time: decode %.1f / %.1f ms, preprocess %.1f / %.1f ms, forward %.1f "
             "/ %.1f ms", costs["decode"], cpu_costs["decode"], costs["preprocess"], cpu_costs["preprocess"],
             costs["forward"], cpu_costs["forward"])
    log.info("%-6s %9s %14s %12s %12s", "engine", "seconds", "first results", "end-to-end", "steady")
    for p in ("local", "ray"):
        log.info("%-6s %9.1f %12.1f s %8.3f f/s %8.3f f/s", p, results[p]["seconds"], first[p], e2e[p], st[p])
    log.info("Ray overhead: %+.1f%% end to end, %+.1f%% steady; max |score diff| %.2e",
             100 * summary["ray_overhead_end_to_end"], 100 * summary["ray_overhead_steady"], diff)
    paper = paper_estimate(cpu_costs, costs["forward"])
    summary["on_paper"] = paper
    log.info("on paper: ViT-L/14 %.0f GFLOP per image (%.0f GFLOP/s reached by this CPU's forward); an A100 at %d%% of "
             "its fp16 peak forwards %.0f images/s; decode + preprocess take %.1f CPU ms per image, %.1f images/s "
             "per core", paper["gflop_per_image"], paper["cpu_gflops_measured"], 100 * GPU_EFFICIENCY,
             paper["a100_forward_per_s"], cpu_costs["decode"] + cpu_costs["preprocess"],
             paper["decode_preprocess_per_core_per_s"])
    for name, rate in paper["nodes"].items():
        n = int(name.split()[0])
        log.info("  %-22s %7.0f images/s (clip-retrieval's %d per A100: %d)", name, rate, CLIP_RETRIEVAL_PER_A100,
                 n * CLIP_RETRIEVAL_PER_A100)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
