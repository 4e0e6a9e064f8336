"""The judge's scorers: our path against the reference's own scoring loop, per scorer, in one run.

For each scorer: the same full-size random-weight files (devkit/scorer_models.full_bench_root: the real
architectures and sizes, fp16 files loaded in fp32 by both sides) and the same N images of SIZE x SIZE, each with its
prompt. The reference is DiffSynth 1.1.9's ImageQualityMetric class (Aesthetic V2.5: its publisher's package), one
``score(image, prompt)`` call per image as its callers do; ours is ``load_scorer(...).score_images`` in batches.
Each side runs in its own process (so its peak memory, model loading included, is its own), warms up on one image,
then scores the N images once, timed. Prints images/s, the speed ratio, peak memory of both, and the largest score
difference as a fraction of the reference's spread over the images.

  .venv/bin/python -m benchmarks.bench_judge [--images 4] [--size 512] [--scorers pickscore-v1,hpsv2,...] [--roofline]

``--roofline`` adds, for scorers with a CLIP vision tower, how fast each side did the tower's matrix products (the
tower's linear-layer FLOPs per image, counted in full as the reference computes them, times the images, over each
side's seconds) against the fastest this CPU multiplies the tower's MLP matrices (oneDNN on our batch's rows and ATen
on one image's rows, timed in our process right after scoring): how much speed is left to win on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from devkit import REPO
from devkit.child import memory_mib, print_result, run_child

SCORERS = ("pickscore-v1", "clipscore-vit-l-14", "clipscore-vit-h-14", "hpsv2", "hpsv2.1", "mps-overall",
           "imagereward-v1", "aesthetic-v2.5")
PROMPTS = ("a red fox in the snow at dawn", "a bowl of ramen, studio light", "an old castle on a hill",
           "a portrait of a woman, warm light, soft color")


def reference_job(scorer: str, qm: Path) -> dict:
    clip_h = qm / "CLIP-ViT-H-14-laion2B-s32B-b79K"
    bpe = str(qm / "bpe_simple_vocab_16e6.txt.gz")
    return {
        "pickscore-v1": {"scorer": "PickScore", "path": {"pickscore": str(qm / "PickScore_v1"), "clip": str(clip_h)}},
        "clipscore-vit-l-14": {"scorer": "PickScore", "path": {"pickscore": str(qm / "clip-vit-large-patch14"),
                                                               "clip": str(qm / "clip-vit-large-patch14")}},
        "clipscore-vit-h-14": {"scorer": "CLIPScore", "path": {"open_clip_bpe": bpe},
                               "load_state": str(clip_h / "open_clip_model.safetensors")},
        "hpsv2": {"scorer": "HPScore_v2", "kwargs": {"model_version": "v2"},
                  "path": {"hpsv2": str(qm / "HPS_v2" / "HPS_v2_compressed.safetensors"), "open_clip_bpe": bpe}},
        "hpsv2.1": {"scorer": "HPScore_v2", "kwargs": {"model_version": "v21"},
                    "path": {"hpsv2.1": str(qm / "HPS_v2" / "HPS_v2.1_compressed.safetensors"), "open_clip_bpe": bpe}},
        "mps-overall": {"scorer": "MPScore", "path": {"clip": str(clip_h), "mps": str(
            qm / "MPS_overall_checkpoint" / "MPS_overall_checkpoint_diffsynth.safetensors")}},
        "imagereward-v1": {"scorer": "ImageRewardScore", "path": {
            "imagereward": str(qm / "ImageReward" / "ImageReward.safetensors"),
            "med_config": str(qm / "ImageReward" / "med_config.json"), "bert_model_path": str(qm / "bert-base-uncased")}},
    }[scorer]


def run_reference_side(scorer: str, root: Path, images: list[Path], prompts: list[str], work: Path) -> dict:
    from devkit.reference import run_reference

    qm = root / "QualityMetric"
    if scorer == "aesthetic-v2.5":
        return run_reference("aesthetic_v25", REPO / "tests" / "reference" / "aesthetic_v25_scores.py",
                             str(qm / "aesthetic-predictor-v2-5" / "aesthetic_predictor_v2_5.pth"),
                             str(qm / "siglip-so400m-patch14-384"), "2", *map(str, images))
    job = work / f"{scorer}.json"
    # repeat 2: the first pass warms up (its time is not kept: the minimum is)
    job.write_text(json.dumps({**reference_job(scorer, qm), "images": list(map(str, images)), "prompts": prompts,
                               "repeat": 2}))
    return run_reference("diffsynth", REPO / "tests" / "reference" / "diffsynth_scorers.py", str(job))


def run_ours_side(scorer: str, root: Path, images: list[Path], prompts: list[str], roofline: bool = False) -> dict:
    """In its own process (``--ours``): load, warm up on one image, score all once."""
    return run_child(__spec__.name, "--ours", scorer, root, json.dumps(prompts), "roofline" if roofline else "-",
                     *images, timeout=1800)


def _matmul_rates(vision, rows: int) -> dict:
    """GFLOP/s of the tower's first MLP matrix product on this CPU: oneDNN (GELU fused) on ``rows`` rows, the same
    on oneDNN's packed copy of the weight, ATen on one image's rows; medians of 5 after a warm-up."""
    import statistics

    import torch

    from aesthete.scoring import speed

    fc1 = vision.encoder.layers[0].mlp.fc1
    tokens = vision.embeddings.position_embedding.num_embeddings

    def rate(fn, m):
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 2 * m * fc1.in_features * fc1.out_features / statistics.median(times) / 1e9

    with torch.inference_mode():
        x, x1 = torch.randn(rows, fc1.in_features), torch.randn(tokens, fc1.in_features)
        out = {"aten_gflops": rate(lambda: torch.nn.functional.linear(x1, fc1.weight, fc1.bias), tokens)}
        if speed.onednn_linear_works():
            out["onednn_gflops"] = rate(lambda: speed._onednn_linear(x, fc1.weight, fc1.bias, "gelu"), rows)
        if speed.onednn_packing_works():  # oneDNN's blocked weight layout: a second copy of every weight
            packed = torch.ops.mkldnn._reorder_linear_weight(fc1.weight, rows)
            out["packed_gflops"] = rate(lambda: speed._onednn_linear(x, packed, fc1.bias, "gelu"), rows)
    return out


def _tower_flops(model) -> tuple[float, object] | None:
    """(FLOPs of a CLIP vision tower's linear layers per image, the tower), or None for other architectures."""
    vision = getattr(getattr(model, "model", None), "vision_model", None)
    if vision is None or not hasattr(vision, "encoder"):
        return None
    import torch

    tokens = vision.embeddings.position_embedding.num_embeddings
    linear = sum(m.weight.numel() for m in vision.encoder.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * tokens * linear, vision


def ours_child(scorer: str, root: str, prompts_json: str, roofline: str, paths: list[str]) -> None:
    from PIL import Image

    from aesthete.scoring.scorers import load_scorer

    prompts = json.loads(prompts_json)
    model = load_scorer(scorer, Path(root), device="cpu", dtype="fp32")
    images = [Image.open(p).convert("RGB") for p in paths]
    model.score_images(images[:1], prompts[:1])
    started = time.perf_counter()
    scores = model.score_images(images, prompts, batch_size=len(images))
    seconds = time.perf_counter() - started
    result = {"scores": scores, "seconds": seconds, "peak_rss_mb": memory_mib("VmHWM")}
    tower = _tower_flops(model) if roofline == "roofline" else None
    if tower is not None:
        from aesthete.scoring.speed import CPU_CHUNK

        flops, vision = tower
        rows = min(CPU_CHUNK, len(images)) * vision.embeddings.position_embedding.num_embeddings
        result.update(tower_gflop_per_image=flops / 1e9, **_matmul_rates(vision, rows))
    print_result(result)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--ours":
        ours_child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scorers", default=",".join(SCORERS))
    parser.add_argument("--roofline", action="store_true", help="also each side's matrix-product rate (see above)")
    args = parser.parse_args()
    from benchmarks.bench_scoring import make_images
    from devkit.scorer_models import full_bench_root

    root = full_bench_root()
    rows, roofs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp) / "images", args.images, args.size)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
        for scorer in args.scorers.split(","):
            ref = run_reference_side(scorer, root, images, prompts, Path(tmp))
            ours = run_ours_side(scorer, root, images, prompts, args.roofline)
            if scorer == "pickscore-v1":  # DiffSynth returns the cosine; ours is on the model card's scale
                ref["scores"] = [x * ref["logit_scale_exp"] for x in ref["scores"]]
            spread = max(ref["scores"]) - min(ref["scores"])
            diff = max(abs(a - b) for a, b in zip(ours["scores"], ref["scores"])) / spread if spread else float("nan")
            rows.append((scorer, args.images / ref["seconds"], args.images / ours["seconds"],
                         ref["seconds"] / ours["seconds"], ref["peak_rss_mb"], ours["peak_rss_mb"], diff))
            if "tower_gflop_per_image" in ours:
                work = ours["tower_gflop_per_image"] * args.images
                roofs.append((scorer, work / ref["seconds"], work / ours["seconds"], ours.get("onednn_gflops"),
                              ours.get("packed_gflops"), ours["aten_gflops"]))
            sys.stdout.write(f"{scorer}: done\n")
            sys.stdout.flush()
    load = os.getloadavg()
    sys.stdout.write(f"\n{args.images} images of {args.size}x{args.size}, CPU ({os.cpu_count()} cores), load average "
                     f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    sys.stdout.write("| scorer | reference img/s | ours img/s | speed | reference peak MiB | ours peak MiB | "
                     "max diff / spread |\n|---|---|---|---|---|---|---|\n")
    for scorer, r, o, ratio, rm, om, diff in rows:
        sys.stdout.write(f"| {scorer} | {r:.2f} | {o:.2f} | {ratio:.2f}x | {rm:.0f} | {om:.0f} | {diff:.1e} |\n")
    if roofs:
        sys.stdout.write("\nThe vision tower's matrix products, GFLOP/s (its linear layers' FLOPs over each side's time):\n"
                         "| scorer | reference | ours | oneDNN, our rows | oneDNN packed, our rows | ATen, one image's "
                         "rows | speed left |\n|---|---|---|---|---|---|---|\n")
        for scorer, ref_rate, our_rate, best, packed, aten in roofs:
            top = best or aten
            sys.stdout.write(f"| {scorer} | {ref_rate:.0f} | {our_rate:.0f} | {best or 0:.0f} | {packed or 0:.0f} | "
                             f"{aten:.0f} | {top / our_rate:.2f}x |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
