"""One command for the GPU: what a user runs, on the first CUDA device, checked and measured in one table.

    python -m benchmarks.gpu_check                      # on a CUDA machine (under 10 minutes on one H100)
    python -m benchmarks.gpu_check --device cpu --tiny  # the same code paths on tiny models (the CI runs this)

It needs only what ``make test`` sets up, plus a CUDA build of torch. It is one file, and long, because it is the one
command a GPU session runs: every part below prints a row of the same table. Parts (``--only`` picks some):

- training: Train LoRA through a real ComfyUI server (started without --cpu on a GPU) on the small SD1.5 and the
  medium Kolors at 1024x1024 (tiny Kolors at 64x64 with --tiny): 2 epochs of one step, validation every epoch (one
  image, 2 sampling steps), in fp32, bf16 and fp16 autocast with ComfyUI's defaults, then fp32 again under
  --lowvram and, where installed, --use-sage-attention and --use-flash-attention. Per run: the loss is finite, no LoRA
  layer stayed zero (each got a gradient), the LoRA's update against the fp32 run of the same server, the peak device
  memory the run reports, the server's peak RAM, and the UNet loads per validation (ComfyUI's "Requested to load").
- kolors: one sampling step (KSampler, cfg 5) of the medium Kolors at 1024x1024 against diffusers' KolorsPipeline on
  the same weights, in ComfyUI's dtype for the device (fp16 on a GPU); seconds and peak memory, each in its own process.
- scoring: the ViT-L/14 aesthetic predictor (random weights, the real size) in fp32 and fp16: images per second and
  how far fp16 scores move from fp32's, against the spread of the scores over the images.
- memory: what one training step keeps for the backward pass on fp16 weights with and without bf16 autocast, and on
  fp32 weights (bytes of the tensors autograd saves; on a GPU also the peak allocated).

Prints one table (PASS/FAIL per row where there is a pass condition) and exits 1 if a row failed. ``--json FILE``
writes the rows too. A script, not a test: tests/comfy/test_gpu_check.py runs its tiny mode so it never rots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aesthete.training.memory import reset_resident_peak
from devkit.child import MIB, ChildFailed, enter_comfy, memory_mib, print_result, run_child

PARTS = ("training", "kolors", "scoring", "memory")
PRECISIONS = ("fp32", "bf16", "fp16 autocast")
EPOCHS = 2


@dataclass
class Row:
    part: str
    what: str
    setting: str
    ok: bool | None  # None: measured, no pass condition
    figures: str


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def gib(n: float) -> str:
    return f"{n / 1024 ** 3:.2f} GiB"


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class TrainedModel:
    """A model as Train LoRA gets it in the graph: ``load(g)`` adds its loader and returns (MODEL, CLIP, VAE)."""

    name: str
    unet_class: str  # the class ComfyUI names in "Requested to load ..." for its UNet
    resolution: int
    link: tuple[str, Path, str]  # (models folder, source, name)

    def load(self, g):
        folder, _, name = self.link
        if folder == "checkpoints":
            node = g.node("CheckpointLoaderSimple", ckpt_name=name)
        else:
            node = g.node("AestheteKolorsLoader", kolors=name, dtype="auto", text_encoder_device="default")
        return node.out(0), node.out(1), node.out(2)


def trained_models(tiny: bool, size: int) -> list[TrainedModel]:
    from devkit.factories import small_sd15_checkpoint
    from devkit.kolors_models import medium_kolors, tiny_kolors

    if tiny:
        return [TrainedModel("tiny Kolors", "Kolors", size, ("kolors", tiny_kolors("kolors", "fp16"),
                                                             "gpu-check-kolors"))]
    return [TrainedModel("small SD1.5", "BaseModel", size,
                         ("checkpoints", small_sd15_checkpoint(), "gpu-check-sd15.safetensors")),
            TrainedModel("medium Kolors", "Kolors", size, ("kolors", medium_kolors(), "gpu-check-kolors"))]


def comfy_configs(device: str, tiny: bool) -> list[tuple[str, list[str]]]:
    """ComfyUI's start-up flags to train under: its defaults, --lowvram, and the attentions that are installed."""
    import importlib.util

    configs = [("ComfyUI defaults", [])]
    if tiny:
        return configs
    configs.append(("--lowvram", ["--lowvram"]))
    if device == "cuda" and importlib.util.find_spec("sageattention"):
        configs.append(("--use-sage-attention", ["--use-sage-attention"]))
    if device == "cuda" and importlib.util.find_spec("flash_attn"):
        configs.append(("--use-flash-attention", ["--use-flash-attention"]))
    return configs


