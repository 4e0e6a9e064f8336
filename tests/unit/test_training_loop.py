"""The training loop (accumulation, schedule, NaN stop, cancel, epochs) and a whole run of the trainer on a toy
denoiser that follows ComfyUI's model interface (apply_model returns the denoised latent). No ComfyUI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aesthete.training.captions import CaptionRecipe
from aesthete.training.dataset import load_dataset
from aesthete.training.loop import NonFiniteLossError, TrainSettings, lr_factor, train
from aesthete.training.objective import DenoisingLoss, stack_conds
from aesthete.training.trainer import RunHooks, RunSpec, build_cache, run_training
from devkit.training_data import write_pattern_folder


class ToySampling:
    """An EPS schedule like ComfyUI's (log-uniform sigmas between sigma_min and sigma_max)."""

    sigma_min, sigma_max = 0.05, 5.0

    def percent_to_sigma(self, percent: float) -> float:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return math.exp(lo + (1.0 - percent) * (hi - lo))

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        return latent + noise * sigma.view(-1, *([1] * (noise.ndim - 1)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, ctx: int):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(ctx, dim), nn.Linear(ctx, dim)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x, context):
        return self.to_out(F.scaled_dot_product_attention(self.to_q(x), self.to_k(context), self.to_v(context)))


class ToyDenoiser(nn.Module):
    def __init__(self, channels: int = 4, dim: int = 32, ctx: int = 8):
        super().__init__()
        self.proj_in, self.proj_out = nn.Linear(channels + 1, dim), nn.Linear(dim, channels)
        self.attn1, self.attn2 = CrossAttention(dim, dim), CrossAttention(dim, ctx)

    def forward(self, x, sigma, context):
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        t = sigma.log().view(b, 1, 1).expand(b, h * w, 1)
        z = self.proj_in(torch.cat([tokens, t], -1))
        z = z + self.attn1(z, z)
        z = z + self.attn2(z, context)
        return self.proj_out(z).transpose(1, 2).reshape(b, c, h, w)


class ToyModel(nn.Module):
    """ComfyUI's BaseModel interface: ``apply_model(x, sigma, c_crossattn=...)`` returns the denoised latent."""

    def __init__(self):
        super().__init__()
        self.model_sampling = ToySampling()
        self.diffusion_model = ToyDenoiser()

    def apply_model(self, x, sigma, c_crossattn=None):
        s = sigma.view(-1, 1, 1, 1)
        return x - self.diffusion_model(x / (s ** 2 + 1) ** 0.5, sigma, c_crossattn) * s


