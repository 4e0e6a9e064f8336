"""Kolors add-ons in ComfyUI against the reference on the same medium weights, one run: one ControlNet sampling step and
one IP-Adapter sampling step.

    .venv/bin/python -m benchmarks.bench_kolors_addons [--rounds 2] [--repeats 2] [--size 64] [--parts cn ip]
    .venv/bin/python -m benchmarks.bench_kolors_addons --profile [--repeats 4]   # the ControlNet step's work, op by op

The weights (devkit/kolors_models.py, built once and cached): ``medium_kolors`` (Kolors's real UNet widths,
transformer depths [1, 1, 2]), ``medium_kolors_controlnet`` (a ControlNet made from that UNet as
``ControlNetModel.from_unet`` makes Kolors's) and ``medium_kolors_ip_adapter`` (the Resampler at its real size, the
real-size ViT-L/14-336 image encoder); fp16 files, everything run in fp32 on the CPU, the same text embeddings on both
sides (bench_kolors.conditioning), one step from sigma_max (timestep 1099, as KSampler's one "normal" step) from the
same seed's noise, so the two latents are compared too. Each contender runs in its own process (its peak RSS is its own), the order
alternating by round; one warm-up call, then ``repeats`` timed calls; medians over rounds.

- ControlNet, ours: the MODEL of our loader, the CONTROL_NET of Kolors ControlNet Loader's code, core Apply ControlNet
  (strength 0.7) and core KSampler, one step at cfg 5 (cond and uncond in one batch of 2). Reference: Kwai-Kolors's
  ControlNet pipeline's loop (kolors/pipelines/pipeline_controlnet_xl_kolors_img2img.py) on diffusers' UNet and
  ControlNetModel: the ControlNet's own encoder_hid_proj on the context, its residuals into the UNet, cfg, an Euler step.
- IP-Adapter, ours: Kolors IP-Adapter's code on the MODEL (the image read once when the node runs, not timed with the
  step) and core KSampler, one step at cfg 5. Reference: KolorsPipeline with load_ip_adapter, one step, the image
  embedding computed once beforehand (``ip_adapter_image_embeds``), so neither side times the image encoder.
Prints the step time and peak RSS of each and the ratios (speed: reference / ours, above 1.0x is faster; memory:
ours / reference, below 1.0x is smaller). Targets (issue 22): speed at least 1.0x, peak memory at most 1.0x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from aesthete.training.memory import reset_resident_peak
from benchmarks.bench_kolors import CFG, conditioning, timed
from devkit.child import enter_comfy, memory_mib, print_result, run_child

STRENGTH, WEIGHT = 0.7, 0.5


def _picture(size: int):
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.stack([xx, yy, (xx * yy) % 1], axis=-1).astype(np.float32)


def _conds(c, size):
    extra = {"width": size, "height": size}
    return ([[c["context"], {"pooled_output": c["pooled"], **extra}]],
            [[c["neg_context"], {"pooled_output": c["neg_pooled"], **extra}]])


def _ours_model(folders):
    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_unet_from_diffusers

    kf = find_kolors_folder(folders["kolors"])
    return kolors_unet_from_diffusers(LazyWeights(kf.unet_files), kf.unet_config, kf.scheduler_config, "fp32")


def _ours_sampling(model, positive, negative, size):
    """One core KSampler step from sigma_max, as a function of nothing (the latents it returns)."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py
    import torch

    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    sampler = comfy_nodes.KSampler()

    def step():
        with torch.inference_mode():
            return sampler.sample(model, 0, 1, CFG, "euler", "normal", positive, negative, latent, 1.0)[0]["samples"]
    return step


def _ours_step(step, repeats, out):
    out["step_s"], result = timed(step, repeats)
    out["step_peak_mib"] = memory_mib("VmHWM")
    out["check"] = result.flatten()[:512].tolist()


def _ours_cn_step(folders, size, out):
    """Our ControlNet step: the MODEL of our loader, Kolors ControlNet Loader's CONTROL_NET, core Apply ControlNet."""
    import nodes as comfy_nodes
    import torch

    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import read_json
    from aesthete.nodes.kolors_controlnet import kolors_controlnet

    c = conditioning(4096, size)
    t0 = time.perf_counter()
    model = _ours_model(folders)
    weights = LazyWeights([folders["controlnet"] / "diffusion_pytorch_model.safetensors"])
    cn = kolors_controlnet(weights, read_json(folders["controlnet"] / "config.json"), "fp32", take=weights.take)
    out["load_s"] = time.perf_counter() - t0
    positive, negative = _conds(c, size)
    hint = torch.from_numpy(_picture(size))[None]
    positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, cn, hint, STRENGTH,
                                                                                0.0, 1.0)
    return _ours_sampling(model, positive, negative, size)


