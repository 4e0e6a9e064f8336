"""Benchmark: applying a full-size DiffSynth 1.x Kolors LoRA with AestheteLoraLoader against core ComfyUI.

    .venv/bin/python -m benchmarks.bench_lora [--repeats 7]

What is timed, in one process and one run, alternating the contenders:
- the LoRA file: the complete DiffSynth 1.x Kolors key list (tests/fixtures/diffsynth/kolors_lora_keys.json,
  1,120 tensors, rank 16, full SDXL shapes) with random weights, saved as DiffSynth saves it (a .ckpt), and the
  same LoRA pre-converted to ComfyUI's format (.safetensors) with ``aesthete convert-lora``;
- the model: a full-size SDXL UNet built with ComfyUI's own classes (comfy.supported_models.SDXL ->
  model_base.SDXL, 2.6 B parameters) inside a ModelPatcher. Its weights are on the meta device: applying a
  LoRA in ComfyUI (core LoraLoader as well as ours) only reads the file, maps keys and registers patches; the
  weights are patched later, at sampling, by the same ComfyUI code for both (the tests show the patched
  weights are identical), so the weight values do not enter this measurement;
- baseline: core ``LoraLoaderModelOnly().load_lora_model_only`` on the pre-converted .safetensors (a new node
  instance each time, so its one-file cache never hits);
- ours: ``AestheteLoraLoader.execute`` on the DiffSynth .ckpt (what users have), and on the pre-converted file;
- LyCORIS kinds: kohya-named LoHa and LoKr (``lokr_w1`` + ``lokr_w2_a``/``lokr_w2_b``) files, rank 16, on the same
  560 attention projections, applied by core LoraLoaderModelOnly and by ours.
Prints medians and minima and the ratios ours / core on the same kind. Targets: at most 1.3x for the DiffSynth file against
core on the converted one; LoHa and LoKr no slower than core.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from devkit import REPO
from devkit.child import enter_comfy

log = logging.getLogger("aesthete.bench")


def full_sdxl_patcher():
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    unet_config = {"model_channels": 320, "use_linear_in_transformer": True, "transformer_depth": [0, 0, 2, 2, 10, 10],
                   "context_dim": 2048, "adm_in_channels": 2816, "use_temporal_attention": False,
                   "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth_middle": 10,
                   "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "num_head_channels": 64,
                   "in_channels": 4, "out_channels": 4, "image_size": 32, "use_spatial_transformer": True,
                   "legacy": False, "num_classes": "sequential", "use_temporal_resblock": False}
    config = comfy.supported_models.SDXL(unet_config)
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({}, device=torch.device("meta"))
    n = sum(p.numel() for p in model.parameters())
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu")), n


def kolors_lora(folder: Path) -> tuple[str, str]:
    import torch

    from aesthete.cli import main as aesthete_cli

    spec = json.loads((REPO / "tests" / "fixtures" / "diffsynth" / "kolors_lora_keys.json").read_text())
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*shape, generator=g) * 0.01 for k, shape in spec["keys"].items()}
    torch.save(sd, folder / "kolors-diffsynth.ckpt")
    if aesthete_cli(["convert-lora", str(folder / "kolors-diffsynth.ckpt"),
                     str(folder / "kolors-comfyui.safetensors")]) != 0:
        raise SystemExit("conversion failed")
    return "kolors-diffsynth.ckpt", "kolors-comfyui.safetensors"


def lycoris_files(folder: Path, patcher) -> list[str]:
    """kohya-named LoHa and LoKr files for the 560 attention projections of the full-size SDXL UNet."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    shapes = {k: tuple(v.shape) for k, v in patcher.model.state_dict().items()
              if ".attn" in k and ".to_" in k and k.endswith(".weight")}
    names = []
    for kind in ("loha", "lokr"):
        sd = {}
        for key, (out_dim, in_dim) in shapes.items():
            name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
            if kind == "loha":
                for w in ("w1", "w2"):
                    sd[f"{name}.hada_{w}_a"] = torch.randn(out_dim, 16, generator=g) * 0.1
                    sd[f"{name}.hada_{w}_b"] = torch.randn(16, in_dim, generator=g) * 0.1
            else:
                sd[f"{name}.lokr_w1"] = torch.randn(4, 2, generator=g) * 0.1
                sd[f"{name}.lokr_w2_a"] = torch.randn(out_dim // 4, 16, generator=g) * 0.1
                sd[f"{name}.lokr_w2_b"] = torch.randn(16, in_dim // 2, generator=g) * 0.1
            sd[f"{name}.alpha"] = torch.tensor(8.0)
        save_file(sd, str(folder / f"{kind}-kohya.safetensors"))
        names.append(f"{kind}-kohya.safetensors")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    enter_comfy("--cpu")
    import folder_paths
    import nodes as comfy_nodes  # ComfyUI's own nodes.py (core LoraLoaderModelOnly)

    from aesthete.nodes.lora_nodes import AestheteLoraLoader

    with tempfile.TemporaryDirectory(prefix="aesthete-bench-lora-") as tmp:
        folder_paths.folder_names_and_paths["loras"] = ([tmp], folder_paths.supported_pt_extensions)
        ckpt, converted = kolors_lora(Path(tmp))
        sizes = {name: (Path(tmp) / name).stat().st_size / 2**20 for name in (ckpt, converted)}
        patcher, n_params = full_sdxl_patcher()
        log.info("model: full-size SDXL UNet, %.2f B parameters (meta device); LoRA: 1120 tensors, rank 16; "
                 "files: %s", n_params / 1e9, ", ".join(f"{k} {v:.0f} MiB" for k, v in sizes.items()))

        loha, lokr = lycoris_files(Path(tmp), patcher)

        def core(name):
            def run():
                out = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(patcher, name, 1.0)[0]
                return len(out.patches)
            return run

        def ours(name):
            def run():
                out = AestheteLoraLoader.execute(patcher, name, 1.0, 1.0, 4.0)
                return len(out.args[0].patches)
            return run

        baseline = "core LoraLoaderModelOnly, converted .safetensors"
        contenders = {baseline: core(converted),
                      "ours, DiffSynth .ckpt": ours(ckpt),
                      "ours, converted .safetensors": ours(converted),
                      "core, kohya LoHa": core(loha), "ours, kohya LoHa": ours(loha),
                      "core, kohya LoKr": core(lokr), "ours, kohya LoKr": ours(lokr)}
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for name, fn in contenders.items():  # warm-up: page cache, imports
            patched = fn()
            log.info("warm-up %-50s %d weights patched", name, patched)
            if patched != 560:
                raise SystemExit(f"{name}: expected 560 patched weights, got {patched}")
        for _ in range(args.repeats):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        for name, values in times.items():
            kind = name.split(", ", 1)[1]
            core_times = times[baseline if "LoHa" not in kind and "LoKr" not in kind else f"core, {kind}"]
            med = statistics.median(values)
            # the minimum ratio too: on a shared machine the medians carry other processes' load
            log.info("%-52s median %7.1f ms  (min %7.1f)  ratio vs core %.2fx (of minima %.2fx)", name, med * 1e3,
                     min(values) * 1e3, med / statistics.median(core_times), min(values) / min(core_times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
