"""Benchmark: Judge LoRA Files on 5 files against the 5 graphs of core nodes a user would queue instead.

    .venv/bin/python -m benchmarks.bench_sweep [--files 5] [--size 256] [--steps 4]

Both run in a real ComfyUI (a fresh server each, so neither gains from the other's cache or memory), on the small
Kolors of the tests (devkit/kolors_models.small_kolors: the whole SDXL block layout at 320 channels, 0.28 B
parameters, fp16 on disk, loaded in fp32) with ``--files`` LoRA files of one run written as DiffSynth-Studio's
trainer leaves them (rank 4 on every attention projection):
- baseline: for each file, one graph queued after the other on the same server, as a user compares epochs by hand:
  Kolors Loader, LoraLoaderModelOnly (the file's ComfyUI-format twin), CLIPTextEncode x2, EmptyLatentImage, KSampler,
  VAEDecode, Aesthetic Score (ComfyUI's cache keeps the loader, the encodings and the predictor between graphs);
- ours: one graph with Judge LoRA Files over the DiffSynth checkpoints/ folder, the same prompts, seed, sampler and
  size (Validation Settings), the same predictor.
Times the wall clock from the first queue to the last result, and the peak resident memory of each server process
(VmHWM, which only ever grows in a fresh process). Prints both, and ours / baseline. Goal: at least 1.0x the
baseline's speed at no more than its peak memory. The two sides' scores are checked equal (the same images).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from devkit.child import memory_mib

log = logging.getLogger("aesthete.bench")

PROMPT = "二次元，genshin，genshin impact，ganyu，蓝发少女，白色背景"
NEGATIVE = "低质量，模糊"


def setup(server, files: int):
    from devkit.factories import aesthetic_predictor
    from devkit.kolors_models import SMALL_UNET, kolors_epoch_loras, small_kolors

    kolors = server.link_model("kolors", small_kolors(), "bench-small-kolors")
    predictor = server.link_model("aesthetic", aesthetic_predictor("tiny"), "bench-predictor")
    root = server.models_dir / "loras" / "bench_run"
    kolors_epoch_loras(root / "comfy", root / "checkpoints", epochs=tuple(range(1, files + 1)),
                       unet_config=SMALL_UNET)
    return kolors, predictor


def core_graphs(kolors: str, predictor: str, files: int, size: int, steps: int) -> list:
    from devkit.graph import new_graph

    graphs = []
    for epoch in range(1, files + 1):
        g = new_graph()
        loader = g.node("AestheteKolorsLoader", kolors=kolors, dtype="fp32", text_encoder_device="default")
        lora = g.node("LoraLoaderModelOnly", model=loader.out(0),
                      lora_name=f"bench_run/comfy/run_epoch{epoch:04d}.safetensors", strength_model=1.0)
        positive = g.node("CLIPTextEncode", text=PROMPT, clip=loader.out(1))
        negative = g.node("CLIPTextEncode", text=NEGATIVE, clip=loader.out(1))
        latent = g.node("EmptyLatentImage", width=size, height=size, batch_size=1)
        sampled = g.node("KSampler", model=lora.out(0), positive=positive.out(0), negative=negative.out(0),
                         latent_image=latent.out(0), seed=5, steps=steps, cfg=5.0, sampler_name="euler",
                         scheduler="normal", denoise=1.0)
        decoded = g.node("VAEDecode", samples=sampled.out(0), vae=loader.out(2))
        score = g.node("AestheteScore", predictor=g.node("AesthetePredictorLoader", model=predictor, device="cpu",
                                                         dtype="fp32").out(0), images=decoded.out(0), batch_size=1)
        shown = g.node("PreviewAny", source=score.out(1))
        graphs.append((g.finalize(), shown.id))
    return graphs


def sweep_graph(kolors: str, predictor: str, size: int, steps: int, lora_set: str = "bench_run/checkpoints"):
    from devkit.graph import new_graph

    g = new_graph()
    loader = g.node("AestheteKolorsLoader", kolors=kolors, dtype="fp32", text_encoder_device="default")
    settings = g.node("AestheteValidationSettings", prompts=PROMPT, negative=NEGATIVE, seed=5, steps=steps,
                      width=size, height=size, images_per_prompt=1, cfg=5.0, sampler_name="euler",
                      scheduler="normal", output_lora="best score",
                      predictor=g.node("AesthetePredictorLoader", model=predictor, device="cpu", dtype="fp32").out(0))
    sweep = g.node("AestheteLoraSweep", model=loader.out(0), clip=loader.out(1), vae=loader.out(2),
                   lora_set=lora_set, validation=settings.out(0), strengths="1.0",
                   include_base=False, alpha=4.0)
    g.node("PreviewAny", source=sweep.out(5))
    return g.finalize(), sweep.id


def run_side(side: str, files: int, size: int, steps: int, lora_set: str = "") -> tuple[float, float, list[float]]:
    from devkit.client import ComfyClient
    from devkit.comfy_server import running_server

    with running_server(f"aesthete-bench-sweep-{side}-") as server:
        kolors, predictor = setup(server, files)
        client = ComfyClient(server.url)
        started = time.perf_counter()
        if side == "core":
            scores = []
            for graph, shown in core_graphs(kolors, predictor, files, size, steps):
                result = client.run(graph, timeout=3600)
                scores.append(float(result.node_output(shown)["text"][0]))
        else:
            graph, sweep = sweep_graph(kolors, predictor, size, steps, lora_set)
            result = client.run(graph, timeout=3600)
            scores = [r["scores"][0] for r in result.node_output(sweep)["sweep"]]
        seconds = time.perf_counter() - started
        return seconds, memory_mib("VmHWM", server.process.pid), scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--files-as", choices=["diffsynth", "comfyui"], default="diffsynth",
                        help="which copy Judge LoRA Files reads: DiffSynth's checkpoints/ folder (.ckpt, what the "
                             "recipe's users have) or the ComfyUI-format files the core graphs read")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lora_set = "bench_run/checkpoints" if args.files_as == "diffsynth" else "bench_run/comfy"
    results = {side: run_side(side, args.files, args.size, args.steps, lora_set) for side in ("core", "sweep")}
    (core_s, core_mb, core_scores), (ours_s, ours_mb, ours_scores) = results["core"], results["sweep"]
    worst = max(abs(a - b) for a, b in zip(core_scores, ours_scores))
    sys.stdout.write(
        f"{args.files} files ({args.files_as} format for Judge LoRA Files), small Kolors, {args.size}x{args.size}, "
        f"{args.steps} steps, 1 image each\n"
        f"{'':28}{'seconds':>10}{'peak RSS MB':>14}\n"
        f"{'core graphs, one per file':28}{core_s:10.1f}{core_mb:14.0f}\n"
        f"{'Judge LoRA Files':28}{ours_s:10.1f}{ours_mb:14.0f}\n"
        f"speed: {core_s / ours_s:.2f}x the core graphs'; memory: {ours_mb / core_mb:.2f}x; "
        f"largest score difference {worst:.2e}\n")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