def ours_cn(folders, size, repeats, out):
    enter_comfy("--cpu")
    step = _ours_cn_step(folders, size, out)
    reset_resident_peak()
    _ours_step(step, repeats, out)


def ours_ip(folders, size, repeats, out):
    enter_comfy("--cpu")
    import comfy.clip_vision
    import torch

    from aesthete.kolors.ip_adapter import IPAdapterPlus, read_ip_adapter
    from aesthete.nodes.kolors_ip_adapter import apply_ip_adapter, ip_adapter_patcher

    c = conditioning(4096, size)
    t0 = time.perf_counter()
    model = _ours_model(folders)
    adapter = ip_adapter_patcher(IPAdapterPlus(read_ip_adapter(folders["ip"] / "ip_adapter_plus_general.bin")).eval())
    vision = comfy.clip_vision.load(str(folders["ip"] / "image_encoder" / "model.safetensors"))
    out["load_s"] = time.perf_counter() - t0
    model = apply_ip_adapter(model, adapter, vision, torch.from_numpy(_picture(336))[None], WEIGHT)
    del vision
    reset_resident_peak()
    positive, negative = _conds(c, size)
    _ours_step(_ours_sampling(model, positive, negative, size), repeats, out)


def _ref_unet(folders):
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folders["kolors"] / "unet", variant="fp16", torch_dtype=torch.float32)
    return unet, EulerDiscreteScheduler.from_pretrained(folders["kolors"] / "scheduler")


def _unscaled(folders, latent) -> list[float]:
    """The reference's latent as ComfyUI's KSampler returns it (divided by the VAE's scaling factor)."""
    scale = json.loads((folders["kolors"] / "vae" / "config.json").read_text())["scaling_factor"]
    return (latent / scale).flatten()[:512].tolist()


def _ref_cn_step(folders, size, out):
    """Kwai-Kolors's ControlNet loop on diffusers' UNet and ControlNetModel: one step, as a function of nothing."""
    import torch
    from diffusers import ControlNetModel

    c = conditioning(4096, size)
    t0 = time.perf_counter()
    unet, scheduler = _ref_unet(folders)
    controlnet = ControlNetModel.from_pretrained(folders["controlnet"], torch_dtype=torch.float32).eval()
    out["load_s"] = time.perf_counter() - t0
    hint = torch.from_numpy(_picture(size)).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    ctx = torch.cat([c["neg_context"], c["context"]])
    added = {"text_embeds": torch.cat([c["neg_pooled"], c["pooled"]]),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(2, 1)}

    def step():
        with torch.no_grad():
            scheduler.set_timesteps(timesteps=[1099])  # KSampler's one "normal" step: sigma_max -> 0
            latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.manual_seed(0)) * scheduler.init_noise_sigma
            t = scheduler.timesteps[0]
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            down, mid = controlnet(x, t, encoder_hidden_states=controlnet.encoder_hid_proj(ctx), controlnet_cond=hint,
                                   conditioning_scale=STRENGTH, added_cond_kwargs=added, return_dict=False)
            eps = unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid, return_dict=False)[0]
            uncond, cond = eps.chunk(2)
            return scheduler.step(uncond + CFG * (cond - uncond), t, latents).prev_sample
    return step


def ref_cn(folders, size, repeats, out):
    step = _ref_cn_step(folders, size, out)
    reset_resident_peak()
    out["step_s"], result = timed(step, repeats)
    out["step_peak_mib"] = memory_mib("VmHWM")
    out["check"] = _unscaled(folders, result)


def profile_cn(folders, size, repeats, out):
    """Both ControlNet steps in one process, alternating (the same machine state for both), then one profiled call
    of each: ATen's operator table, to compare the work each side does (not their peak memory: see the workers)."""
    enter_comfy("--cpu")
    from torch.profiler import ProfilerActivity, profile

    steps = {"ours": _ours_cn_step(folders, size, {}), "reference": _ref_cn_step(folders, size, {})}
    for fn in steps.values():
        fn()
    times = {who: [] for who in steps}
    for _ in range(repeats):
        for who, fn in steps.items():
            times[who].append(timed(fn, 1, warm_up=False)[0][0])
    out["step_s"], out["tables"] = times, {}
    for who, fn in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        out["tables"][who] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)


