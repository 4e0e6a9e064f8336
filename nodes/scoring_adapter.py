"""ComfyUI's model management for scorers: the AESTHETIC_MODEL values the loaders give (a scorer or a judge,
each in a ModelPatcher) and the device and dtype choices of the loaders. The scoring itself is ``aesthete.scoring``'s.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import torch

from ..scoring import judge
from ..scoring.predictor import resolve_dtype


class _PatcherModel(torch.nn.Module):
    """Holds a scorer's modules for ModelPatcher, which sets ``.device`` (a read-only property on HF models)."""

    def __init__(self, modules: list[torch.nn.Module], device: torch.device):
        super().__init__()
        if len(modules) == 1:
            self.model = modules[0]  # the LAION predictor's layout, as before
        else:
            self.parts = torch.nn.ModuleList(modules)
        self.device = device


class LoadedScorer:
    """The AESTHETIC_MODEL value for one scorer (a LAION predictor or a catalog scorer): the scorer, wrapped in the
    ModelPatcher through which ComfyUI's model management loads it to ``load_device`` before each use and offloads
    it when memory is needed. It is the only owner of the scorer in the server: when ComfyUI drops the loader's
    output (POST /free, another workflow), the weights go."""

    def __init__(self, scorer, load_device: torch.device):
        self.scorer = scorer
        self.load_device = load_device
        holder = _PatcherModel(scorer.modules(), scorer.device)
        self.patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device,
                                                        offload_device=scorer.device,
                                                        size=comfy.model_management.module_size(holder))

    @property
    def predictor(self):
        return self.scorer

    @property
    def name(self) -> str:
        return judge.scorer_id(self.scorer)

    @property
    def prompt_aware(self) -> bool:
        return judge.is_prompt_aware(self.scorer)

    @property
    def patchers(self) -> list:
        return [self.patcher]

    def ready(self):
        """Let ComfyUI's memory management move the model to its device (freeing others if it must)."""
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.scorer




class LoadedJudge:
    """The AESTHETIC_MODEL value of the Judge node: loaded scorers with weights. ``ready()`` loads every scorer's
    ModelPatcher together and gives a ``scoring.judge.Judge``; each scorer stays owned by its loader's output."""

    def __init__(self, entries: list[tuple[LoadedScorer, float]]):
        devices = {str(s.load_device) for s, _ in entries}
        if len(devices) > 1:
            where = ", ".join(f"{s.name} on {s.load_device}" for s, _ in entries)
            raise judge.JudgeError(f"the judge's scorers load on different devices ({where}); choose the same device "
                                   f"on their loaders")
        self.entries = entries
        self.load_device = entries[0][0].load_device
        self.judge = judge.Judge([(s.scorer, w) for s, w in entries])  # checks weights and duplicates now

    @property
    def name(self) -> str:
        return self.judge.name

    @property
    def prompt_aware(self) -> bool:
        return self.judge.prompt_aware

    @property
    def patchers(self) -> list:
        return [p for s, _ in self.entries for p in s.patchers]

    def ready(self) -> judge.Judge:
        comfy.model_management.load_models_gpu(self.patchers, force_full_load=True)
        return self.judge


def predictor_device(choice: str) -> torch.device:
    """The loader's device choice as ComfyUI names the device: "auto" and "cuda" are ComfyUI's GPU (``cuda:0``, the
    device its memory manager frees for and around; a bare ``cuda`` is another name it does not recognise)."""
    if choice == "cpu":
        return torch.device("cpu")
    gpu = comfy.model_management.get_torch_device()
    if choice == "cuda" and gpu.type != "cuda":
        raise ValueError("device cuda: ComfyUI runs on no CUDA GPU here; choose auto or cpu")
    return gpu


def predictor_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The loader's dtype choice; "auto" asks ComfyUI whether fp16 suits the device (not on the CPU, nor on GPUs
    ComfyUI keeps in fp32), else fp32."""
    if choice != "auto":
        return resolve_dtype(choice, device)
    if device.type != "cpu" and comfy.model_management.should_use_fp16(device, prioritize_performance=False):
        return torch.float16
    return torch.float32
