"""Write the DiffSynth-Studio 1.x fixtures in tests/fixtures/diffsynth/ with DiffSynth's own code.

Runs with DiffSynth 1.1.9 first on the path: the reference folder `make setup-test` builds from
tests/reference/diffsynth.txt, plus Lightning (its trainer code; only this script needs it):

    .venv/bin/python -m pip install --target .cache/lightning --no-deps lightning lightning-utilities torchmetrics
    PYTHONPATH=.cache/reference/diffsynth:.cache/lightning .venv/bin/python scripts/make_diffsynth_fixtures.py

scripts/check_diffsynth_lora.py uses the same reference folder to load Save LoRA's DiffSynth copy with DiffSynth's
own code.

Writes (the tests read these; CI never needs the DiffSynth venv):
- kolors_lora_keys.json: every tensor name and shape of a DiffSynth 1.x Kolors LoRA (rank 16, targets
  to_q,to_k,to_v,to_out as the recipe), made by injecting DiffSynth's LoRA (its LightningModelForT2ILoRA
  .add_lora_to_model, i.e. peft inject_adapter_in_model) into DiffSynth's Kolors SDXLUNet built on the meta
  device, and collected by its own on_save_checkpoint.
- unet_names.json: {"sdxl"|"sd15": {ldm parameter name: DiffSynth parameter name}} from DiffSynth's own
  checkpoint converters (SDXLUNetStateDictConverter / SDUNetStateDictConverter.from_civitai).
- tiny_sd_lora.ckpt (+ .json): a Lightning checkpoint written by DiffSynth's trainer code after two training
  steps of a tiny UNet assembled by hand from DiffSynth's own blocks (conv_in, blocks.0 ResnetBlock,
  blocks.1 AttentionBlock exactly as in its SD UNet, conv_out), random latents and text features.
- tiny_kolors_lora.ckpt (+ .json): the same for Kolors naming: blocks.7 is an AttentionBlock with two
  transformer blocks and 2048-wide text behind the Kolors text projection, 320 channels (the tests' small SDXL).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("aesthete.fixtures")
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "diffsynth"


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class _Pipe(torch.nn.Module):
    """The few pipeline members DiffSynth's LightningModelForT2ILoRA uses, around one denoising model."""

    def __init__(self, unet: torch.nn.Module, text_dim: int = 768):
        super().__init__()
        from diffsynth.schedulers.ddim import EnhancedDDIMScheduler

        self.unet = unet
        self.scheduler = EnhancedDDIMScheduler()
        self.scheduler.set_timesteps(1000)  # as DiffSynth's own training scripts do: one id per train step
        self.torch_dtype = torch.float32
        self.device = "cpu"
        generator = torch.Generator().manual_seed(1)
        self.register_buffer("text_features", torch.randn(1, 77, text_dim, generator=generator))

    def denoising_model(self) -> torch.nn.Module:
        return self.unet

    def encode_prompt(self, text, positive=True):
        return {"encoder_hidden_states": self.text_features.expand(len(text), -1, -1)}

    def prepare_extra_input(self, latents):
        return {}


def kolors_lora_keys() -> dict:
    from diffsynth.models.sdxl_unet import SDXLUNet
    from diffsynth.trainers.text_to_image import LightningModelForT2ILoRA

    with torch.device("meta"):
        unet = SDXLUNet(is_kolors=True)
    module = LightningModelForT2ILoRA(learning_rate=1e-4, use_gradient_checkpointing=False)
    module.pipe = _MetaPipe(unet)
    module.add_lora_to_model(unet, lora_rank=16, lora_alpha=4, lora_target_modules="to_q,to_k,to_v,to_out",
                             init_lora_weights="gaussian")
    checkpoint = {"epoch": 0, "state_dict": {}}  # on_save_checkpoint clears it, as Lightning's save does
    module.on_save_checkpoint(checkpoint)
    return {"source": "diffsynth 1.1.9 SDXLUNet(is_kolors=True) + LightningModelForT2ILoRA.add_lora_to_model",
            "rank": 16, "lora_alpha": 4, "target_modules": "to_q,to_k,to_v,to_out",
            "keys": {k: list(v.shape) for k, v in checkpoint.items()}}


class _MetaPipe:
    def __init__(self, unet):
        self.unet = unet

    def denoising_model(self):
        return self.unet


def unet_names() -> dict:
    from diffsynth.models.sd_unet import SDUNetStateDictConverter
    from diffsynth.models.sdxl_unet import SDXLUNetStateDictConverter

    tables = {}
    for base, converter in (("sdxl", SDXLUNetStateDictConverter()), ("sd15", SDUNetStateDictConverter())):
        # the converter's rename table is a literal in from_civitai; feed it every name it knows, numbered
        consts = []
        for c in converter.from_civitai.__code__.co_consts:  # a dict literal's keys may sit in one tuple
            consts += list(c) if isinstance(c, tuple) else [c]
        names = sorted({c for c in consts if isinstance(c, str) and c.startswith("model.diffusion_model.")})
        converted = converter.from_civitai({name: torch.tensor([float(i)]) for i, name in enumerate(names)})
        if isinstance(converted, tuple):
            converted = converted[0]
        prefix = len("model.diffusion_model.")
        tables[base] = {names[int(v.item())][prefix:]: k for k, v in converted.items()}
    return tables


