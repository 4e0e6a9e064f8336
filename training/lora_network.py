"""LoRA layers injected into a torch model's Linear layers by forward hooks (the model's own weights stay untouched),
saved and loaded in ComfyUI's key format: ``diffusion_model.<module path>.lora_up.weight``, ``.lora_down.weight``
and ``.alpha`` (what ComfyUI's LoRA loader maps with no ``lora key not loaded``)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


# module-path suffixes of each choice; attention q, k, v and out is the recipe's (and DiffSynth's) default
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention q,k,v,out": ("to_q", "to_k", "to_v", "to_out.0"),
    "attention + feed-forward": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
    "all linear": ("",),
}
KEY_RE = re.compile(r"^(?P<path>.+)\.(?P<kind>lora_up\.weight|lora_down\.weight|alpha)$")


class LoraError(ValueError):
    """A LoRA does not fit the model (or is not a LoRA); the message says which keys and what to do."""


class LoraGradientError(RuntimeError):
    """LoRA layers received no gradient: something in the model cuts the backward pass (the message names them)."""


class TrainableLoraLayer(nn.Module):
    """``up(down(x)) * alpha / rank``, added to a Linear layer's output. ``up`` starts at zero so a new LoRA
    changes nothing until it is trained."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        # made uninitialised, then initialised from ``generator`` (no draw from the process's random generator) with
        # the draws nn.Linear's own initialisation made before: a seed gives the LoRA it gave in 0.2.0
        self.down = nn.utils.skip_init(nn.Linear, in_features, rank, bias=False)
        self.up = nn.utils.skip_init(nn.Linear, rank, out_features, bias=False)
        for weight in (self.down.weight, self.up.weight, self.down.weight):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.up.weight)
        self.rank, self.alpha = rank, float(alpha)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype))) * self.scale


def matches(path: str, suffixes: Iterable[str]) -> bool:
    return any(s == "" or path == s or path.endswith("." + s) for s in suffixes)


class LoraNetwork(nn.Module):
    """The LoRA layers of one model, by module path (relative to the model given to :meth:`attach`)."""

    def __init__(self, layers: dict[str, TrainableLoraLayer], prefix: str = "diffusion_model"):
        super().__init__()
        self.paths = list(layers)
        self.layers = nn.ModuleList(layers.values())
        self.prefix = prefix
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def create(cls, model: nn.Module, rank: int, alpha: float, targets: Iterable[str] = TARGET_PRESETS[
            "attention q,k,v,out"], prefix: str = "diffusion_model", seed: int = 0) -> LoraNetwork:
        """New LoRA layers for every Linear layer of ``model`` whose path ends with one of ``targets``."""
        if rank < 1:
            raise LoraError(f"rank {rank}: must be at least 1")
        targets = tuple(targets)
        found = {path: m for path, m in model.named_modules() if isinstance(m, nn.Linear) and matches(path, targets)}
        if not found:
            raise LoraError(f"no Linear layer of the model matches {targets}; pick other target layers")
        generator = torch.Generator().manual_seed(seed)  # its own: the process's CPU and CUDA generators stay as they are
        layers = {p: TrainableLoraLayer(m.in_features, m.out_features, min(rank, m.in_features, m.out_features), alpha,
                                        generator=generator)
                  for p, m in found.items()}
        return cls(layers, prefix)

    @classmethod
    def from_state_dict(cls, model: nn.Module, state: dict[str, torch.Tensor],
                        prefix: str = "diffusion_model") -> LoraNetwork:
        """The LoRA saved in ComfyUI's key format (see :meth:`comfy_state_dict`), fitted to ``model``."""
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            m = KEY_RE.match(key)
            if m is None or not m["path"].startswith(prefix + "."):
                raise LoraError(f"key {key!r} is not a {prefix}.<layer>.lora_up/lora_down/alpha key; resume only "
                                "from a LoRA trained by Aesthete (or saved in ComfyUI's lora_up/lora_down format)")
            groups.setdefault(m["path"][len(prefix) + 1:], {})[m["kind"]] = value
        modules = dict(model.named_modules())
        layers = {}
        for path, parts in groups.items():
            target = modules.get(path)
            if not isinstance(target, nn.Linear) or "lora_up.weight" not in parts or "lora_down.weight" not in parts:
                raise LoraError(f"{prefix}.{path}: no Linear layer of that path in this model, or a half LoRA pair; "
                                "resume with a LoRA trained on the same base architecture")
            down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
            if down.shape[1] != target.in_features or up.shape[0] != target.out_features or up.shape[1] != down.shape[0]:
                raise LoraError(f"{prefix}.{path}: shapes {tuple(down.shape)}/{tuple(up.shape)} do not fit "
                                f"Linear({target.in_features}, {target.out_features})")
            rank = down.shape[0]
            alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
            layer = TrainableLoraLayer(target.in_features, target.out_features, rank, alpha)
            with torch.no_grad():
                layer.down.weight.copy_(down)
                layer.up.weight.copy_(up)
            layers[path] = layer
        if not layers:
            raise LoraError("the LoRA holds no lora_up/lora_down pair")
        return cls(layers, prefix)

    @property
    def rank(self) -> int:
        return max(layer.rank for layer in self.layers)

    @property
    def alpha(self) -> float:
        return self.layers[0].alpha

    def attach(self, model: nn.Module, device: torch.device | str | None = None) -> None:
        """Add each LoRA layer's output to its Linear layer's output (forward hooks; :meth:`detach` undoes). The
        LoRA moves to ``device``, where the model computes (ComfyUI's load device: a model loaded in part has
        weights on the CPU); without one it stays where it is."""
        self.detach()
        modules = dict(model.named_modules())
        if device is not None:
            self.to(device)
        for path, layer in zip(self.paths, self.layers):
            self._hooks.append(modules[path].register_forward_hook(_adder(layer)))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def layers_without_gradient(self) -> list[str]:
        """The module paths of the LoRA layers none of whose weights holds a non-zero gradient (after a backward
        pass). A new LoRA's ``up`` starts at zero, so ``down``'s first gradient is zero; ``up``'s is not, unless the
        model cut the layer off the loss (an attention without a backward pass, for one)."""
        return [path for path, layer in zip(self.paths, self.layers)
                if not any(p.grad is not None and bool(p.grad.any()) for p in layer.parameters())]

    def comfy_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """``{prefix}.{path}.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``, detached, on the CPU."""
        out = {}
        for path, layer in zip(self.paths, self.layers):
            key = f"{self.prefix}.{path}"
            out[f"{key}.lora_up.weight"] = layer.up.weight.detach().to("cpu", dtype).contiguous().clone()
            out[f"{key}.lora_down.weight"] = layer.down.weight.detach().to("cpu", dtype).contiguous().clone()
            out[f"{key}.alpha"] = torch.tensor(layer.alpha, dtype=dtype)
        return out


