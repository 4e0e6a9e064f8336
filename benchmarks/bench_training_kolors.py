"""Kolors LoRA training step, speed and memory: Aesthete's trainer against the standard diffusers + peft LoRA step,
on the same medium Kolors-shaped UNet (the same saved weights), in one run.

The UNet is devkit/kolors_models.py's medium Kolors (medium_kolors(), the one bench_kolors.py uses) (the real widths 320/640/1280, 64-channel heads, 2048-wide cross-attention,
encoder_hid_dim 4096, added embedding 5632; transformer blocks 1, 1, 2 instead of 0, 2, 10: 0.9 B parameters),
saved as a Kolors folder (fp16 files, loaded in fp32). Both sides: LoRA rank 16, alpha 4, on to_q, to_k, to_v and
to_out.0 of every attention (where DiffSynth's Kolors trainer puts it), batch 1, fp32, AdamW (lr 1e-4, weight decay
1e-2), gradient clipping at 1.0, no gradient checkpointing, latents and text embeddings computed before the steps.

- ours: the Kolors MODEL/CLIP/VAE from the pack's Kolors loader (load_kolors_folder, as the Kolors loader node), the
  latents and ChatGLM3 contexts cached by build_cache, the LoRA network and loop of run_training, as Train LoRA runs
  them, the text encoder and the VAE then offloaded as Train LoRA does (on the CPU: parked on disk).
- reference: diffusers' UNet2DConditionModel.from_pretrained of the same unet/ folder, ``unet.add_adapter`` with a
  peft LoraConfig (init "gaussian"), the step of diffusers' train_text_to_image_lora_sdxl.py (DDPMScheduler
  add_noise, epsilon MSE) on cached tensors of the same shapes (latent [1, 4, r/8, r/8], context [1, 256, 4096],
  pooled [1, 4096], 6 time ids).

Each contender runs in its own process (peak RSS is per process), the contenders alternate, ``--repeats`` rounds. In
a process: ``--steps`` training steps, the first one (optimizer state, first-touch allocation) not timed; the peak
resident memory (VmHWM) is reset just before training, so it is the peak of the training steps with the model
loaded, not of loading. Prints medians and the ratio ours/reference within each round.

    .venv/bin/python -m benchmarks.bench_training_kolors [--resolution 64] [--steps 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aesthete.training.memory import reset_resident_peak
from devkit.child import enter_comfy, memory_mib, print_result, run_child

RANK, ALPHA, LR, WEIGHT_DECAY = 16, 4.0, 1e-4, 1e-2
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TOKENS, TEXT_WIDTH = 256, 4096  # Kolors's ChatGLM3 context: 256 tokens of 4096


def rss_parts_mib() -> dict[str, float]:
    """The resident memory by kind: anonymous (tensors, heap), file-backed (mapped files: libraries, weights)."""
    return {k: round(memory_mib(k)) for k in ("RssAnon", "RssFile")}


def mark() -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, page faults so far) of this process."""
    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def step_times(marks: list[tuple[float, float, int]]) -> dict:
    """Wall and CPU seconds and page faults of each step after the first (CPU time counts less of other processes'
    load; a page fault is memory the step took from the OS afresh)."""
    return {"step_s": [b[0] - a[0] for a, b in zip(marks[1:], marks[2:])],
            "cpu_s": [b[1] - a[1] for a, b in zip(marks[1:], marks[2:])],
            "faults": [b[2] - a[2] for a, b in zip(marks[1:], marks[2:])]}


