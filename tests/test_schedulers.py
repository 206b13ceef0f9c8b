"""Each scheduler's plan against diffusers' own scheduler, step by step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

from websd import schedulers

SD15 = {  # the scheduler section of SD 1.5's model_index, as PNDMScheduler fills it in
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
CLASSES = {"dpm-solver": DPMSolverMultistepScheduler, "pndm": PNDMScheduler}


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 14, 15, 20, 50])
def test_plan_matches_diffusers(name: str, spacing: str, steps: int) -> None:
    config = dict(PNDMScheduler.from_config({**SD15, "timestep_spacing": spacing}).config)
    reference = CLASSES[name].from_config(config)
    reference.set_timesteps(steps)
    plan = schedulers.plan(name, config, steps)
    assert [s.timestep for s in plan] == reference.timesteps.tolist()

    generator = torch.Generator().manual_seed(steps)
    x = torch.randn(1, 4, 6, 10, generator=generator)
    samples, eps = [x.numpy()], []
    for step in plan:
        noise = torch.randn(x.shape, generator=generator)
        x = reference.step(noise, step.timestep, x).prev_sample
        eps = [noise.numpy(), *eps][: schedulers.HISTORY]
        samples = [schedulers.apply_step(step, samples, eps), *samples][: schedulers.HISTORY]
        np.testing.assert_allclose(samples[0], x.numpy(), rtol=0, atol=1e-5 * float(x.abs().max()))


def test_unknown_scheduler_is_named() -> None:
    with pytest.raises(ValueError, match="allowed: dpm-solver, pndm"):
        schedulers.plan("euler", SD15, 20)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_most_steps_is_what_diffusers_can_run(name: str, spacing: str) -> None:
    """The bound the CLI and the page give: the most steps with valid, finite coefficients; one
    more would repeat a timestep (NaN in diffusers too) or run past the training schedule."""
    config = dict(PNDMScheduler.from_config({**SD15, "timestep_spacing": spacing}).config)
    most = schedulers.max_steps(name, config)
    plan = schedulers.plan(name, config, most)
    assert all(np.isfinite(s.sample_coeffs).all() and np.isfinite(s.eps_coeffs).all() for s in plan)
    reference = CLASSES[name].from_config(config)
    reference.set_timesteps(most)
    assert [s.timestep for s in plan] == reference.timesteps.tolist()
    with pytest.raises(ValueError, match=f"steps must be from 1 to {most} for {name}, got {most + 1}"):
        schedulers.plan(name, config, most + 1)
    with pytest.raises(ValueError, match="got 0"):
        schedulers.plan(name, config, 0)


@pytest.mark.parametrize("name, steps, progress", [
    ("dpm-solver", 4, [1, 2, 3, 4]),
    ("pndm", 4, [0, 1, 2, 3, 4]),  # PNDM's warm-up evaluation counts no step, as diffusers' bar
])
def test_progress_counts_the_steps_asked_for(name: str, steps: int, progress: list[int]) -> None:
    config = dict(PNDMScheduler.from_config(SD15).config)
    assert [s.progress for s in schedulers.plan(name, config, steps)] == progress
