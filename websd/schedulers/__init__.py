"""Schedulers as plans: the whole denoising arithmetic, computed once in Python.

Every scheduler here is a linear multistep method: each step's new sample is a linear
combination of the last few samples and the last few (guided) noise predictions. So a
scheduler is fully described by, per step, the timestep to feed the UNet and two short
coefficient vectors. The native runner and the browser both execute the same plan with
one multiply-add (`apply_step`), so the arithmetic lives in one place: the files of this
package, one per scheduler, each checked step by step against diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# How many past samples / noise predictions a step may combine (PNDM's 4th-order
# Adams-Bashforth step reaches back over the warm-up step it skips: 5 predictions).
HISTORY = 5


@dataclass(frozen=True)
class Step:
    """x_next = sum(sample_coeffs[k] * x[i-k]) + sum(eps_coeffs[k] * eps[i-k]), k = 0 is now."""

    timestep: int
    sample_coeffs: tuple[float, ...]
    eps_coeffs: tuple[float, ...]

    def to_json(self) -> dict:
        return {"timestep": self.timestep, "sample": list(self.sample_coeffs), "eps": list(self.eps_coeffs)}


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


def plan(name: str, config: dict, num_steps: int) -> list[Step]:
    """The steps of scheduler `name` (dpm-solver | pndm) for a diffusers scheduler config."""
    from . import dpm_solver, pndm

    planners = {"dpm-solver": dpm_solver.plan, "pndm": pndm.plan}
    if name not in planners:
        raise ValueError(f"unknown scheduler {name!r} (allowed: {', '.join(planners)})")
    if num_steps < 1:
        raise ValueError(f"steps must be at least 1, got {num_steps}")
    return planners[name](config, num_steps)