def ours(folder: Path, data: Path, resolution: int, steps: int, pytorch_attention: bool = False) -> dict:
    import torch

    # ComfyUI's --use-pytorch-cross-attention: SDPA, its default on NVIDIA GPUs (on the CPU it picks sub-quadratic)
    enter_comfy("--cpu", *["--use-pytorch-cross-attention"] * pytorch_attention)
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import load_kolors_folder
    from aesthete.nodes.training_adapter import EncoderOffload, model_encoders
    from aesthete.training.captions import CaptionRecipe
    from aesthete.training.dataset import load_dataset
    from aesthete.training.loop import TrainSettings
    from aesthete.training.trainer import RunHooks, RunSpec, build_cache, run_training

    torch.manual_seed(0)
    model, clip, vae = load_kolors_folder(find_kolors_folder(folder), "fp32", "default")
    ds = load_dataset(data, resolution=resolution, crop_mode="center crop", recipe=CaptionRecipe("ptn"))
    settings = TrainSettings(epochs=-(-steps // len(ds)), batch_size=1, learning_rate=LR, optimizer="AdamW",
                             precision="fp32", weight_decay=WEIGHT_DECAY, max_grad_norm=1.0)
    out: dict = {}
    with torch.inference_mode(False), torch.enable_grad():  # as the Train LoRA node
        patcher = model.clone()
        base, device = patcher.model, patcher.load_device
        encode_images, encode_caption = model_encoders(base, clip, vae, device)
        cache = build_cache(ds, settings, encode_images, encode_caption, encoders=(vae, clip, base))
        out["cache_s"] = cache.seconds
        context = next(iter(cache.conds.values()))
        out["shapes"] = {k: list(v.shape) for k, v in context.items()} | {"latent": list(cache.latents[0].shape)}
        out["offload"] = EncoderOffload(patcher, clip, vae, device).describe()
        out["rss_before_mib"], out["rss_parts_mib"] = memory_mib("VmRSS"), rss_parts_mib()
        reset_resident_peak()
        marks = [mark()]
        from aesthete.nodes import compat
        from aesthete.nodes.training_adapter import TrainingSteps

        with TrainingSteps(base.diffusion_model):  # as Train LoRA: ComfyUI set up for training steps
            hooks = RunHooks(on_step=lambda *_: marks.append(mark()), should_stop=lambda: len(marks) > steps)
            run = run_training(base, ds, cache, RunSpec(settings, rank=RANK, alpha=ALPHA, targets=TARGETS,
                                                        hooks=hooks), device=device,
                               transformer_options=compat.training_transformer_options(
                                   patcher.model_options.get("transformer_options", {})))
        out["peak_mib"] = memory_mib("VmHWM")
        out["lora_layers"] = len(run.network.paths)
        out["lora_params"] = sum(p.numel() for p in run.network.parameters())
        # one no-grad denoising call of the same batch: the unit of a validation image's sampling steps
        x = cache.latents[0][None].to(device)
        sigma = torch.tensor([float(base.model_sampling.percent_to_sigma(0.5))])
        with torch.no_grad():
            conds = {k: v.to(device) for k, v in context.items()}
            base.apply_model(x, sigma, **conds)
            t = time.perf_counter()
            base.apply_model(x, sigma, **conds)
            out["forward_s"] = time.perf_counter() - t
    return out | step_times(marks)


def reference(folder: Path, resolution: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(0)
    unet_dir = folder / "unet"
    variant = "fp16" if (unet_dir / "diffusion_pytorch_model.fp16.safetensors").exists() else None
    unet = UNet2DConditionModel.from_pretrained(unet_dir, variant=variant, torch_dtype=torch.float32)
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=list(TARGETS)))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    unet.train()
    side = resolution // 8
    latents = torch.randn(1, 4, side, side)
    context = torch.randn(1, TOKENS, TEXT_WIDTH)
    added = {"text_embeds": torch.randn(1, TEXT_WIDTH),
             "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)}
    out: dict = {"rss_before_mib": memory_mib("VmRSS"), "rss_parts_mib": rss_parts_mib()}
    reset_resident_peak()
    marks = [mark()]
    for _ in range(steps):
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (1,)).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        pred = unet(noisy, timesteps, context, added_cond_kwargs=added, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(mark())
    out["peak_mib"] = memory_mib("VmHWM")
    out["lora_layers"] = sum(1 for n, _ in unet.named_modules() if n.endswith("lora_A"))
    out["lora_params"] = sum(p.numel() for p in params)
    return out | step_times(marks)


def run_worker(kind: str, a: argparse.Namespace, folder: Path, data: Path) -> dict:
    return run_child(__spec__.name, "--worker", kind, "--folder", folder, "--data", data, "--resolution", a.resolution,
                     "--steps", a.steps, *["--pytorch-attention"] * a.pytorch_attention)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64, help="square training images (pixels)")
    p.add_argument("--steps", type=int, default=4, help="training steps per process; the first is not timed")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs both contenders, alternating")
    p.add_argument("--pytorch-attention", action="store_true",
                   help="ours with ComfyUI's --use-pytorch-cross-attention (SDPA for every model, its default on "
                        "NVIDIA GPUs); without it the Kolors MODEL already uses SDPA on the CPU, in sampling and in "
                        "training")
    p.add_argument("--worker", choices=["ours", "reference"])
    p.add_argument("--folder", type=Path, help="the medium Kolors folder (default: built and cached once)")
    p.add_argument("--data", type=Path)
    a = p.parse_args()
    a.folder, a.data = (x.resolve() if x else x for x in (a.folder, a.data))  # the ours worker changes directory
    logging.basicConfig(level=logging.WARNING)
    if a.worker == "ours":
        res = ours(a.folder, a.data, a.resolution, a.steps, a.pytorch_attention)
    elif a.worker == "reference":
        res = reference(a.folder, a.resolution, a.steps)
    if a.worker:
        print_result(res)
        return 0
    if a.folder is None:
        from devkit.kolors_models import medium_kolors

        a.folder = medium_kolors()
    from devkit.training_data import write_pattern_folder

    data = write_pattern_folder(Path(tempfile.mkdtemp(prefix="aesthete-bench-")) / "pattern", count=4,
                                size=(a.resolution, a.resolution))
    load = [os.getloadavg()[0]]
    rounds = []
    for r in range(a.repeats):
        order = ("reference", "ours") if r % 2 == 0 else ("ours", "reference")
        rounds.append({kind: run_worker(kind, a, a.folder, data) for kind in order})
        load.append(os.getloadavg()[0])
    med = {kind: {"step_s": statistics.median(statistics.median(rd[kind]["step_s"]) for rd in rounds),
                  "cpu_s": statistics.median(statistics.median(rd[kind]["cpu_s"]) for rd in rounds),
                  "peak_mib": statistics.median(rd[kind]["peak_mib"] for rd in rounds),
                  "before_mib": statistics.median(rd[kind]["rss_before_mib"] for rd in rounds),
                  "faults": statistics.median(statistics.median(rd[kind]["faults"]) for rd in rounds)}
           for kind in ("reference", "ours")}
    o, ref = rounds[0]["ours"], rounds[0]["reference"]
    lines = [f"Kolors LoRA training step, medium Kolors-shaped UNet (320/640/1280, transformer blocks 1/1/2), "
             f"{a.resolution}x{a.resolution}, rank {RANK}, batch 1, fp32, AdamW, CPU ({os.cpu_count()} cores, "
             f"load average {min(load):.1f}-{max(load):.1f}); {a.repeats} rounds of {a.steps} steps "
             f"(first step untimed), medians; ours' attention: "
             f"{'ComfyUI --use-pytorch-cross-attention' if a.pytorch_attention else 'the Kolors MODEL (SDPA on the CPU)'}",
             f"LoRA layers ours/reference: {o['lora_layers']}/{ref['lora_layers']}, LoRA parameters "
             f"{o['lora_params']}/{ref['lora_params']}; ours' cached conditioning {o['shapes']}",
             f"ours after encoding: {o['offload']}",
             f"resident before the steps, round 1: reference {ref['rss_parts_mib']}, ours {o['rss_parts_mib']}",
             f"{'trainer':<30}{'steps/s':>10}{'CPU s/step':>12}{'peak RSS MiB':>15}{'RSS before MiB':>16}"
             f"{'page faults/step':>18}"]
    names = {"reference": "diffusers + peft", "ours": "Aesthete (Kolors loader)"}
    for kind in ("reference", "ours"):
        m = med[kind]
        lines.append(f"{names[kind]:<30}{1 / m['step_s']:>10.3f}{m['cpu_s']:>12.2f}{m['peak_mib']:>15.0f}"
                     f"{m['before_mib']:>16.0f}{m['faults']:>18.0f}")
    per_round = [(statistics.median(rd["reference"]["step_s"]) / statistics.median(rd["ours"]["step_s"]),
                  statistics.median(rd["reference"]["cpu_s"]) / statistics.median(rd["ours"]["cpu_s"]),
                  rd["ours"]["peak_mib"] / rd["reference"]["peak_mib"],
                  (rd["ours"]["peak_mib"] - rd["ours"]["rss_before_mib"])
                  / (rd["reference"]["peak_mib"] - rd["reference"]["rss_before_mib"])) for rd in rounds]
    lines.append("per round, ours/reference: speed (wall) " + ", ".join(f"{r[0]:.2f}x" for r in per_round)
                 + "; speed (CPU time) " + ", ".join(f"{r[1]:.2f}x" for r in per_round)
                 + "; peak RSS " + ", ".join(f"{r[2]:.2f}x" for r in per_round)
                 + "; peak over the loaded model " + ", ".join(f"{r[3]:.2f}x" for r in per_round))
    lines.append(f"median ours/reference: speed {med['reference']['step_s'] / med['ours']['step_s']:.2f}x (wall), "
                 f"{med['reference']['cpu_s'] / med['ours']['cpu_s']:.2f}x (CPU time); "
                 f"peak RSS {med['ours']['peak_mib'] / med['reference']['peak_mib']:.2f}x")
    fwd = statistics.median(rd["ours"]["forward_s"] for rd in rounds)
    lines.append(f"validation unit: one no-grad denoising call of the same batch {fwd:.2f}s = "
                 f"{fwd / med['ours']['step_s']:.2f} training steps; an image of N sampling steps with CFG costs "
                 f"about 2N of them, plus VAE decoding and scoring")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
