"""PNDM as diffusers runs it for SD 1.x: `skip_prk_steps`, so pseudo linear multistep (PLMS)
throughout, with the configured timesteps plus one repeated timestep for the warm-up.

PLMS is Adams-Bashforth on the noise predictions: the effective eps of a step is a fixed
combination of up to four stored predictions, and the sample update is linear in it.
The warm-up quirk: step 1 re-evaluates the model at the same time, averages with step 0's
prediction, restarts from step 0's sample, and is itself never stored. Hence the plan
reaches back up to four steps (HISTORY = 5).
"""

from __future__ import annotations

import numpy as np

from . import Step, alphas_cumprod, make_step

# Adams-Bashforth weights by how many predictions are stored, newest first.
_ADAMS_BASHFORTH = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


def _timesteps(config: dict, num_steps: int) -> np.ndarray:
    num_train, spacing = config["num_train_timesteps"], config.get("timestep_spacing", "leading")
    if spacing == "linspace":
        base = np.linspace(0, num_train - 1, num_steps).round().astype(np.int64)
    elif spacing == "leading":
        base = np.arange(num_steps) * (num_train // num_steps) + config.get("steps_offset", 0)
    elif spacing == "trailing":
        base = np.round(np.arange(num_train, 0, -num_train / num_steps))[::-1].astype(np.int64) - 1
    else:
        raise ValueError(f"pndm: timestep_spacing {spacing!r} is not supported (linspace, leading, trailing)")
    return np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]


def plan(config: dict, num_steps: int) -> list[Step]:
    if not config.get("skip_prk_steps", False):
        raise ValueError("pndm: only skip_prk_steps=True (the SD 1.x setting) is supported")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError("pndm: only prediction_type 'epsilon' is supported")
    cumprod = alphas_cumprod(config).astype(np.float64)
    final_cumprod = 1.0 if config.get("set_alpha_to_one", True) else cumprod[0]
    ratio = config["num_train_timesteps"] // num_steps

    timesteps = _timesteps(config, num_steps)
    if timesteps.max() >= len(cumprod):  # too many steps: the offset runs past the training schedule
        raise ValueError(f"pndm: {num_steps} steps reach timestep {timesteps.max()} of {len(cumprod)}")
    steps, stored = [], []  # stored: indices of the steps whose predictions PLMS keeps
    for i, t in enumerate(timesteps):
        if i == 1:  # warm-up: average with step 0, restart from step 0's sample, one step back in time
            t_from, t_to, sample_offset = t + ratio, t, 1
            eps = {0: 0.5, 1: 0.5}
        else:
            t_from, t_to, sample_offset = t, t - ratio, 0
            stored = (stored + [i])[-4:]
            weights = _ADAMS_BASHFORTH[len(stored)]
            eps = {i - j: w for j, w in zip(reversed(stored), weights)}
        a_t = cumprod[t_from]
        a_prev = cumprod[t_to] if t_to >= 0 else final_cumprod
        # DDIM-style update (PNDM paper, eq. 9) in diffusers' form.
        sample_coeff = np.sqrt(a_prev / a_t)
        eps_coeff = -(a_prev - a_t) / (a_t * np.sqrt(1 - a_prev) + np.sqrt(a_t * (1 - a_t) * a_prev))
        steps.append(make_step(t, {sample_offset: sample_coeff}, {k: eps_coeff * w for k, w in eps.items()}))
    return steps