def encode_images(pixels: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE: 8x downscale to 4 channels."""
    x = pixels.permute(0, 3, 1, 2)
    x = F.avg_pool2d(x, 8)
    return torch.cat([x, x.mean(1, keepdim=True)], 1) * 2 - 1


def encode_caption(caption: str, size) -> dict:
    g = torch.Generator().manual_seed(sum(map(ord, caption)))
    return {"c_crossattn": torch.randn(1, 3, 8, generator=g)}


def quadratic_params():
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(3))]


def test_loop_accumulation_equals_one_big_batch():
    target = {0: torch.tensor([1.0, 2.0, 3.0]), 1: torch.tensor([-1.0, 0.0, 1.0])}
    results = []
    for plan, accum in (([[(0, ""), (1, "")]], 1), ([[(0, "")], [(1, "")]], 2)):
        p = quadratic_params()

        def loss(batch, gen, p=p):
            return torch.stack([(p[0] - target[i]).square().mean() for i, _ in batch]).mean()

        res = train(p, loss, lambda e, plan=plan: plan, TrainSettings(epochs=3, grad_accumulation=accum,
                                                                      learning_rate=0.1, optimizer="SGD"))
        assert res.steps == 3
        results.append(p[0].detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_lr_schedule_warmup_and_decay():
    assert [lr_factor(s, 10, "constant", 2) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert lr_factor(2, 10, "linear", 2) == 1.0 and lr_factor(9, 10, "linear", 2) == pytest.approx(1 / 8)
    assert lr_factor(6, 10, "cosine", 2) == pytest.approx(0.5)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_weights():
    p = quadratic_params()
    calls = {"n": 0}
    snapshot = {}

    def loss(batch, gen):
        calls["n"] += 1
        if calls["n"] == 3:
            snapshot["p"] = p[0].detach().clone()
            return p[0].sum() * float("nan")
        return p[0].square().mean()

    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3 of 5 .*Lower the learning rate"):
        train(p, loss, lambda e: [[(0, "")]], TrainSettings(epochs=5, learning_rate=0.1))
    assert torch.equal(p[0].detach(), snapshot["p"])


def test_cancel_returns_what_was_trained_and_epochs_are_reported():
    p = quadratic_params()
    start = p[0].detach().clone()
    steps, epochs = [], []
    res = train(p, lambda b, g: p[0].square().mean(), lambda e: [[(0, "")], [(1, "")]],
                TrainSettings(epochs=4, learning_rate=0.1), should_stop=lambda: len(steps) >= 5,
                on_step=lambda s, t, v: steps.append((s, t)), on_epoch_end=lambda e, r: epochs.append(e),
                start_epoch=3)
    assert res.cancelled and res.steps == 5 and steps[-1] == (5, 8)
    assert epochs == [4, 5] and res.epochs_done == 2
    assert not torch.equal(p[0].detach(), start)


class _Interrupted(Exception):
    """Stands for ComfyUI's InterruptProcessingException, which its layers raise mid-forward on a cancel."""


def test_an_interrupt_raised_inside_a_step_is_a_cancel_that_keeps_the_finished_steps():
    p = quadratic_params()
    calls = []

    def loss(batch, generator):
        calls.append(batch)
        if len(calls) == 4:  # inside the 4th step's forward
            raise _Interrupted()
        return p[0].square().mean()

    before = []
    res = train(p, loss, lambda e: [[(0, "")], [(1, "")]], TrainSettings(epochs=3, learning_rate=0.1),
                on_step=lambda s, t, v: before.append(p[0].detach().clone()), stop_exceptions=(_Interrupted,))
    assert res.cancelled and res.steps == 3 and isinstance(res.stop_error, _Interrupted)
    assert torch.equal(p[0].detach(), before[-1])  # the interrupted step changed nothing
    assert res.loop_state is not None and res.loop_state().epoch_steps == 1  # resumable after step 3
    with pytest.raises(_Interrupted):  # not listed: an error as before
        train(quadratic_params(), lambda b, g: (_ for _ in ()).throw(_Interrupted()), lambda e: [[(0, "")]],
              TrainSettings(epochs=1))


def test_stack_conds_repeats_long_prompts_to_a_common_length():
    a, b = torch.ones(1, 77, 4), torch.zeros(1, 154, 4)
    out = stack_conds([{"c_crossattn": a, "y": torch.ones(1, 2)}, {"c_crossattn": b, "y": torch.zeros(1, 2)}])
    assert out["c_crossattn"].shape == (2, 154, 4) and out["y"].shape == (2, 2)


def held_out_loss(model, cache, dataset, network=None, draws: int = 16) -> float:
    """The loss on fixed noise and noise levels (the same draws for every call), so runs compare without luck."""
    loss = DenoisingLoss(model, cache.latents, cache.conds, [img.size for img in dataset.images])
    batch = cache.plans[min(cache.plans)][0]
    gen = torch.Generator().manual_seed(1234)
    if network is not None:
        network.attach(model.diffusion_model)
    try:
        with torch.no_grad():
            return sum(float(loss(batch, gen)) for _ in range(draws)) / draws
    finally:
        if network is not None:
            network.detach()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16 autocast"])
def test_trainer_learns_a_pattern_on_a_toy_denoiser(tmp_path, precision):
    write_pattern_folder(tmp_path, count=4)
    dataset = load_dataset(tmp_path, resolution=64, crop_mode="center crop", recipe=CaptionRecipe("ptn"))
    torch.manual_seed(0)
    model = ToyModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=60, batch_size=4, learning_rate=5e-2, seed=0, precision=precision)
    cache = build_cache(dataset, settings, encode_images, encode_caption)
    assert len(cache.latents) == 4 and len(cache.conds) == 4  # one encoding per distinct caption and size
    untrained = held_out_loss(model, cache, dataset)
    run = run_training(model, dataset, cache, RunSpec(settings, rank=4, alpha=4.0))
    assert run.result.steps == 60 and len(run.result.losses) == 60
    trained = held_out_loss(model, cache, dataset, run.network)
    assert trained < 0.6 * untrained, f"held-out loss {untrained:.3f} -> {trained:.3f}"
    for k, v in model.state_dict().items():  # the base model is untouched, the LoRA is detached
        assert torch.equal(v, before[k]), k
    assert not model.diffusion_model.attn1.to_q._forward_hooks
    assert held_out_loss(model, cache, dataset) == pytest.approx(untrained)