def ref_ip(folders, size, repeats, out):
    import torch
    from diffusers import KolorsPipeline
    from PIL import Image

    c = conditioning(4096, size)
    t0 = time.perf_counter()
    unet, scheduler = _ref_unet(folders)
    pipe = KolorsPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                          force_zeros_for_empty_prompt=False)
    pipe.load_ip_adapter(str(folders["ip"]), subfolder="", weight_name="ip_adapter_plus_general.bin",
                         image_encoder_folder="image_encoder", low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(WEIGHT)
    pipe.set_progress_bar_config(disable=True)
    out["load_s"] = time.perf_counter() - t0
    picture = Image.fromarray((_picture(336) * 255).round().astype(np.uint8))
    with torch.no_grad():
        embeds = pipe.prepare_ip_adapter_image_embeds(picture, None, torch.device("cpu"), 1, True)
    pipe.image_encoder = None  # the step does not use it (the embedding is given)
    reset_resident_peak()

    def step():
        return pipe(prompt_embeds=c["context"], pooled_prompt_embeds=c["pooled"],
                    negative_prompt_embeds=c["neg_context"], negative_pooled_prompt_embeds=c["neg_pooled"],
                    ip_adapter_image_embeds=embeds, timesteps=[1099], guidance_scale=CFG, height=size,
                    width=size, output_type="latent", generator=torch.Generator().manual_seed(0)).images

    out["step_s"], result = timed(step, repeats)
    out["step_peak_mib"] = memory_mib("VmHWM")
    out["check"] = _unscaled(folders, result)


WORKERS = {"ours-cn": ours_cn, "ref-cn": ref_cn, "ours-ip": ours_ip, "ref-ip": ref_ip, "profile-cn": profile_cn}


def run_worker(kind: str, folders: dict, size: int, repeats: int) -> dict:
    return run_child(__spec__.name, "--worker", kind, "--folders", json.dumps({k: str(v) for k, v in folders.items()}),
                     "--size", size, "--repeats", repeats)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--parts", nargs="+", choices=("cn", "ip"), default=["cn", "ip"], help="ControlNet, IP-Adapter")
    p.add_argument("--profile", action="store_true",
                   help="instead: both ControlNet steps in one process, alternating, and each one's operator table")
    p.add_argument("--worker", choices=sorted(WORKERS))
    p.add_argument("--folders")
    a = p.parse_args()
    if a.worker:
        out: dict = {}
        WORKERS[a.worker]({k: Path(v) for k, v in json.loads(a.folders).items()}, a.size, a.repeats, out)
        print_result(out)
        return 0

    from devkit.kolors_models import medium_kolors, medium_kolors_controlnet, medium_kolors_ip_adapter

    folders = {"kolors": medium_kolors(), "controlnet": medium_kolors_controlnet(),
               "ip": medium_kolors_ip_adapter() if "ip" in a.parts else ""}
    if a.profile:
        res = run_worker("profile-cn", folders, a.size, a.repeats)
        for who, table in res["tables"].items():
            sys.stdout.write(f"\n{who}, one ControlNet step:\n{table}")
        ours, ref = (statistics.median(res["step_s"][k]) for k in ("ours", "reference"))
        sys.stdout.write(f"\nControlNet step in one process, {a.repeats} alternating calls (medians): ours {ours:.3f}s, "
                         f"reference {ref:.3f}s, speed {ref / ours:.2f}x\n")
        return 0
    runs: dict[str, list[dict]] = {k: [] for k in WORKERS}
    for r in range(a.rounds):
        for part in a.parts:
            for who in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
                res = run_worker(f"{who}-{part}", folders, a.size, a.repeats)
                runs[f"{who}-{part}"].append(res)
                sys.stdout.write(f"round {r + 1} {who}-{part}: step {statistics.median(res['step_s']):.3f}s, peak "
                                 f"{res['step_peak_mib']:.0f} MiB\n")
                sys.stdout.flush()

    def med(kind, key):
        return statistics.median(statistics.median(x[key]) if isinstance(x[key], list) else x[key] for x in runs[kind])

    lines = [f"Kolors add-ons, medium model, fp32, CPU ({os.cpu_count()} cores), {a.size}x{a.size} px, cfg {CFG:g}, "
             f"medians of {a.rounds} processes x {a.repeats} calls",
             f"{'':<30}{'ours':>10}{'reference':>11}{'ratio':>9}"]
    labels = {"cn": f"ControlNet step (strength {STRENGTH})", "ip": f"IP-Adapter step (weight {WEIGHT})"}
    for part in a.parts:
        label = labels[part]
        o, ref = runs[f"ours-{part}"][-1]["check"], runs[f"ref-{part}"][-1]["check"]
        diff = max(abs(x - y) for x, y in zip(o, ref))
        lines.append(f"{label}; latent max diff {diff:.1e} (of {max(abs(y) for y in ref):.2f})")
        so, sr = med(f"ours-{part}", "step_s"), med(f"ref-{part}", "step_s")
        lines.append(f"  {'one sampling step (speed)':<28}{so:>9.3f}s{sr:>10.3f}s{sr / so:>8.2f}x")
        mo, mr = med(f"ours-{part}", "step_peak_mib"), med(f"ref-{part}", "step_peak_mib")
        lines.append(f"  {'peak RSS of the step (MiB)':<28}{mo:>10.0f}{mr:>11.0f}{mo / mr:>8.2f}x")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