def train_graph(model: TrainedModel, precision: str, tag: str):
    from devkit.graph import new_graph
    from devkit.training_graphs import dataset_node, train_node

    g = new_graph()
    unet, clip, vae = model.load(g)
    r = model.resolution
    data = dataset_node(g, "gpu_check", resolution=r)
    validation = g.node("AestheteValidationSettings", prompts="ptn, stripes", negative="", seed=1, steps=2, width=r,
                        height=r, images_per_prompt=1, cfg=5.0, sampler_name="euler", scheduler="normal",
                        output_lora="last epoch")
    train = train_node(g, unet, clip, vae, data.out(0), epochs=EPOCHS, learning_rate=1e-4, precision=precision,
                       checkpoint_name=f"gpu_check/{tag}", validation=validation.out(0))
    g.node("AestheteSaveLora", lora=train.out(1), name_prefix=f"gpu_check/{tag}_out", precision="fp32",
           diffsynth_copy=False)
    return g, train


def lora_updates(path: Path) -> dict:
    """Each layer's weight change (up @ down * alpha / rank) of a saved LoRA."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    out = {}
    for key in t:
        if key.endswith(".lora_up.weight"):
            base = key[:-len(".lora_up.weight")]
            up, down = t[key].float(), t[base + ".lora_down.weight"].float()
            out[base] = up @ down * float(t[base + ".alpha"]) / down.shape[0]
    return out


def relative_change(a: dict, b: dict) -> float:
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    den = sum(float((b[k] ** 2).sum()) for k in b)
    return math.sqrt(num / den) if den else math.inf


def reported_peak(report: str) -> float:
    """The largest phase peak of Train LoRA's memory line (CUDA peak allocated on a GPU), in bytes."""
    import re

    line = next((ln for ln in report.splitlines() if "memory (" in ln), "")
    return max((float(v) * 1024 ** 3 for v in re.findall(r"([\d.]+) GiB", line)), default=0.0)


def train_once(server, client, model: TrainedModel, precision: str, tag: str) -> dict:
    """One Train LoRA run; what it shows, or the error it ended with."""
    from devkit.client import ExecutionError

    g, train = train_graph(model, precision, tag)
    reset_resident_peak(server.process.pid)  # the server's peak RAM, from now
    start, started = len(server.log_text()), time.perf_counter()
    try:
        result = client.run(g.finalize(), timeout=900)
    except ExecutionError as e:
        return {"error": str(e).splitlines()[0][:300]}
    out = result.node_output(train.id)
    log = server.log_text()[start:]
    saved = server.models_dir / "loras" / "gpu_check" / f"{tag}_out_00001.safetensors"
    return {"losses": out["loss"], "report": out["text"][0], "updates": lora_updates(saved),
            "seconds": time.perf_counter() - started, "ram": memory_mib("VmHWM", server.process.pid) * MIB,
            "loads": log.count(f"Requested to load {model.unet_class}\n")}


def training_row(model: TrainedModel, config: str, precision: str, run: dict, reference: dict | None) -> Row:
    setting = f"{config}, {precision}"
    if "error" in run:
        return Row("training", f"Train LoRA, {model.name}", setting, False, run["error"])
    finite = all(math.isfinite(v) for v in run["losses"])
    zero = sum(1 for u in run["updates"].values() if not u.any())
    per_validation = (run["loads"] - 1) / EPOCHS  # the first load is the training's own
    change = relative_change(run["updates"], reference["updates"]) if reference and reference is not run else None
    figures = (f"loss {run['losses'][0]:.4f} -> {run['losses'][-1]:.4f}; {zero}/{len(run['updates'])} LoRA layers "
               f"zero; {'' if change is None else f'LoRA update {change:.1%} off fp32; '}peak {gib(reported_peak(run['report']))} "
               f"(as reported), RAM {gib(run['ram'])}; {per_validation:g} UNet loads per validation; "
               f"{run['seconds']:.0f} s")
    return Row("training", f"Train LoRA, {model.name}", setting, finite and zero == 0 and per_validation == 0, figures)