def test_resume_continues_epochs_and_weights(tmp_path):
    write_pattern_folder(tmp_path, count=2)
    dataset = load_dataset(tmp_path, resolution=64)
    torch.manual_seed(0)
    model = ToyModel()
    settings = TrainSettings(epochs=2, batch_size=2, learning_rate=1e-2)
    first = run_training(model, dataset, build_cache(dataset, settings, encode_images, encode_caption),
                         RunSpec(settings, rank=2, alpha=2.0))
    saved = first.network.comfy_state_dict()
    ends = []
    resumed = run_training(model, dataset, build_cache(dataset, settings, encode_images, encode_caption, start_epoch=2),
                           RunSpec(settings, resume=saved,
                                   hooks=RunHooks(on_epoch_end=lambda e, n, r: ends.append(e))))
    assert ends == [3, 4] and resumed.start_epoch == 2 and resumed.network.rank == 2
    after = resumed.network.comfy_state_dict()
    assert set(after) == set(saved) and any(not torch.equal(after[k], saved[k]) for k in saved)


def test_encodings_are_kept_on_the_dataset_for_the_same_encoders(tmp_path):
    write_pattern_folder(tmp_path, count=3)
    dataset = load_dataset(tmp_path, resolution=64, recipe=CaptionRecipe("ptn", shuffle_tags=True))
    calls = {"images": 0, "captions": 0}

    def count_images(pixels):
        calls["images"] += len(pixels)
        return encode_images(pixels)

    def count_captions(caption, size):
        calls["captions"] += 1
        return encode_caption(caption, size)

    vae, clip = ToyModel(), ToyModel()  # stand-ins for the encoder objects the node passes
    settings = TrainSettings(epochs=3)
    first = build_cache(dataset, settings, count_images, count_captions, encoders=(vae, clip))
    assert calls["images"] == 3 and calls["captions"] == len(first.conds) > 3  # shuffled captions differ by epoch
    before = dict(calls)
    again = build_cache(dataset, settings, count_images, count_captions, encoders=(vae, clip))
    assert calls == before and again.latents is first.latents
    build_cache(dataset, settings, count_images, count_captions, encoders=(ToyModel(), clip))
    assert calls["images"] == 6  # another VAE: encoded again


def _job_run(tmp_path, dataset, settings, *, resume_file=None, stop_after=None):
    """A Train LoRA run as the node does it (TrainingJob + run_training) on a fresh toy model of the same seed."""
    from aesthete.training.job import TrainingJob

    torch.manual_seed(0)
    model = ToyModel()
    job = TrainingJob(dataset, settings, ("to_q", "to_k", "to_v", "to_out.0"), "toy", tmp_path / "loras", "run")
    if resume_file is not None:
        job.resume_from(resume_file.name, resume_file)
    cache = build_cache(dataset, settings, encode_images, encode_caption, start_epoch=job.resume_epochs)
    done = []
    hooks = RunHooks(on_step=lambda s, t, v: done.append(s), on_epoch_end=job.on_epoch_end,
                     should_stop=(lambda: len(done) >= stop_after) if stop_after else None)
    run = run_training(model, dataset, cache, RunSpec(settings, rank=2, alpha=2.0, resume=job.resume or None,
                                                      resume_state=job.resume_state, hooks=hooks))
    job.finish(run)
    return run, job


