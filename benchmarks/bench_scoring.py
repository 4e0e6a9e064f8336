"""Aesthetic scoring speed: the issue's reference loop against our command line and node paths, in one run.

Scores N images of SIZE x SIZE with a full-size random-weight ViT-L/14 V2 predictor (the real cost) and prints
images per second, the ratio to the reference loop, our overhead over our forward pass on the same batches, and the
peak memory of each path. Every path runs in its own process (so peak memory is its own) on the same image files
and the same weights, and the scores of every path are compared with the reference's. ``transformers`` is the
model's own forward on our batches (what the reference calls, without the per-image loop); ``forward`` is ours
(``scoring.speed.FastScorer``, the default path: see its docstring).

The ``+compile`` rows are the opt-in ``--compile`` (the loader's ``compile``: FastScorer with ATen linears under
torch.compile). Each compiles on a warm-up batch first; its compile time (the warm-up minus one steady batch) is
reported separately (an empty inductor cache: a first session; later ones reuse the on-disk cache
and compile faster), and images/s both without it (a ComfyUI session or a long folder, where it is paid once) and
with it (a one-off run).

  .venv/bin/python -m benchmarks.bench_scoring [--images 64] [--size 512] [--batch-size 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from devkit.child import memory_mib, print_result, run_child

log = logging.getLogger("aesthete.bench")
PHASES = ("reference", "transformers", "forward", "cli", "node", "forward+compile", "cli+compile", "node+compile")


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        x = np.linspace(0, 1, size)[None, :, None]
        base = np.concatenate([x * np.ones((size, 1, 1)), x.transpose(1, 0, 2) * np.ones((1, size, 1)),
                               np.full((size, size, 1), i / max(count, 1))], axis=2)
        arr = np.clip(base * 220 + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"img_{i:03}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def run_phase(phase: str, model: Path, files: list[Path], batch_size: int, device: str) -> dict:
    """One path, timed after the model is loaded (loading is not what is compared) and, for a ``+compile`` path,
    after compiling on a warm-up batch."""
    import torch
    from PIL import Image

    if phase == "reference":
        # the code; CLIPImageProcessor, as CLIPProcessor would also need tokenizer files
        from aesthetics_predictor import AestheticsPredictorV2Linear
        from transformers import CLIPImageProcessor

        predictor = AestheticsPredictorV2Linear.from_pretrained(str(model)).to(device)
        processor = CLIPImageProcessor.from_pretrained(str(model))
        scores = []
        start = time.perf_counter()
        for path in files:
            image = Image.open(path).convert("RGB")
            inputs = processor(images=image, return_tensors="pt").to(device)
            with torch.no_grad():
                scores.append(predictor(**inputs).logits.tolist()[0][0])
        seconds = time.perf_counter() - start
    else:
        from aesthete.scoring import predictor as predictor_module
        from aesthete.scoring.predictor import ModelForward, load_predictor

        phase, _, compiled = phase.partition("+")
        predictor = load_predictor(model, device, "fp32", compile=bool(compiled))
        # the CLI below gets this same object (so the same compiled code): loading is not what is compared
        predictor_module.load_predictor = lambda *args, **kwargs: predictor
        warm_up = 0.0
        if compiled:
            first = predictor.preprocess([Image.open(p).convert("RGB") for p in files[:batch_size]])
            start = time.perf_counter()
            predictor.forward(first)
            warm_up = time.perf_counter() - start
            if predictor.scorer.failed:
                raise SystemExit(f"compiling failed: {predictor.scorer.failed}")
        forward_seconds = [0.0]
        plain_forward = predictor.forward

        def timed_forward(pixel_values):
            t = time.perf_counter()
            try:
                return plain_forward(pixel_values)
            finally:
                forward_seconds[0] += time.perf_counter() - t

        predictor.forward = timed_forward  # measures the forward share inside our own paths
        if phase in ("forward", "transformers"):  # the model alone, on pixel values prepared beforehand, same batches
            pixels = [predictor.preprocess([Image.open(p).convert("RGB") for p in files[i:i + batch_size]])
                      for i in range(0, len(files), batch_size)]
            if phase == "transformers":  # the model's own forward (what the reference calls), batched
                predictor.scorer = ModelForward(predictor.model)
            start = time.perf_counter()
            scores = [s for px in pixels for s in predictor.forward(px).tolist()]
            seconds = time.perf_counter() - start
        elif phase == "cli":  # `aesthete score FOLDER`, in process: decoding, batching, scoring, the report
            import contextlib
            import io

            from aesthete.cli import main

            out = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(out):
                code = main(["score", str(files[0].parent), "--model", str(model), "--batch-size", str(batch_size),
                             "--device", device, "--dtype", "fp32", "--no-progress"] + ["--compile"] * bool(compiled))
            seconds = time.perf_counter() - start
            if code != 0:
                raise SystemExit(f"aesthete score exited with {code}")
            scores = [float(line.split("\t")[0]) for line in out.getvalue().splitlines()[:-1]]
        else:  # what AestheteScore runs on an IMAGE batch [B,H,W,C] (the tensor ComfyUI passes)
            import numpy as np

            batch = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])).float() / 255
            start = time.perf_counter()
            scores = predictor.score_tensor(batch, batch_size=batch_size)
            seconds = time.perf_counter() - start
        batches = -(-len(files) // batch_size)
        return {"phase": phase, "seconds": seconds, "scores": scores, "peak_rss_mib": memory_mib("VmHWM"),
                "forward_seconds": forward_seconds[0],
                "compile_seconds": max(warm_up - forward_seconds[0] / batches, 0.0) if compiled else 0.0}
    return {"phase": phase, "seconds": seconds, "scores": scores, "peak_rss_mib": memory_mib("VmHWM")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aesthete.scoring").setLevel(logging.WARNING)

    if args.phase:  # child process
        files = sorted(args.folder.glob("*.png"))
        print_result(run_phase(args.phase, args.model, files, args.batch_size, args.device))
        return 0

    from devkit.factories import aesthetic_predictor

    model = aesthetic_predictor("full")
    with tempfile.TemporaryDirectory(prefix="aesthete-bench-") as tmp:
        make_images(Path(tmp), args.images, args.size)
        results = {}
        for phase in PHASES:
            # a +compile phase gets an empty inductor cache: the compile time of a first session, not a cached one
            env = {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / f"inductor-{phase}")} if "+" in phase else {}
            results[phase] = run_child(__spec__.name, "--phase", phase, "--model", model, "--folder", tmp,
                                       "--batch-size", args.batch_size, "--device", args.device, env=env)
            log.info("%-9s %7.2f s", phase, results[phase]["seconds"])

    import torch

    n = args.images
    ref = results["reference"]
    log.info("")
    log.info("%d images %dx%d, full-size ViT-L/14 V2 random weights, batch %d, %s, torch %d threads, %d CPUs",
             n, args.size, args.size, args.batch_size, args.device, torch.get_num_threads(), os.cpu_count())
    log.info("overhead: our time beyond the model's forward, over the forward time; 'vs forward run' compares with "
             "the separate forward-only run, 'in run' with the forward time measured inside the same run (robust "
             "when other jobs share the CPU)")
    log.info("+compile: compile s = warm-up batch minus one steady batch; 'incl. compile' counts it in the run")
    log.info("%-33s %8s %7s %9s %15s %8s %14s %8s %8s %10s", "path", "images/s", "vs ref", "compile s",
             "img/s incl comp", "vs ref", "vs forward run", "in run", "peak MiB", "max |diff|")
    labels = {"reference": "reference loop (issue code)", "transformers": "transformers forward, batched",
              "forward": "FastScorer forward only",
              "cli": "aesthete score (CLI)", "node": "AestheteScore (IMAGE)"}
    for phase in PHASES:
        r = results[phase]
        base, _, compiled = phase.partition("+")
        label = labels[base] + (" +compile" if compiled else "")
        fwd = results["forward+compile" if compiled else "forward"]
        diff = max(abs(a - b) for a, b in zip(r["scores"], ref["scores"]))
        vs_run = in_run = ""
        if base in ("cli", "node"):
            vs_run = f"{(r['seconds'] - fwd['seconds']) / fwd['seconds']:+.1%}"
            in_run = f"{(r['seconds'] - r['forward_seconds']) / r['forward_seconds']:+.1%}"
        comp = r.get("compile_seconds", 0.0)
        incl = (f"{n / (r['seconds'] + comp):.3f}", f"{ref['seconds'] / (r['seconds'] + comp):.2f}x") if compiled \
            else ("", "")
        log.info("%-33s %8.3f %6.2fx %9s %15s %8s %14s %8s %8.0f %10.2e", label, n / r["seconds"],
                 ref["seconds"] / r["seconds"], f"{comp:.1f}" if compiled else "", *incl, vs_run, in_run,
                 r["peak_rss_mib"], diff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
