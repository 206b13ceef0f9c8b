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