def training_rows(device: str, tiny: bool, size: int) -> list[Row]:
    from devkit.client import ComfyClient
    from devkit.comfy_server import running_server
    from devkit.training_data import write_pattern_folder

    rows, models = [], trained_models(tiny, size)
    for config, flags in comfy_configs(device, tiny):
        with running_server("aesthete-gpu-check-", cpu=device == "cpu", extra_args=flags) as server:
            client = ComfyClient(server.url)
            write_pattern_folder(server.input_dir / "gpu_check", count=2,
                                 size=(models[0].resolution, models[0].resolution))
            for model in models:
                server.link_model(*model.link)
                reference = None
                for precision in PRECISIONS if config == "ComfyUI defaults" else ("fp32",):
                    tag = f"{model.name}_{precision}".replace(" ", "_").replace(".", "")
                    run = train_once(server, client, model, precision, tag)
                    reference = run if precision == "fp32" and "error" not in run else reference
                    rows.append(training_row(model, config, precision, run, reference))
                    say(f"  {rows[-1].what} ({rows[-1].setting}): {rows[-1].figures}")
    return rows


# ------------------------------------------------------------------------------------ workers (own processes)
class Peak:
    """Peak memory of what runs inside: CUDA's peak allocated on a GPU, else the process's peak RSS."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self) -> Peak:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_resident_peak()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()
        else:
            self.bytes = memory_mib("VmHWM") * MIB


def timed(fn, device: str, repeats: int = 3) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    import statistics

    import torch

    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kolors_folder(tiny: bool) -> Path:
    from devkit.kolors_models import medium_kolors, tiny_kolors

    return tiny_kolors("kolors", "fp16") if tiny else medium_kolors()


def worker_kolors_ours(device: str, tiny: bool, size: int) -> dict:
    enter_comfy(*["--cpu"] * (device == "cpu"))  # ComfyUI on the device asked for
    import nodes as comfy_nodes  # ComfyUI's nodes.py (KSampler)
    import torch

    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_unet_from_diffusers
    from benchmarks.bench_kolors import CFG, conditioning

    kf = find_kolors_folder(kolors_folder(tiny))
    hidden = kf.text_encoder_config["hidden_size"]
    c = conditioning(hidden, size)
    model = kolors_unet_from_diffusers(LazyWeights(kf.unet_files), kf.unet_config, kf.scheduler_config, "auto")
    extra = {"width": size, "height": size}
    positive = [[c["context"], {"pooled_output": c["pooled"], **extra}]]
    negative = [[c["neg_context"], {"pooled_output": c["neg_pooled"], **extra}]]
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    sampler = comfy_nodes.KSampler()
    with torch.inference_mode(), Peak(device) as peak:
        seconds = timed(lambda: sampler.sample(model, 0, 1, CFG, "euler", "normal", positive, negative, latent, 1.0),
                        device)
    return {"seconds": seconds, "peak": peak.bytes, "dtype": str(model.model.get_dtype())}


def worker_kolors_reference(device: str, tiny: bool, size: int) -> dict:
    import torch
    from diffusers import EulerDiscreteScheduler, KolorsPipeline, UNet2DConditionModel

    from benchmarks.bench_kolors import CFG, conditioning

    dtype = torch.float16 if device == "cuda" else torch.float32
    folder = kolors_folder(tiny)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", variant="fp16", torch_dtype=dtype).to(device)
    hidden = unet.config.encoder_hid_dim
    c = {k: (v.to(device, dtype) if isinstance(v, torch.Tensor) else v) for k, v in conditioning(hidden, size).items()}
    pipe = KolorsPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet,
                          scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
                          force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)

    def step():
        return pipe(prompt_embeds=c["context"], pooled_prompt_embeds=c["pooled"],
                    negative_prompt_embeds=c["neg_context"], negative_pooled_prompt_embeds=c["neg_pooled"],
                    num_inference_steps=1, guidance_scale=CFG, height=size, width=size, output_type="latent",
                    generator=torch.Generator(device).manual_seed(0)).images

    with torch.no_grad(), Peak(device) as peak:
        seconds = timed(step, device)
    return {"seconds": seconds, "peak": peak.bytes, "dtype": str(dtype)}


def worker_scoring(device: str, tiny: bool, size: int) -> dict:
    import statistics

    import numpy as np
    from PIL import Image

    from aesthete.scoring.predictor import AestheticPredictor
    from devkit.factories import aesthetic_predictor

    folder = aesthetic_predictor("tiny" if tiny else "full")
    rng = np.random.default_rng(0)
    count = int(os.environ.get("GPU_CHECK_IMAGES", 8 if tiny else 32))
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(count)]
    out = {}
    for dtype in ("fp32", "fp16"):
        predictor = AestheticPredictor.from_folder(folder, device, dtype)
        scores = predictor.score_images(images, batch_size=16)  # also the warm-up
        started = time.perf_counter()
        for _ in range(1 if device == "cpu" else 3):
            predictor.score_images(images, batch_size=16)
        per_s = len(images) * (1 if device == "cpu" else 3) / (time.perf_counter() - started)
        out[dtype] = {"scores": scores, "per_s": per_s}
        del predictor
    drift = max(abs(a - b) for a, b in zip(out["fp16"]["scores"], out["fp32"]["scores"]))
    return {"drift": drift, "spread": statistics.pstdev(out["fp32"]["scores"]),
            "fp32_per_s": out["fp32"]["per_s"], "fp16_per_s": out["fp16"]["per_s"], "images": len(images)}


def saved_bytes(step, model) -> int:
    """Bytes of the distinct storages autograd saves for the backward pass while ``step()`` runs its forward, not
    counting the model's own weights (saved by reference, no memory of their own)."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(storages.values())


