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
from .architecture import latent_shape, read_vae_config
from .config import COMPONENTS, Config
from .inputs import check_guidance, check_seed, check_steps
from .paths import Layout, model_folder
from .runtime import Component, NotBuiltError, release_activations
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
        self.latent_shape = tuple(latent_shape(read_vae_config(model), height, width))
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

    def max_steps(self, scheduler: str) -> int:
        return schedulers.max_steps(scheduler, self.scheduler_config)

    def check(self, seed: int, steps: int, scheduler: str, guidance: float) -> None:
        """Raise InputError for inputs diffusers would refuse or that cannot give an image."""
        check_seed(seed)
        check_guidance(guidance)
        check_steps(steps, scheduler, self.max_steps(scheduler))

    def __call__(self, prompt: str, negative_prompt: str, seed: int, steps: int, scheduler: str, guidance: float, on_step=None):
        """The image for these inputs, and the time each part took. `on_step(done, total)`
        follows the denoising steps."""
        self.check(seed, steps, scheduler, guidance)
        timings = Timings()
        # As diffusers: classifier-free guidance only above 1; else the prompt alone, at batch 1.
        guided = guidance > 1
        with timings.part("tokenize"):
            ids = [token_ids(self.tokenizer, text) for text in ([negative_prompt, prompt] if guided else [prompt])]
        with timings.part("text_encoder"):
            embeddings = np.concatenate([self.text_encoder(i) for i in ids])  # uncond first, as diffusers

        def predict_noise(x: np.ndarray, timestep: int) -> np.ndarray:
            t = np.array([timestep], np.float32)
            with timings.part("unet"):
                if not guided:
                    return self.unet(x, t, embeddings, function="unguided")
                uncond, cond = np.split(self.unet(np.concatenate([x, x]), t, embeddings), 2)
                return uncond + guidance * (cond - uncond)

        plan = schedulers.plan(scheduler, self.scheduler_config, steps)
        final = schedulers.denoise(plan, initial_latents(seed, self.latent_shape), predict_noise, on_step)
        release_activations()  # the UNet's, before the VAE decoder makes its own
        with timings.part("vae_decoder"):
            image = self.vae_decoder(final)
        release_activations()
        return to_pixels(image), timings