class _TinyStem(torch.nn.Module):
    """DiffSynth's UNet stem at SD widths: time projection and embedding, conv_in (made first, in this order, so the
    fixtures' random weights stay those the files were made with)."""

    def __init__(self):
        super().__init__()
        from diffsynth.models.sd_unet import Timesteps

        self.time_proj = Timesteps(320)
        self.time_embedding = torch.nn.Sequential(torch.nn.Linear(320, 1280), torch.nn.SiLU(),
                                                  torch.nn.Linear(1280, 1280))
        self.conv_in = torch.nn.Conv2d(4, 320, kernel_size=3, padding=1)


class TinySDUNet(_TinyStem):
    """The first two blocks of DiffSynth's SD UNet at their real sizes (so blocks.0/blocks.1 names and shapes
    are those of a real DiffSynth SD LoRA), between a conv_in and a conv_out."""

    def __init__(self):
        super().__init__()
        from diffsynth.models.sd_unet import AttentionBlock, ResnetBlock

        self.blocks = torch.nn.ModuleList([ResnetBlock(320, 320, 1280),
                                           AttentionBlock(8, 40, 320, 1, 768, eps=1e-6)])
        self.conv_norm_out = torch.nn.GroupNorm(num_channels=320, num_groups=32, eps=1e-5)
        self.conv_act = torch.nn.SiLU()
        self.conv_out = torch.nn.Conv2d(320, 4, kernel_size=3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        time_emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        hidden_states = self.conv_in(sample)
        text_emb, res_stack = encoder_hidden_states, [hidden_states]
        for block in self.blocks:
            hidden_states, time_emb, text_emb, res_stack = block(hidden_states, time_emb, text_emb, res_stack)
        return self.conv_out(self.conv_act(self.conv_norm_out(hidden_states)))


class TinyKolorsUNet(_TinyStem):
    """DiffSynth's Kolors UNet naming at the width of the tests' small SDXL UNet (320 everywhere): blocks 0-6 are
    DiffSynth's own Push/Pop placeholders so that ``blocks.7`` is the first cross-attention block, as in
    SDXLUNet, here AttentionBlock(5 heads x 64, 320 channels, 2 transformer blocks, 2048-wide text) fed by
    DiffSynth's Kolors text projection (4096 -> 2048)."""

    def __init__(self):
        super().__init__()
        from diffsynth.models.sd_unet import AttentionBlock, PushBlock

        self.text_intermediate_proj = torch.nn.Linear(4096, 2048)
        self.blocks = torch.nn.ModuleList([PushBlock() for _ in range(7)] + [AttentionBlock(5, 64, 320, 2, 2048)])
        self.conv_out = torch.nn.Conv2d(320, 4, kernel_size=3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        time_emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        hidden_states = self.conv_in(sample)
        text_emb = self.text_intermediate_proj(encoder_hidden_states)
        hidden_states, _, _, _ = self.blocks[7](hidden_states, time_emb, text_emb, [hidden_states])
        return self.conv_out(hidden_states)


class _Latents(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(100 + i)
        return {"text": "a photo", "image": torch.zeros(3, 64, 64), "latents": torch.randn(4, 8, 8, generator=g)}


def tiny_lora(out_dir: Path, name: str, unet_class, text_dim: int) -> dict:
    import lightning as pl
    from diffsynth.trainers.text_to_image import LightningModelForT2ILoRA
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)

    class TinyModel(LightningModelForT2ILoRA):
        def __init__(self):
            super().__init__(learning_rate=5e-2, use_gradient_checkpointing=False)
            self.pipe = _Pipe(unet_class(), text_dim=text_dim)
            self.freeze_parameters()
            self.add_lora_to_model(self.pipe.denoising_model(), lora_rank=4, lora_alpha=4,
                                   lora_target_modules="to_q,to_k,to_v,to_out", init_lora_weights="gaussian")

    model = TinyModel()
    work = Path(tempfile.mkdtemp(prefix="diffsynth-train-"))
    try:
        trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             default_root_dir=str(work),
                             callbacks=[ModelCheckpoint(dirpath=str(work), save_top_k=-1, every_n_train_steps=2)])
        trainer.fit(model, torch.utils.data.DataLoader(_Latents(), batch_size=1))
        ckpt = sorted(work.glob("*.ckpt"))[-1]
        dest = out_dir / f"{name}.ckpt"
        shutil.copyfile(ckpt, dest.with_name(dest.name + ".tmp"))
        os.replace(dest.with_name(dest.name + ".tmp"), dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    saved = torch.load(dest, map_location="cpu", weights_only=True)
    return {"source": "diffsynth 1.1.9 LightningModelForT2ILoRA (peft inject, on_save_checkpoint) + lightning "
                      f"Trainer(max_steps=2), {unet_class.__name__} of DiffSynth's own blocks",
            "rank": 4, "lora_alpha": 4, "learning_rate": 5e-2, "steps": int(trainer.global_step),
            "keys": {k: list(v.shape) for k, v in saved.items()}}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        import diffsynth  # noqa: F401
    except ImportError:
        log.error("diffsynth is not installed here: run this with .cache/reference/diffsynth first on PYTHONPATH (see the docstring)")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    keys = kolors_lora_keys()
    _write_json(OUT / "kolors_lora_keys.json", keys)
    log.info("kolors_lora_keys.json: %d tensors", len(keys["keys"]))
    names = unet_names()
    _write_json(OUT / "unet_names.json", names)
    log.info("unet_names.json: %s", {k: len(v) for k, v in names.items()})
    for name, unet_class, text_dim in (("tiny_sd_lora", TinySDUNet, 768), ("tiny_kolors_lora", TinyKolorsUNet, 4096)):
        info = tiny_lora(OUT, name, unet_class, text_dim)
        _write_json(OUT / f"{name}.json", info)
        log.info("%s.ckpt: %d tensors after %d steps", name, len(info["keys"]), info["steps"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
