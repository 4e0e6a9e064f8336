"""The denoising loss of one micro-batch on a diffusion model that follows ComfyUI's model interface (duck-typed:
``model_sampling.percent_to_sigma``, ``model_sampling.noise_scaling``, ``apply_model(x, sigma, **conds)`` returning
the denoised latent). Latents and text conditioning come from caches filled once per dataset."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .loop import Batch


def stack_conds(conds: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-image conditioning along the batch; cross-attention contexts of different token counts are
    repeated to their least common multiple (as ComfyUI does for prompts longer than 77 tokens)."""
    out = {}
    for key in conds[0]:
        parts = [c[key] for c in conds]
        if key == "c_crossattn" and len({p.shape[1] for p in parts}) > 1:
            length = math.lcm(*(p.shape[1] for p in parts))
            parts = [p.repeat(1, length // p.shape[1], 1) for p in parts]
        out[key] = torch.cat(parts, dim=0)
    return out


class DenoisingLoss:
    """MSE on the model's prediction target. The model returns the denoised latent ``d``; for noise-predicting
    (SD1.5, SDXL) and flow models ``(d - x0)² / sigma²`` equals the squared error of the predicted noise (or
    velocity), so one formula serves both without knowing the model's parameterisation."""

    def __init__(self, model, latents: Sequence[torch.Tensor], conds: Mapping[tuple[str, tuple[int, int]], Mapping],
                 sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu", min_percent: float = 1e-3,
                 transformer_options: Mapping | None = None):
        self.model = model
        self.latents = latents  # one [C, h, w] per image, in the model's latent space (process_latent_in applied)
        self.conds = conds  # (caption, (width, height)) -> {"c_crossattn": [1, T, D], "y": ...}
        self.sizes = sizes
        self.device = torch.device(device)
        self.min_percent = min_percent
        # the MODEL's own transformer options (attention override, patches), passed as ComfyUI's sampling passes
        # them, so a training step runs the same layers as the MODEL's sampling does; None: the model's defaults
        self.transformer_options = transformer_options

    def sample_sigmas(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Noise levels drawn uniformly over the model's schedule (in ComfyUI's percent of denoising)."""
        ms = self.model.model_sampling
        percents = torch.rand(n, generator=generator).clamp(self.min_percent, 1 - self.min_percent)
        return torch.tensor([float(ms.percent_to_sigma(float(p))) for p in percents], dtype=torch.float32)

    def __call__(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        x0 = torch.stack([self.latents[i] for i, _ in batch]).to(self.device, torch.float32)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        sigma = self.sample_sigmas(len(batch), generator).to(self.device)
        xt = self.model.model_sampling.noise_scaling(sigma, noise, x0, False)
        conds = stack_conds([self.conds[(caption, self.sizes[i])] for i, caption in batch])
        conds = {k: v.to(self.device) for k, v in conds.items()}
        if self.transformer_options is not None:
            conds["transformer_options"] = dict(self.transformer_options, sigmas=sigma, cond_or_uncond=[0])
        denoised = self.model.apply_model(xt, sigma, **conds).float()
        per_sample = ((denoised - x0) ** 2).mean(dim=tuple(range(1, x0.ndim))) / sigma ** 2
        return per_sample.mean()
