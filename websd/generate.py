"""Text to image with the compiled components, step for step as diffusers'
StableDiffusionPipeline does it (classifier-free guidance, the scheduler's plan)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import schedulers
from .components import LATENT_CHANNELS, VAE_SCALE
from .config import COMPONENTS, Config
from .paths import Layout, model_folder
from .runtime import Component, NotBuiltError
from .tokenizer import token_ids


@dataclass
class Timings:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def initial_latents(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """What diffusers draws for this seed: torch.randn from a CPU generator."""
    import torch

    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).numpy()


def to_pixels(image: np.ndarray) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> [H, W, 3] uint8, rounded as diffusers' image processor does."""
    return (image[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)


def scheduler_config(model: Path) -> dict:
    """The scheduler config as the diffusers pipeline holds it: the saved one plus its class's defaults."""
    import diffusers

    saved = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    return dict(getattr(diffusers, saved["_class_name"]).from_config(saved).config)


class Generator:
    """The compiled pipeline: three loaded components, with the tokenizer and scheduler config
    of the diffusers pipeline folder they were built from."""

    def __init__(self, model: Path, height: int, width: int, components: dict[str, Component]):
        from transformers import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
        self.scheduler_config = scheduler_config(model)
        self.latent_shape = (1, LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE)
        self.text_encoder, self.unet, self.vae_decoder = (components[name] for name in COMPONENTS)

    @classmethod
    def for_config(cls, config: Config, layout: Layout, target: str) -> Generator:
        """The build of `config` for `target`."""
        if not layout.model.exists():
            raise NotBuiltError(layout.model)
        components = {
            name: Component(name, layout.library(name, target), layout.tensor_cache(name), target) for name in COMPONENTS
        }
        return cls(model_folder(layout.model), config.height, config.width, components)

    def __call__(self, prompt: str, negative_prompt: str, seed: int, steps: int, scheduler: str, guidance: float):
        timings = Timings()
        with timings.part("tokenize"):
            ids = [token_ids(self.tokenizer, text) for text in (negative_prompt, prompt)]
        with timings.part("text_encoder"):
            embeddings = np.concatenate([self.text_encoder(i) for i in ids])  # uncond first, as diffusers

        plan = schedulers.plan(scheduler, self.scheduler_config, steps)
        samples, eps = [initial_latents(seed, self.latent_shape)], []
        for step in plan:
            with timings.part("unet"):
                x = samples[0]
                noise = self.unet(np.concatenate([x, x]), np.array([step.timestep], np.float32), embeddings)
            with timings.part("scheduler"):
                uncond, cond = noise[:1], noise[1:]
                eps = [uncond + guidance * (cond - uncond), *eps][: schedulers.HISTORY]
                samples = [schedulers.apply_step(step, samples, eps), *samples][: schedulers.HISTORY]
        with timings.part("vae_decoder"):
            image = self.vae_decoder(samples[0])
        return to_pixels(image), timings
