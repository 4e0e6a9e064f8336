"""One Train LoRA run's bookkeeping, apart from ComfyUI: what every saved file says about the run (metadata), the
checkpoints saved every N epochs and on cancel (each with its loop state beside it, ``<name>.training_state``:
optimizer, schedule position and noise generator, as safetensors tensors plus JSON), and the LoRA it continues from. The node (nodes/training_nodes.py)
adds only what needs ComfyUI: the models, the progress bar with the loss preview, the interrupt."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from ..common.files import write_safetensors
from ..common.paths import path_inside
from ..lora.files import UNET_METADATA_KEY, unet_metadata
from .dataset import LoraDataset
from .lora_network import LoraNetwork
from .loop import LoopState, TrainResult, TrainSettings
from .save import TrainedLora, build_metadata, read_lora, save_lora
from .trainer import TrainingRun

log = logging.getLogger("aesthete.training")
# beside a checkpoint: what resuming needs beyond the weights. Not a LoRA extension ComfyUI lists, so LoRA loaders
# never offer it
STATE_SUFFIX = ".training_state"


def state_path(lora_path: str | Path) -> Path:
    lora_path = Path(lora_path)
    return lora_path.with_name(lora_path.stem + STATE_SUFFIX)


def save_loop_state(state: LoopState, lora_path: str | Path) -> Path:
    tensors, metadata = state.to_tensors()
    return write_safetensors(state_path(lora_path), tensors, metadata)


def read_loop_state(lora_path: str | Path) -> LoopState | None:
    """The loop state saved beside ``lora_path``, or None when there is none (a LoRA from elsewhere, or older)."""
    path = state_path(lora_path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return LoopState.from_tensors(load_file(str(path)), metadata)
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a readable training state ({e}); delete it to resume from the weights "
                         "alone") from e


@dataclass
class TrainingJob:
    """A run of ``settings`` on ``dataset``: its checkpoints are ``<checkpoint_name>_<tag>.safetensors`` under
    ``loras_root`` (a name that leaves it is refused when the job is made, not after training)."""

    dataset: LoraDataset
    settings: TrainSettings
    targets: tuple[str, ...]
    base_model: str  # ComfyUI's model config name (SD15, SDXL, Kolors...)
    loras_root: Path
    checkpoint_name: str
    resumed_from: str = ""  # the LoRA file name continued from, "" for a new LoRA
    resume: dict = field(default_factory=dict)  # its tensors (ComfyUI format)
    resume_epochs: int = 0  # the epochs it was trained for already
    resume_state: LoopState | None = None  # the loop state saved beside it (None: the weights alone)
    saved: list[Path] = field(default_factory=list)
    keep_every_epoch: bool = False  # save each epoch's LoRA (validation outputs the best one, the others stay)
    unet_config: dict = field(default_factory=dict)  # ComfyUI's unet_config of the model: module names for copies

    def __post_init__(self) -> None:
        path_inside(self.loras_root, self.checkpoint_name, what="save name")

    def resume_from(self, name: str, path: str | Path) -> TrainingJob:
        """Continue the LoRA file ``path`` (listed as ``name``): its weights, its epochs counted on, and where a
        checkpoint of Train LoRA has one, its optimizer, schedule and noise (so the losses go on as if never
        stopped; a cancelled run goes on inside the epoch it stopped in)."""
        previous = read_lora(path)
        self.resumed_from, self.resume = name, previous.tensors
        self.resume_epochs = int(previous.metadata.get("aesthete.epochs", "0") or 0)
        self.resume_state = read_loop_state(path)
        if self.resume_state is None:
            log.info("Aesthete trainer: %s has no %s beside it; resuming its weights with a new optimizer", name,
                     STATE_SUFFIX)
        return self

    @property
    def last_epoch(self) -> int:
        return self.resume_epochs + self.settings.epochs

    def metadata(self, epochs: int, steps: int, network: LoraNetwork) -> dict[str, str]:
        return build_metadata(base_model=self.base_model, rank=network.rank, alpha=network.alpha, epochs=epochs,
                              steps=steps, dataset_size=len(self.dataset), settings=self.settings.as_dict(),
                              targets=self.targets, extra={"aesthete.dataset": self.dataset.folder.name,
                                                           "aesthete.resumed_from": self.resumed_from,
                                                           **({UNET_METADATA_KEY: unet_metadata(self.unet_config)}
                                                              if self.unet_config else {})})

    def trained_lora(self, network: LoraNetwork, epochs: int, steps: int) -> TrainedLora:
        return TrainedLora(network.comfy_state_dict(), self.metadata(epochs, steps, network))

    def save_checkpoint(self, network: LoraNetwork, epochs: int, steps: int, tag: str,
                        state: LoopState | None = None) -> Path:
        """The LoRA as ``<checkpoint_name>_<tag>.safetensors``, and ``state`` beside it (for resume_from)."""
        path = path_inside(self.loras_root, f"{self.checkpoint_name}_{tag}.safetensors", what="save name")
        if state is not None:
            save_loop_state(state, path)
        self.saved.append(save_lora(self.trained_lora(network, epochs, steps), path))
        return path

    def on_epoch_end(self, epoch: int, network: LoraNetwork, result: TrainResult) -> Path | None:
        """Save every ``save_every_n_epochs`` epochs, except the last (that one is the run's own output); every
        epoch, the last included, when ``keep_every_epoch`` (validation chooses among them). Returns the file."""
        every = self.settings.save_every_n_epochs
        if self.keep_every_epoch or (every and epoch % every == 0 and epoch < self.last_epoch):
            return self.save_checkpoint(network, epoch, result.steps, f"epoch{epoch:04d}",
                                        result.loop_state() if result.loop_state else None)
        return None

    def finish(self, run: TrainingRun) -> TrainedLora:
        """The run's LoRA. A cancelled run that trained at least one step is also saved as ``_interrupted``, so
        what was trained is kept (continue it with resume_from)."""
        result = run.result
        epochs = self.resume_epochs + result.epochs_done
        if result.cancelled and result.steps:
            path = self.save_checkpoint(run.network, epochs, result.steps, "interrupted",
                                        result.loop_state() if result.loop_state else None)
            log.warning("Aesthete trainer: cancelled after %d steps; kept what was trained in %s (continue with "
                        "resume_from)", result.steps, path)
        return self.trained_lora(run.network, epochs, result.steps)
