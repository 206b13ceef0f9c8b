"""Schedulers as plans: the whole denoising arithmetic, computed once in Python.

Every scheduler here is a linear multistep method: each step's new sample is a linear
combination of the last few samples and the last few (guided) noise predictions. So a
scheduler is fully described by, per step, the timestep to feed the UNet and two short
coefficient vectors. The native runner and the browser both execute the same plan with
one multiply-add (`apply_step`), so the arithmetic lives in one place: the files of this
package, one per scheduler, each checked step by step against diffusers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

# How many past samples / noise predictions a step may combine (PNDM's 4th-order
# Adams-Bashforth step reaches back over the warm-up step it skips: 5 predictions).
HISTORY = 5


@dataclass(frozen=True)
class Step:
    """x_next = sum(sample_coeffs[k] * x[i-k]) + sum(eps_coeffs[k] * eps[i-k]), k = 0 is now.

    `progress`: how many of the steps asked for are done once this one is: a plan can have more
    UNet evaluations than steps (PNDM's warm-up), and progress is counted as diffusers' progress
    bar counts it, so every front end shows "step k of n" alike."""

    timestep: int
    sample_coeffs: tuple[float, ...]
    eps_coeffs: tuple[float, ...]
    progress: int = 0

    def to_json(self) -> dict:
        return {"timestep": self.timestep, "sample": list(self.sample_coeffs), "eps": list(self.eps_coeffs), "progress": self.progress}


def make_step(timestep: int, sample: dict[int, float], eps: dict[int, float]) -> Step:
    """A Step from sparse {history offset: coefficient} maps."""

    def dense(coeffs: dict[int, float]) -> tuple[float, ...]:
        assert max(coeffs, default=0) < HISTORY, coeffs
        return tuple(float(coeffs.get(k, 0.0)) for k in range(HISTORY))

    return Step(int(timestep), dense(sample), dense(eps))


def alphas_cumprod(config: dict) -> np.ndarray:
    """The training noise schedule, in float32 as diffusers keeps it."""
    n = config["num_train_timesteps"]
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float32)
    elif config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n, dtype=np.float32) ** 2
    elif config["beta_schedule"] == "linear":
        betas = np.linspace(config["beta_start"], config["beta_end"], n, dtype=np.float32)
    else:
        raise ValueError(f"scheduler beta_schedule {config['beta_schedule']!r} is not supported (scaled_linear, linear)")
    return np.cumprod(1.0 - betas, dtype=np.float32)


def apply_step(step: Step, samples: list[np.ndarray], eps: list[np.ndarray]) -> np.ndarray:
    """One step of a plan; samples[0] and eps[0] are the newest."""
    terms = [c * x for c, x in zip(step.sample_coeffs, samples) if c] + [c * e for c, e in zip(step.eps_coeffs, eps) if c]
    return np.sum(terms, axis=0, dtype=np.float32)


def denoise(plan: list[Step], latents: np.ndarray, predict_noise: Callable, on_step: Callable | None = None) -> np.ndarray:
    """Run a whole plan from `latents`; `predict_noise(x, timestep)` gives the (guided) noise
    prediction; `on_step(done, total)` follows each step's progress. Returns the final latents.
    (web/src/scheduler.js runs the same loop in the page.)"""
    samples, eps = [latents], []
    for step in plan:
        eps = [predict_noise(samples[0], step.timestep), *eps][:HISTORY]
        samples = [apply_step(step, samples, eps), *samples][:HISTORY]
        if on_step is not None and step.progress:
            on_step(step.progress, plan[-1].progress)
    return samples[0]


def _planners() -> dict[str, Callable[[dict, int], list[Step]]]:
    from . import dpm_solver, pndm

    return {"dpm-solver": dpm_solver.plan, "pndm": pndm.plan}


def _plans(name: str, config: dict, num_steps: int) -> bool:
    """Whether the scheduler can plan this many steps: its timesteps exist and every
    coefficient is finite (too many steps for the training schedule repeat a timestep)."""
    try:
        with np.errstate(all="ignore"):
            steps = _planners()[name](config, num_steps)
    except ValueError:
        return False
    return all(np.isfinite(s.sample_coeffs).all() and np.isfinite(s.eps_coeffs).all() for s in steps)


@functools.lru_cache(maxsize=64)
def _max_steps(name: str, config_json: str) -> int:
    config = json.loads(config_json)
    return next(n for n in range(config["num_train_timesteps"], 0, -1) if _plans(name, config, n))


def max_steps(name: str, config: dict) -> int:
    """The most steps scheduler `name` can plan for this diffusers scheduler config."""
    if name not in _planners():
        raise ValueError(f"unknown scheduler {name!r} (allowed: {', '.join(_planners())})")
    return _max_steps(name, json.dumps(config, sort_keys=True))


def plan(name: str, config: dict, num_steps: int) -> list[Step]:
    """The steps of scheduler `name` (dpm-solver | pndm) for a diffusers scheduler config."""
    most = max_steps(name, config)
    if not 1 <= num_steps <= most:
        raise ValueError(f"steps must be from 1 to {most} for {name}, got {num_steps}")
    steps = _planners()[name](config, num_steps)
    warm_up = len(steps) - num_steps  # evaluations before the first counted step
    return [replace(step, progress=max(0, i + 1 - warm_up)) for i, step in enumerate(steps)]
