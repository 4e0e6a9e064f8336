"""Kolors in ComfyUI (Aesthete's loader, ComfyUI's classes) against diffusers' KolorsPipeline, same weights, one run.

    .venv/bin/python -m benchmarks.bench_kolors [--rounds 3] [--repeats 3] [--size 64]

The weights: a medium random-weight Kolors folder in the Kwai-Kolors/Kolors layout (devkit/kolors_models.py
``medium_kolors``, fp16 files, built once and cached): the UNet has Kolors's real widths (320/640/1280, 64-channel
heads, cross-attention 2048, encoder_hid_dim 4096, adm 5632, 2 res blocks per level) with transformer depths
[1, 1, 2] instead of [1, 2, 10] (0.86 B parameters instead of 2.6 B); ChatGLM3 has its real layer shape (hidden 4096,
32 heads, 2 key/value groups, feed-forward 13696, vocabulary 65024) with 2 of its 28 layers. Both sides read the
same files and run in fp32 on the CPU.

Every contender runs in its own process, so its peak RSS (VmHWM) is its own; the order alternates every round and
the figures are medians over the rounds. In each process:
- load: reading the files into a model ready to run (timed; the peak RSS of loading is read, then reset);
- UNet, "sampling step": ONE sampling step at cfg 5 on a ``size`` x ``size`` px image (a batch of 2: cond and
  uncond in one UNet call, as both KSampler and the pipeline do), Euler. Ours: ComfyUI's own ``KSampler`` node
  (``nodes.KSampler().sample``, steps=1, normal schedule) on the MODEL our loader makes (a ModelPatcher), inside
  ``torch.inference_mode()`` as ComfyUI's executor runs nodes. Reference: ``KolorsPipeline.__call__`` with
  num_inference_steps=1, the same text embeddings passed in (``prompt_embeds``...), output_type="latent" (no VAE
  decode). Also timed alone: the bare UNet forward on one identical batch of 2 (ours: ``model.model.apply_model``
  with ComfyUI's conds and the MODEL's transformer_options, as the sampler calls it; reference: ``pipe.unet``), whose outputs are compared.
- text encoder: one prompt encoded into the 256-token context and the pooled vector. Ours: the CLIP our loader
  makes, ``clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)`` under inference mode; reference:
  ``KolorsPipeline.encode_prompt`` (no cfg) under no_grad as its ``__call__`` runs it. Outputs are compared.
One warm-up call, then ``repeats`` timed calls (median) per process (the bare UNet forward, run after the
sampling steps, needs no warm-up of its own); the peak RSS of the calls is read separately
from that of loading. Prints medians and the ratios ours / reference (speed: reference time / our time, so above
1.0x is faster; memory: ours / reference, so below 1.0x is smaller). Targets: speed at least 1.0x, peak
memory at most 1.0x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from aesthete.training.memory import reset_resident_peak
from devkit.child import enter_comfy, memory_mib, print_result, run_child

CFG = 5.0
PROMPT = "二次元，genshin impact，ganyu，蓝发少女，白色背景, a girl with blue hair on a white background, anime style"
NEGATIVE = ""


def conditioning(hidden: int, size: int):
    """The same text embeddings, pooled vectors and latent for both sides (fixed seed)."""
    import torch

    g = torch.Generator().manual_seed(0)
    return {"context": torch.randn(1, 256, hidden, generator=g), "pooled": torch.randn(1, hidden, generator=g),
            "neg_context": torch.randn(1, 256, hidden, generator=g), "neg_pooled": torch.randn(1, hidden, generator=g),
            "x": torch.randn(2, 4, size // 8, size // 8, generator=g), "t": 500}


def timed(fn, repeats: int, warm_up: bool = True) -> tuple[list[float], object]:
    out = fn() if warm_up else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


# ------------------------------------------------------------------------------------------------------- workers
def ours_unet(folder: Path, size: int, repeats: int, out: dict):
    enter_comfy("--cpu")
    import nodes as comfy_nodes  # ComfyUI's nodes.py (KSampler)
    import torch

    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_unet_from_diffusers

    c = conditioning(4096, size)
    out["rss_before_load_mib"] = memory_mib("VmRSS")
    t0 = time.perf_counter()
    kf = find_kolors_folder(folder)
    model = kolors_unet_from_diffusers(LazyWeights(kf.unet_files), kf.unet_config, kf.scheduler_config, "fp32")
    out["load_s"] = time.perf_counter() - t0
    out["load_peak_mib"], out["rss_after_load_mib"] = memory_mib("VmHWM"), memory_mib("VmRSS")
    reset_resident_peak()
    extra = {"width": size, "height": size}
    positive = [[c["context"], {"pooled_output": c["pooled"], **extra}]]
    negative = [[c["neg_context"], {"pooled_output": c["neg_pooled"], **extra}]]
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    sampler = comfy_nodes.KSampler()
    with torch.inference_mode():
        out["step_s"], _ = timed(lambda: sampler.sample(model, 0, 1, CFG, "euler", "normal", positive, negative,
                                                        latent, 1.0), repeats)
        out["step_peak_mib"] = memory_mib("VmHWM")
        reset_resident_peak()
        base = model.model
        sigma = base.model_sampling.sigma(torch.tensor([float(c["t"])])).repeat(2)
        adm = torch.cat([base.encode_adm(pooled_output=c["pooled"], **extra),
                         base.encode_adm(pooled_output=c["neg_pooled"], **extra)])
        ctx = torch.cat([c["context"], c["neg_context"]])
        # apply_model scales the input by 1/sqrt(sigma^2 + 1) and returns x0; the UNet's eps is read back from it
        x_in = c["x"] * (sigma[:, None, None, None] ** 2 + 1).sqrt()
        options = model.model_options.get("transformer_options", {})  # what the sampler passes (attention)

        def forward():
            x0 = base.apply_model(x_in, sigma, c_crossattn=ctx, y=adm, transformer_options=options)
            return (x_in - x0) / sigma[:, None, None, None]

        out["unet_s"], eps = timed(forward, repeats, warm_up=False)  # warm after the steps
        out["unet_peak_mib"] = memory_mib("VmHWM")
    out["check"] = eps.flatten()[:2048].tolist()


def ref_unet(folder: Path, size: int, repeats: int, out: dict):
    import torch
    from diffusers import EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel

    c = conditioning(4096, size)
    out["rss_before_load_mib"] = memory_mib("VmRSS")
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant="fp16", torch_dtype=torch.float32)
    scheduler = EulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    pipe = KolorsPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                          force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    out["load_s"] = time.perf_counter() - t0
    out["load_peak_mib"], out["rss_after_load_mib"] = memory_mib("VmHWM"), memory_mib("VmRSS")
    reset_resident_peak()

    def step():
        return pipe(prompt_embeds=c["context"], pooled_prompt_embeds=c["pooled"],
                    negative_prompt_embeds=c["neg_context"], negative_pooled_prompt_embeds=c["neg_pooled"],
                    num_inference_steps=1, guidance_scale=CFG, height=size, width=size, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    out["step_s"], _ = timed(step, repeats)
    out["step_peak_mib"] = memory_mib("VmHWM")
    reset_resident_peak()
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(2, 1)
    ctx = torch.cat([c["context"], c["neg_context"]])
    pooled = torch.cat([c["pooled"], c["neg_pooled"]])
    with torch.no_grad():
        out["unet_s"], eps = timed(lambda: unet(c["x"], torch.tensor(float(c["t"])), encoder_hidden_states=ctx,
                                                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                                                return_dict=False)[0], repeats, warm_up=False)
    out["unet_peak_mib"] = memory_mib("VmHWM")
    out["check"] = eps.flatten()[:2048].tolist()


def ours_te(folder: Path, size: int, repeats: int, out: dict):
    enter_comfy("--cpu")
    import torch

    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_clip

    out["rss_before_load_mib"] = memory_mib("VmRSS")
    t0 = time.perf_counter()
    kf = find_kolors_folder(folder)
    clip = kolors_clip(kf.text_encoder_files, kf.text_encoder_config, kf.tokenizer_model, "fp32")
    out["load_s"] = time.perf_counter() - t0
    out["load_peak_mib"], out["rss_after_load_mib"] = memory_mib("VmHWM"), memory_mib("VmRSS")
    reset_resident_peak()
    with torch.inference_mode():
        out["encode_s"], (cond, pooled) = timed(
            lambda: clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True), repeats)
    out["encode_peak_mib"] = memory_mib("VmHWM")
    out["check"] = cond[0, -32:, :16].flatten().tolist() + pooled[0, :64].tolist()


def ref_te(folder: Path, size: int, repeats: int, out: dict):
    import torch
    from diffusers import EulerDiscreteScheduler, KolorsPipeline
    from diffusers.pipelines.kolors.text_encoder import ChatGLMModel
    from diffusers.pipelines.kolors.tokenizer import ChatGLMTokenizer

    out["rss_before_load_mib"] = memory_mib("VmRSS")
    t0 = time.perf_counter()
    # as Kolors's own scripts load it (devkit/kolors_reference.py): the tokenizer from text_encoder/
    text_encoder = ChatGLMModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    tokenizer = ChatGLMTokenizer.from_pretrained(folder / "text_encoder")
    pipe = KolorsPipeline(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=None,
                          scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
                          force_zeros_for_empty_prompt=False)
    out["load_s"] = time.perf_counter() - t0
    out["load_peak_mib"], out["rss_after_load_mib"] = memory_mib("VmHWM"), memory_mib("VmRSS")
    reset_resident_peak()

    def encode():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, device=torch.device("cpu"), num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False, max_sequence_length=256)
        return embeds, pooled

    with torch.no_grad():
        out["encode_s"], (cond, pooled) = timed(encode, repeats)
    out["encode_peak_mib"] = memory_mib("VmHWM")
    out["check"] = cond[0, -32:, :16].flatten().tolist() + pooled[0, :64].tolist()


WORKERS = {"ours-unet": ours_unet, "ref-unet": ref_unet, "ours-te": ours_te, "ref-te": ref_te}


def run_worker(kind: str, folder: Path, size: int, repeats: int) -> dict:
    return run_child(__spec__.name, "--worker", kind, "--folder", folder, "--size", size, "--repeats", repeats)


def _med(runs: list[dict], key: str) -> float:
    values = [r[key] for r in runs]
    return statistics.median(statistics.median(v) if isinstance(v, list) else v for v in values)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="processes per contender (the order alternates)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per process, after one warm-up")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (latent side = size / 8)")
    p.add_argument("--part", choices=["unet", "te", "both"], default="both")
    p.add_argument("--worker", choices=sorted(WORKERS))
    p.add_argument("--folder", type=Path)
    a = p.parse_args()
    if a.worker:
        out: dict = {"kind": a.worker}
        WORKERS[a.worker](a.folder, a.size, a.repeats, out)
        out["peak_mib"] = max(out[k] for k in out if k.endswith("peak_mib"))
        print_result(out)
        return 0

    from devkit.kolors_models import MEDIUM_CHATGLM_LAYERS, MEDIUM_UNET_DEPTH, medium_kolors

    folder = medium_kolors()
    parts = ["unet", "te"] if a.part == "both" else [a.part]
    runs: dict[str, list[dict]] = {f"{w}-{part}": [] for part in parts for w in ("ours", "ref")}
    for r in range(a.rounds):
        for part in parts:
            order = ("ours", "ref") if r % 2 == 0 else ("ref", "ours")
            for who in order:
                kind = f"{who}-{part}"
                res = run_worker(kind, folder, a.size, a.repeats)
                runs[kind].append(res)
                timing = res.get("step_s") or res.get("encode_s")
                sys.stdout.write(f"round {r + 1} {kind:<10} load {res['load_s']:6.1f}s  call {statistics.median(timing):7.3f}s"
                                 f"  peak {res['peak_mib']:7.0f} MiB\n")
                sys.stdout.flush()

    lines = [f"Kolors, medium model (UNet depths {MEDIUM_UNET_DEPTH}, ChatGLM3 {MEDIUM_CHATGLM_LAYERS} of 28 layers), "
             f"fp32, CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}), {a.size}x{a.size} px, "
             f"medians of {a.rounds} processes x {a.repeats} calls",
             f"{'':<34}{'ours':>10}{'reference':>11}{'ratio':>9}"]

    def row(label, key, unit, speed=False):
        o, ref = _med(runs[f"ours-{part}"], key), _med(runs[f"ref-{part}"], key)
        ratio = ref / o if speed else o / ref
        lines.append(f"{label:<34}{o:>9.3f}{unit:<1}{ref:>10.3f}{unit:<1}{ratio:>8.2f}x")

    for part in parts:
        ours, ref = runs[f"ours-{part}"][-1], runs[f"ref-{part}"][-1]
        diff = max(abs(x - y) for x, y in zip(ours["check"], ref["check"]))
        scale = max(abs(y) for y in ref["check"])
        if part == "unet":
            lines.append(f"UNet (batch 2 = cond + uncond, cfg {CFG:g}); eps max diff {diff:.1e} (of {scale:.2f})")
            row("  one sampling step (speed)", "step_s", "s", speed=True)
            row("  bare UNet forward (speed)", "unet_s", "s", speed=True)
        else:
            lines.append(f"Text encoder (one prompt, 256-token context); max diff {diff:.1e} (of {scale:.2f})")
            row("  encode (speed)", "encode_s", "s", speed=True)
        row("  load (speed)", "load_s", "s", speed=True)
        for label, key in (("peak RSS, whole process", "peak_mib"), ("peak RSS while loading", "load_peak_mib"),
                           ("peak RSS while running", "step_peak_mib" if part == "unet" else "encode_peak_mib"),
                           ("RSS after imports", "rss_before_load_mib"), ("RSS after loading", "rss_after_load_mib")):
            o, rf = _med(runs[f"ours-{part}"], key), _med(runs[f"ref-{part}"], key)
            lines.append(f"  {label + ' (MiB)':<32}{o:>10.0f}{rf:>11.0f}{o / rf:>8.2f}x")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
