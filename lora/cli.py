"""``aesthete convert-lora IN OUT.safetensors [--to comfyui|diffsynth|diffusers] [--alpha A] [--base sd15|sdxl]``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .convert import TARGETS, LoraAlreadyLoadable, LoraConversionError, convert_lora_with_report
from .files import LoraFileError, read_lora_file, write_safetensors
from .layout import BASES

log = logging.getLogger("aesthete.lora")

# exit status when nothing was written because ComfyUI loads the file as it is
ALREADY_LOADABLE = 3


def add_subcommand(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-lora", help="convert a LoRA (DiffSynth, kohya, diffusers, peft, ComfyUI) to ComfyUI's, "
                             "DiffSynth's or diffusers' format",
        description="Read a LoRA of any supported format (.safetensors, or .ckpt/.pt/.bin loaded without running "
                    "pickled code) and write it as a safetensors file that ComfyUI's core LoraLoader (--to comfyui) "
                    "or DiffSynth-Studio 1.x (--to diffsynth) or diffusers' load_lora_weights (--to diffusers, the UNet "
                    "part, for the standard SD1.5/SDXL/Kolors UNet) loads with the same strength. LyCORIS files (LoHa, "
                    "LoKr, DoRA, LoCon with a mid matrix, full differences) in kohya or ComfyUI naming already load "
                    f"in ComfyUI as they are: nothing is written and the exit status is {ALREADY_LOADABLE}.")
    parser.add_argument("input", type=Path, help="the LoRA file to read")
    parser.add_argument("output", type=Path, help="the .safetensors file to write (replaced atomically)")
    parser.add_argument("--to", choices=TARGETS, default="comfyui", help="output format (default: comfyui)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="training alpha of layers whose file stores none; default (or 0): 4 for DiffSynth "
                             "1.x files (its recipe), the rank (scale 1.0) for other formats; with --to diffsynth, "
                             "also the peft lora_alpha the output is for (default 4)")
    parser.add_argument("--base", choices=BASES, default=None,
                        help="the UNet the LoRA is for (Kolors is sdxl); inferred from the file when omitted")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.output.suffix.lower() != ".safetensors":
        log.error("%s: the output must be a .safetensors file", args.output)
        return 2
    if args.output.resolve() == args.input.resolve():
        log.error("%s: write the converted LoRA to a new file, not over its input", args.output)
        return 2
    try:
        tensors, metadata = read_lora_file(args.input)
        result = convert_lora_with_report(tensors, args.to, alpha=args.alpha, base=args.base)
    except LoraAlreadyLoadable as e:
        log.warning("%s: %s", args.input, e)
        return ALREADY_LOADABLE
    except (LoraFileError, LoraConversionError, ValueError) as e:
        log.error("%s", e)
        return 1
    result.metadata["aesthete.source_file"] = args.input.name
    write_safetensors(args.output, result.tensors, result.metadata)
    parsed = result.parsed
    log.info("%s: %s LoRA for %s, %d of %d tensors placed; wrote %d tensors (%s, rank %s, alpha %s) to %s",
             args.input, parsed.format, parsed.base, parsed.placed_keys, parsed.total_keys, len(result.tensors),
             args.to, result.metadata["aesthete.rank"], result.metadata["aesthete.alpha"], args.output)
    return 0