def worker_memory(device: str, tiny: bool, size: int) -> dict:
    """One training forward/backward of the Kolors UNet with a LoRA: fp32 weights, then fp16 weights computing in
    fp16 as on a GPU (ComfyUI's native fp16; on the CPU ComfyUI would cast them to fp32 layer by layer), each alone and
    under bf16 autocast; what autograd keeps for the backward pass (and the peak memory)."""
    enter_comfy(*["--cpu"] * (device == "cpu"))  # ComfyUI on the device asked for
    import torch

    from aesthete.common.tensors import LazyWeights
    from aesthete.kolors.folder import find_kolors_folder
    from aesthete.nodes.kolors_model import kolors_unet_from_diffusers
    from aesthete.training.lora_network import LoraNetwork

    kf = find_kolors_folder(kolors_folder(tiny))
    patcher = kolors_unet_from_diffusers(LazyWeights(kf.unet_files), kf.unet_config, kf.scheduler_config, "fp32")
    base = patcher.model.to(device)
    unet = base.diffusion_model.requires_grad_(False)
    network = LoraNetwork.create(unet, 4, 4.0)
    network.to(device).requires_grad_(True)
    network.attach(unet, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
    ctx = torch.randn(1, 256, kf.text_encoder_config["hidden_size"], generator=g).to(device)
    y = torch.randn(1, base.adm_channels, generator=g).to(device)
    sigma = torch.tensor([1.0], device=device)
    out = {}
    for weights in (torch.float32, torch.float16):
        unet.to(weights)
        unet.dtype, base.manual_cast_dtype = weights, None  # ComfyUI computes in the weights' dtype
        for autocast in (None, torch.bfloat16):
            def step(autocast=autocast):
                with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
                    return base.apply_model(x, sigma, c_crossattn=ctx, y=y).float().square().mean()

            label = f"{'fp16' if weights == torch.float16 else 'fp32'} weights" + (", bf16 autocast" if autocast
                                                                                   else "")
            try:
                with Peak(device) as peak:
                    saved = saved_bytes(step, base)
            except RuntimeError as e:  # an op this device cannot run in that dtype (the CPU, for some)
                out[label] = {"error": str(e).splitlines()[0][:200]}
                continue
            out[label] = {"saved": saved, "peak": peak.bytes}
            network.zero_grad(set_to_none=True)
    return out


def worker_memory_linear(device: str, tiny: bool, size: int) -> dict:
    """The same measurement on a stack of Linear layers (the UNet's attention projections are Linear layers), which
    the CPU's autocast runs in every dtype combination: 8 layers of 1024x1024, 4 tokens per pixel of ``size`` (4096
    at 1024)."""
    import torch

    from aesthete.training.lora_network import LoraNetwork

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)]).to(device).requires_grad_(False)
    network = LoraNetwork.create(model, 4, 4.0, targets=("",))
    network.to(device).requires_grad_(True)
    network.attach(model, device)
    x = torch.randn(4 * size, 1024, device=device)
    out = {}
    for weights in (torch.float32, torch.float16):
        model.to(weights)
        for autocast in (None, torch.bfloat16):
            def step(autocast=autocast, weights=weights):
                with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
                    return model(x.to(weights)).float().square().mean()

            label = f"{'fp16' if weights == torch.float16 else 'fp32'} weights" + (", bf16 autocast" if autocast
                                                                                   else "")
            with Peak(device) as peak:
                saved = saved_bytes(step, model)
            out[label] = {"saved": saved, "peak": peak.bytes}
            network.zero_grad(set_to_none=True)
    return out


WORKERS = {"kolors-ours": worker_kolors_ours, "kolors-reference": worker_kolors_reference, "scoring": worker_scoring,
           "memory": worker_memory, "memory-linear": worker_memory_linear}


