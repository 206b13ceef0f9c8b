"""The native (llvm) build against PyTorch and diffusers, on the default config and on an
SD 1.x-shaped model of other proportions and a non-square image."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, PNDMScheduler, StableDiffusionPipeline
from PIL import Image

from conftest import DEFAULT_CONFIG, doit, layout_of, write_config
from websd import relax_io
from websd.architecture import ENTRIES
from websd.components import example_inputs, load_component, signature
from websd.config import load_config
from websd.paths import Layout, model_folder
from websd.runtime import Component

PROMPT = "a photo of an astronaut riding a horse on mars"
NEGATIVE = "blurry, low quality"
SCHEDULERS = {"dpm-solver": DPMSolverMultistepScheduler, "pndm": PNDMScheduler}


def diffusers_image(model: Path, scheduler: str, seed: int, height: int, width: int, guidance: float = 7.5, steps: int = 20,
                    prompt: str = PROMPT, negative_prompt: str = NEGATIVE) -> np.ndarray:
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images[0]
    return (image * 255).round().astype(np.uint8)


def websd_image(config: Path, scheduler: str, seed: int, out: Path, guidance: float = 7.5) -> np.ndarray:
    command = ["websd", "generate", "--config", str(config), "--prompt", PROMPT, "--negative-prompt", NEGATIVE]
    command += ["--seed", str(seed), "--steps", "20", "--scheduler", scheduler, "--guidance", str(guidance), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    for part in ("text_encoder", "unet", "vae_decoder", "total"):
        assert part in result.stdout  # the time of each part is printed
    return np.asarray(Image.open(out))


def assert_same_image(config: Path, scheduler: str, seed: int, tmp_path: Path, guidance: float = 7.5) -> None:
    loaded = load_config(config)
    ours = websd_image(config, scheduler, seed, tmp_path / f"{scheduler}.png", guidance)
    reference = diffusers_image(model_folder(Layout(loaded.build_key).model), scheduler, seed, loaded.height, loaded.width, guidance)
    assert ours.shape == reference.shape == (loaded.height, loaded.width, 3)
    assert reference.std() > 10  # a real image, not a flat one
    assert np.abs(ours.astype(int) - reference).max() <= 2


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_generate_matches_diffusers(default_build: Path, scheduler: str, tmp_path: Path) -> None:
    assert_same_image(default_build, scheduler, seed=42, tmp_path=tmp_path)


@pytest.mark.parametrize("guidance", [0, 0.5, 1, 1.5])
def test_guidance_matches_diffusers(default_build: Path, guidance: float, tmp_path: Path) -> None:
    """diffusers guides only above 1: at or below it, the prompt alone (the UNet at batch 1) and
    no negative prompt."""
    assert_same_image(default_build, "dpm-solver", seed=7, tmp_path=tmp_path, guidance=guidance)


@pytest.mark.parametrize("component, entry", [(c, e) for c, entries in ENTRIES.items() for e in entries])
def test_component_matches_pytorch(default_build: Path, component: str, entry: str) -> None:
    config = load_config(default_build)
    layout = Layout(config.build_key)
    model = model_folder(layout.model)
    module = load_component(component, model)
    torch.manual_seed(1)
    inputs = example_inputs(signature(component, model, config.height, config.width, entry))
    if component == "text_encoder":
        inputs = (torch.randint(0, 49408, inputs[0].shape, dtype=torch.int32),)
    expected = module(*inputs).numpy()
    compiled = Component(component, layout.library(component, "llvm"), layout.tensor_cache(component), "llvm")
    got = compiled(*(x.numpy() for x in inputs), function=entry)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_tensor_cache_names_each_weight(default_build: Path, component: str) -> None:
    """The cache's metadata names each weight after the PyTorch parameter it is: weights of the
    same architecture can be dropped in without a rebuild (the GPU benchmark does)."""
    import tvm
    from tvm.contrib import tvmjs

    layout = layout_of(default_build)
    cache = layout.tensor_cache(component)
    weights, _ = tvmjs.load_tensor_cache(str(cache), tvm.cpu())
    parameters = dict(load_component(component, model_folder(layout.model)).named_parameters())
    names = relax_io.tensor_cache_param_names(cache)
    assert len(names) == len(weights)
    expected = relax_io.select_weights({name: p.numpy() for name, p in parameters.items()}, names)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(weights[f"{component}_{i}"].numpy(), expected[name])


def test_memory_report(default_build: Path) -> None:
    report = json.loads(layout_of(DEFAULT_CONFIG).memory_report("unet", "llvm").read_text())
    assert 0 < report["after_bytes"] < report["before_bytes"]
    assert set(report["functions"]) == set(ENTRIES["unet"])
    assert sum(f["after_bytes"] for f in report["functions"].values()) == report["after_bytes"]


def test_generate_on_unbuilt_config_names_the_task(tmp_path: Path) -> None:
    config = write_config(tmp_path / "never-built.yaml", {})
    result = subprocess.run(
        ["websd", "generate", "--config", str(config), "--prompt", "x", "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"doit config={config} dist" in result.stderr


def test_other_sd1_shapes_build_and_match(tmp_path: Path) -> None:
    """More blocks, layers and heads, other widths, a wider text encoder, a 48x80 image."""
    arch = json.loads((DEFAULT_CONFIG.parent / "arch" / "tiny.json").read_text())
    arch["unet"].update(
        block_out_channels=[32, 64, 64],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        layers_per_block=2,
        attention_head_dim=4,
        cross_attention_dim=48,
    )
    arch["text_encoder"].update(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6, projection_dim=48)
    arch["vae"].update(block_out_channels=[16, 32, 32, 32], norm_num_groups=16, latent_channels=4)
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    config = write_config(
        tmp_path / "other-shape.yaml",
        {"model": {"architecture": str(tmp_path / "arch.json"), "seed": 3}, "image": {"height": 48, "width": 80}, "targets": ["llvm"]},
    )
    doit(f"config={config}", "dist")
    assert_same_image(config, "dpm-solver", seed=7, tmp_path=tmp_path)


def test_vae_scale_comes_from_the_architecture(tmp_path: Path) -> None:
    """A VAE of 3 blocks has 4 pixels per latent (diffusers' vae_scale_factor), not SD's 8."""
    arch = json.loads((DEFAULT_CONFIG.parent / "arch" / "tiny.json").read_text())
    vae = arch["vae"]
    vae.update(block_out_channels=vae["block_out_channels"][:3], down_block_types=vae["down_block_types"][:3], up_block_types=vae["up_block_types"][:3])
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    config = write_config(
        tmp_path / "vae3.yaml",
        {"model": {"architecture": str(tmp_path / "arch.json")}, "image": {"height": 64, "width": 96}, "targets": ["llvm"]},
    )
    doit(f"config={config}", "dist")
    assert_same_image(config, "dpm-solver", seed=5, tmp_path=tmp_path)  # 64x96, as configured