@pytest.mark.parametrize("stop", ["epoch checkpoint", "cancel mid-epoch"])
def test_resumed_run_follows_the_uninterrupted_loss_curve(tmp_path, stop):
    """AdamW with warm-up and a cosine schedule, accumulation 2: a run stopped (at an epoch checkpoint, or cancelled
    inside an epoch) and resumed from its saved file gives the same losses and weights as one run."""
    write_pattern_folder(tmp_path / "data", count=4)
    dataset = load_dataset(tmp_path / "data", resolution=64, recipe=CaptionRecipe("ptn", shuffle_tags=True))
    common = dict(batch_size=1, grad_accumulation=2, learning_rate=2e-2, optimizer="AdamW", schedule="cosine",
                  warmup_steps=2, seed=3)
    whole, _ = _job_run(tmp_path / "whole", dataset, TrainSettings(epochs=4, **common))
    if stop == "epoch checkpoint":
        first, job = _job_run(tmp_path / "split", dataset, TrainSettings(epochs=4, save_every_n_epochs=2, **common),
                              stop_after=5)  # cancelled in epoch 3: the epoch-2 checkpoint is what resumes
        kept, remaining = 4, 2
        resume_file = job.saved[0]
        assert resume_file.name == "run_epoch0002.safetensors"
    else:
        first, job = _job_run(tmp_path / "split", dataset, TrainSettings(epochs=4, **common), stop_after=3)
        kept, remaining = 3, 3  # 1.5 epochs done: epoch 2 goes on from its second step
        resume_file = job.saved[-1]
        assert resume_file.name == "run_interrupted.safetensors" and first.result.cancelled
    assert resume_file.with_name(resume_file.stem + ".training_state").is_file()
    second, _ = _job_run(tmp_path / "split", dataset, TrainSettings(epochs=remaining, **common),
                         resume_file=resume_file)
    assert second.result.steps == 8 - kept
    torch.testing.assert_close(first.result.losses[:kept] + second.result.losses, whole.result.losses,
                               rtol=1e-5, atol=1e-6)
    ours, theirs = second.network.comfy_state_dict(), whole.network.comfy_state_dict()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_loop_state_round_trips_through_safetensors_without_pickle(tmp_path):
    from safetensors.torch import load_file

    from aesthete.training.job import read_loop_state, save_loop_state
    from aesthete.training.loop import LoopState

    p = quadratic_params()
    res = train(p, lambda b, g: (p[0] * torch.randn(3, generator=g)).square().mean(), lambda e: [[(0, "")]] * 3,
                TrainSettings(epochs=1, learning_rate=0.1))
    state = res.loop_state()
    path = save_loop_state(state, tmp_path / "x.safetensors")
    assert path.name == "x.training_state" and set(load_file(str(path))) >= {"generator", "optimizer.0.exp_avg"}
    back = read_loop_state(tmp_path / "x.safetensors")
    assert isinstance(back, LoopState) and back.steps_done == 3 and back.epoch == 1 and back.epoch_steps == 0
    assert torch.equal(back.generator, state.generator)
    torch.testing.assert_close(back.optimizer["state"][0]["exp_avg_sq"], state.optimizer["state"][0]["exp_avg_sq"])


class FakeClock:
    """Each pass of the model takes the next of ``durations`` seconds."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, list(durations)

    def __call__(self) -> float:
        return self.now

    def run_pass(self) -> None:
        self.now += self.durations.pop(0)


def convolutions() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 3, padding=1))


def is_channels_last(m: torch.nn.Module) -> bool:
    return m[0].weight.is_contiguous(memory_format=torch.channels_last) and not m[0].weight.is_contiguous()


@pytest.mark.parametrize(("usual_s", "channels_last_s", "kept"), [(1.0, 0.8, True), (1.0, 1.2, False)])
def test_the_faster_convolution_layout_is_measured_and_kept(usual_s, channels_last_s, kept):
    """A warm-up pass, one timed in the usual layout, one channels-last; the faster layout stays. The outputs are
    the same numbers in either layout, validation runs in the usual layout, and the end puts it back."""
    from aesthete.training.trainer import ConvLayout

    m, x = convolutions(), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        before = m(x)
    clock = FakeClock([5.0, usual_s, channels_last_s])
    layouts = []

    def one_pass():
        layouts.append(is_channels_last(m))
        clock.run_pass()

    layout = ConvLayout(m, "cpu", clock=clock)
    layout.choose(one_pass)
    assert layouts == [False, False, True]
    assert is_channels_last(m) == kept
    with layout.usual_while():
        assert not is_channels_last(m)
    assert is_channels_last(m) == kept
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-6)
    layout.usual()
    assert not is_channels_last(m)


def test_the_convolution_layout_is_left_alone_off_the_cpu():
    from aesthete.training.trainer import ConvLayout

    m, passes = convolutions(), []
    ConvLayout(m, "cuda", clock=FakeClock([])).choose(lambda: passes.append(1))
    assert not is_channels_last(m) and passes == []


def test_the_layout_is_chosen_once_per_model_so_a_second_run_trains_the_same_numbers():
    """The choice is kept by the caller (the node keeps it on the loaded model) and given to the next run, which then
    measures nothing; the trainer keeps no map of models of its own."""
    from aesthete.training.trainer import ConvLayout

    m, passes = convolutions(), []
    first = ConvLayout(m, "cpu", clock=FakeClock([5.0, 1.0, 0.5]))
    first.choose(lambda: first.clock.run_pass())
    first.usual()
    assert first.chosen is True
    ConvLayout(m, "cpu", clock=FakeClock([]), chosen=first.chosen).choose(lambda: passes.append(1))
    assert passes == [] and is_channels_last(m)