def run_worker(name: str, device: str, tiny: bool, size: int) -> dict:
    try:
        return run_child(__spec__.name, "--worker", name, "--device", device, "--size", size, *["--tiny"] * tiny)
    except ChildFailed as e:
        return {"error": e.last_line[:300]}


# ---------------------------------------------------------------------------------------------------- rows
def kolors_rows(device: str, tiny: bool, size: int) -> list[Row]:
    ours, ref = run_worker("kolors-ours", device, tiny, size), run_worker("kolors-reference", device, tiny, size)
    what = f"Kolors one sampling step, {size}x{size}"
    if "error" in ours or "error" in ref:
        return [Row("kolors", what, "vs diffusers", False, ours.get("error") or ref.get("error"))]
    figures = (f"ours {ours['seconds']:.3f} s ({ours['dtype']}), diffusers {ref['seconds']:.3f} s ({ref['dtype']}): "
               f"speed {ref['seconds'] / ours['seconds']:.2f}x; peak {gib(ours['peak'])} vs {gib(ref['peak'])}: "
               f"{ours['peak'] / max(ref['peak'], 1):.2f}x")
    return [Row("kolors", what, "vs diffusers", None, figures)]


def scoring_rows(device: str, tiny: bool, size: int) -> list[Row]:
    r = run_worker("scoring", device, tiny, size)
    what = "aesthetic predictor " + ("tiny" if tiny else "ViT-L/14")
    if "error" in r:
        return [Row("scoring", what, "fp16 vs fp32", False, r["error"])]
    share = r["drift"] / r["spread"] if r["spread"] else math.inf
    figures = (f"{r['fp16_per_s']:.1f} images/s fp16, {r['fp32_per_s']:.1f} fp32; fp16 scores move by at most "
               f"{r['drift']:.2e} ({share:.2%} of the scores' spread {r['spread']:.3g}, {r['images']} images)")
    # measured only: with random weights the drift says little about the real predictor's (see docs/scorers.md, Precision and the bar of 6)
    return [Row("scoring", what, "fp16 vs fp32", None, figures)]


def memory_rows(device: str, tiny: bool, size: int) -> list[Row]:
    rows = []
    for worker, what in (("memory", f"backward memory of a step, {'tiny' if tiny else 'medium'} Kolors UNet"),
                         ("memory-linear", "backward memory of a step, 8 Linear layers")):
        r = run_worker(worker, device, tiny, size)
        if "error" in r:
            rows.append(Row("memory", what, "precisions", False, r["error"]))
            continue
        base = r["fp32 weights"]["saved"]
        rows += [Row("memory", what, label, None, v["error"] if "error" in v else
                     f"saved for backward {gib(v['saved'])} ({v['saved'] / base:.2f}x fp32 weights'); peak "
                     f"{gib(v['peak'])}") for label, v in r.items()]
    return rows


SECTIONS = {"training": training_rows, "kolors": kolors_rows, "scoring": scoring_rows, "memory": memory_rows}


def print_table(rows: list[Row]) -> None:
    head = ("part", "check", "setting", "result", "figures")
    table = [head] + [(r.part, r.what, r.setting, {True: "PASS", False: "FAIL", None: "-"}[r.ok], r.figures)
                      for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for i, row in enumerate(table):
        say("| " + " | ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + f" | {row[4]} |")
        if i == 0:
            say("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny models at 64x64 (seconds on a CPU)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--size", type=int, help="image side in pixels (default 1024; 64 with --tiny)")
    p.add_argument("--images", type=int, help="images the scoring part scores (default 32; 8 with --tiny)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    a = p.parse_args()
    size = a.size or (64 if a.tiny else 1024)
    if a.images:
        os.environ["GPU_CHECK_IMAGES"] = str(a.images)  # read by the scoring worker, a child process
    if a.worker:
        print_result(WORKERS[a.worker](a.device, a.tiny, size))
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: this torch build or machine has none (use --device cpu --tiny for the smoke run)")
    parts = [part.strip() for part in a.only.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--only: unknown parts {unknown}; choose from {', '.join(PARTS)}")
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "CPU"
    say(f"gpu_check on {name}, torch {torch.__version__}{', tiny models' if a.tiny else ''}")
    started, rows = time.perf_counter(), []
    for part in parts:
        rows += SECTIONS[part](a.device, a.tiny, size)
    print_table(rows)
    say(f"{len(rows)} rows in {time.perf_counter() - started:.0f} s")
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