def _adder(layer: TrainableLoraLayer) -> Callable:
    def hook(module, args, output):
        return output + layer(args[0]).to(output.dtype)
    return hook


def made_in_inference_mode(tensor: torch.Tensor) -> bool:
    """Whether autograd cannot save ``tensor`` for the backward pass: it was made under ``torch.inference_mode``.
    Such a tensor moved or converted outside inference mode (``Module.to()``, what ComfyUI's model management does
    when it loads a model onto the GPU) no longer says so through ``is_inference()`` but still has no version
    counter, which is what backward needs; so the version counter is what is asked."""
    if tensor.is_inference():
        return True
    try:
        tensor._version  # noqa: B018 - raises for a tensor without a version counter
    except RuntimeError:
        return True
    return False


def release_inference_tensors(model: nn.Module) -> int:
    """Replace parameters and buffers made under ``torch.inference_mode`` (ComfyUI loads and patches models that
    way), or moved since (see :func:`made_in_inference_mode`), by normal copies of the same values: autograd cannot
    save them for the backward pass. Returns how many were replaced."""
    replaced = 0
    with torch.inference_mode(False), torch.no_grad():
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and made_in_inference_mode(p):
                    module._parameters[name] = nn.Parameter(p.clone(), requires_grad=False)
                    replaced += 1
            for name, b in list(module._buffers.items()):
                if b is not None and made_in_inference_mode(b):
                    module._buffers[name] = b.clone()
                    replaced += 1
    return replaced


def checkpoint_blocks(root: nn.Module) -> Callable[[], None]:
    """Gradient checkpointing on the outermost computing blocks of ``root`` (containers are walked through, as
    ComfyUI's trainer does): activations are recomputed in the backward pass instead of kept. Returns the undo."""
    blocks: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, (nn.ModuleList, nn.Sequential, nn.ModuleDict)):
                walk(child)
            elif any(True for _ in child.parameters()):
                blocks.append(child)

    walk(root)
    for block in blocks:
        original = block.forward

        def forward(*args, _original=original, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_original, *args, use_reentrant=False, **kwargs)
            return _original(*args, **kwargs)

        block.forward = forward

    def undo() -> None:
        for block in blocks:
            if "forward" in block.__dict__:
                del block.forward

    return undo
