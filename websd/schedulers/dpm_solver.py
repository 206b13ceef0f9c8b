"""DPM-Solver++ multistep (order 2, midpoint), with diffusers' defaults: epsilon
prediction, final sigma zero, lower-order final step. The timestep spacing comes from the
config; an SD 1.x pipeline hands on its PNDM config's "leading" spacing.

In the data-prediction form, each step combines the current sample with the model's
estimates of the clean image x0 = (x - sigma * eps) / alpha at this step and the last,
so it is linear in (x_i, x_{i-1}, eps_i, eps_{i-1}).
"""

from __future__ import annotations

import numpy as np

from . import Step, alphas_cumprod, make_step


def _timesteps(config: dict, num_steps: int) -> np.ndarray:
    num_train, spacing = config["num_train_timesteps"], config.get("timestep_spacing", "linspace")
    if spacing == "linspace":
        return np.linspace(0, num_train - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = num_train // (num_steps + 1)
        return (np.arange(num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + config.get("steps_offset", 0)
    if spacing == "trailing":
        return np.arange(num_train, 0, -num_train / num_steps).round().astype(np.int64) - 1
    raise ValueError(f"dpm-solver: timestep_spacing {spacing!r} is not supported (linspace, leading, trailing)")


def plan(config: dict, num_steps: int) -> list[Step]:
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError("dpm-solver: only prediction_type 'epsilon' is supported")
    cumprod = alphas_cumprod(config)
    timesteps = _timesteps(config, num_steps)
    train_sigmas = np.sqrt((1 - cumprod) / cumprod)
    sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    sigmas = np.append(sigmas, 0.0).astype(np.float32).astype(np.float64)

    alphas = 1.0 / np.sqrt(sigmas**2 + 1.0)  # VP form: alpha_t, sigma_t from the EDM sigma
    stds = sigmas * alphas
    with np.errstate(divide="ignore"):
        lambdas = np.log(alphas) - np.log(stds)  # +inf at the final sigma 0

    steps = []
    for i, t in enumerate(timesteps):
        # x0 estimate at step i: a[i] * x_i + b[i] * eps_i
        a, b = 1.0 / alphas[i], -stds[i] / alphas[i]
        h = lambdas[i + 1] - lambdas[i]
        decay = np.expm1(-h) * alphas[i + 1]  # alpha_t (e^{-h} - 1); -alpha_t when h is inf
        # First order where there is no previous x0 yet, and at the end (final sigma zero).
        first_order = i == 0 or i == len(timesteps) - 1
        ratio = stds[i + 1] / stds[i]
        if first_order:
            # x_next = ratio * x_i - decay * x0_i
            steps.append(make_step(t, {0: ratio - decay * a}, {0: -decay * b}))
        else:
            # midpoint: x_next = ratio * x_i - decay * x0_i - 0.5 * decay * (x0_i - x0_{i-1}) / r
            r = (lambdas[i] - lambdas[i - 1]) / h
            a_prev, b_prev = 1.0 / alphas[i - 1], -stds[i - 1] / alphas[i - 1]
            now = -decay * (1.0 + 0.5 / r)
            before = 0.5 * decay / r
            steps.append(make_step(t, {0: ratio + now * a, 1: before * a_prev}, {0: now * b, 1: before * b_prev}))
    return steps
