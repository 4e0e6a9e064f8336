"""LoRA training speed and memory: Aesthete's trainer against ComfyUI's own TrainLoraNode, in one run.

Same small random SD1.5 checkpoint (devkit factories), same four 64x64 pattern images and captions, rank 4,
batch 1, 20 steps, AdamW, fp32, no gradient checkpointing, alpha/rank 1/4 for both (TrainLoraNode fixes alpha at
1.0). Each trainer runs in its own process (peak RSS is per process): once for 2 steps and once for 22, and the
difference is the time of 20 steps (so model loading and set-up count for neither). TrainLoraNode gets one LATENT
per image, because in ComfyUI 0.3.75 a single LATENT batch crashes it (``UnboundLocalError: multi_res``).

    .venv/bin/python -m benchmarks.bench_training [--steps 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from devkit.child import enter_comfy, memory_mib, print_result, run_child


def comfy_setup():
    enter_comfy("--cpu")
    import comfy.sd
    from devkit.factories import small_sd15_checkpoint

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(small_sd15_checkpoint()), output_vae=True,
                                                                output_clip=True)
    return model, clip, vae


def dataset(folder: Path):
    from aesthete.training.captions import CaptionRecipe
    from aesthete.training.dataset import load_dataset
    from devkit.training_data import write_pattern_folder

    write_pattern_folder(folder, count=4)
    return load_dataset(folder, resolution=64, crop_mode="center crop", recipe=CaptionRecipe("ptn"))


def worker(kind: str, steps: int, folder: Path) -> dict:
    import torch

    torch.manual_seed(0)
    model, clip, vae = comfy_setup()
    ds = dataset(folder)
    captions = [ds.recipe.build(img.tags, random.Random(0)) for img in ds.images]
    out: dict = {"kind": kind, "steps": steps}
    if kind == "ours":
        from aesthete.nodes.training_adapter import model_encoders
        from aesthete.training.loop import TrainSettings
        from aesthete.training.trainer import RunHooks, RunSpec, build_cache, run_training
        import comfy.model_management

        patcher = model.clone()
        encode_images, encode_caption = model_encoders(patcher.model, clip, vae, patcher.load_device)
        settings = TrainSettings(epochs=steps, batch_size=1, learning_rate=1e-3, optimizer="AdamW", precision="fp32")
        # one epoch of 4 images = 4 steps; plan `steps` epochs and stop after `steps` steps
        cache = build_cache(ds, settings, encode_images, encode_caption)
        out["cache_s"] = cache.seconds
        t = time.perf_counter()  # what encoding inside every step would cost instead of the cache
        for img, cap in zip(ds.images[:2], captions[:2]):
            encode_images(img.pixels[None])
            encode_caption(cap, img.size)
        out["encode_per_step_s"] = (time.perf_counter() - t) / 2
        comfy.model_management.load_models_gpu([patcher], force_full_load=True)
        rss0 = memory_mib("VmRSS")
        done = {"n": 0}

        def on_step(step, total, loss):
            done["n"] = step

        from aesthete.nodes import compat
        from aesthete.nodes.training_adapter import TrainingSteps

        t = time.perf_counter()
        with TrainingSteps(patcher.model.diffusion_model):  # as Train LoRA: ComfyUI set up for training steps
            hooks = RunHooks(on_step=on_step, should_stop=lambda: done["n"] >= steps)
            run_training(patcher.model, ds, cache, RunSpec(settings, rank=4, alpha=1.0, hooks=hooks),
                         device=patcher.load_device, transformer_options=compat.training_transformer_options(
                             patcher.model_options.get("transformer_options", {})))
        out["train_s"] = time.perf_counter() - t
    else:
        import comfy_extras.nodes_train as nodes_train

        with torch.no_grad():
            latents = [{"samples": vae.encode(img.pixels[None])} for img in ds.images]
            positive = [clip.encode_from_tokens_scheduled(clip.tokenize(c)) for c in captions]
        rss0 = memory_mib("VmRSS")
        t = time.perf_counter()
        from aesthete.nodes.compat import schema_defaults

        # newer ComfyUI versions take more inputs (their schema defaults fill them) and return no MODEL
        nodes_train.TrainLoraNode.execute(**schema_defaults(nodes_train.TrainLoraNode, dict(
            model=[model], latents=latents, positive=positive, batch_size=[1], steps=[steps],
            grad_accumulation_steps=[1], learning_rate=[1e-3], rank=[4], optimizer=["AdamW"], loss_function=["MSE"],
            seed=[0], training_dtype=["fp32"], lora_dtype=["fp32"], algorithm=["LoRA"],
            gradient_checkpointing=[False], existing_lora=["[None]"])))
        out["train_s"] = time.perf_counter() - t
    out["rss_before_mib"] = rss0
    out["peak_rss_mib"] = memory_mib("VmHWM")
    return out


def run_worker(kind: str, steps: int, folder: Path) -> dict:
    return run_child(__spec__.name, "--worker", kind, "--steps", steps, "--folder", folder)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--worker", choices=["ours", "core"])
    p.add_argument("--folder", type=Path)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.worker:
        print_result(worker(a.worker, a.steps, a.folder))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="aesthete-bench-")) / "pattern"
    res = {}
    for kind in ("core", "ours"):
        short, long = run_worker(kind, 2, folder), run_worker(kind, a.steps + 2, folder)
        per_step = (long["train_s"] - short["train_s"]) / a.steps
        res[kind] = dict(long, steps_per_s=1 / per_step, train_peak_mib=long["peak_rss_mib"] - long["rss_before_mib"])
    lines = [f"LoRA training, small SD1.5, 64x64, rank 4, batch 1, {a.steps} steps, CPU ({os.cpu_count()} cores)",
             f"{'trainer':<28}{'steps/s':>10}{'peak RSS MiB':>15}{'RSS over model MiB':>20}"]
    names = {"core": "ComfyUI TrainLoraNode", "ours": "Aesthete (attention q,k,v,out)"}
    for kind in ("core", "ours"):
        r = res[kind]
        lines.append(f"{names[kind]:<28}{r['steps_per_s']:>10.3f}{r['peak_rss_mib']:>15.0f}{r['train_peak_mib']:>20.0f}")
    ours, core = res["ours"], res["core"]
    lines.append(f"speed ratio ours/core: {ours['steps_per_s'] / core['steps_per_s']:.2f}x   peak RSS ratio: "
                 f"{ours['peak_rss_mib'] / core['peak_rss_mib']:.2f}x   RSS over model ratio: "
                 f"{ours['train_peak_mib'] / max(core['train_peak_mib'], 1e-9):.2f}x")
    step_s = 1 / ours["steps_per_s"]
    lines.append(f"cache: latents + caption encodings once in {ours['cache_s']:.2f}s; encoding inside every step "
                 f"would add {ours['encode_per_step_s']:.3f}s per step ({ours['encode_per_step_s'] / step_s:.0%} "
                 f"of a step), {ours['encode_per_step_s'] * a.steps:.1f}s over {a.steps} steps")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
