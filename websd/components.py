"""The three compiled components, as the PyTorch modules that get exported.

Each wraps a diffusers/transformers model with exactly the inputs and outputs the
runners feed it, so the exported graph is the whole of what runs on the device:

    text_encoder  ids [1, 77] int32                      -> embeddings [1, 77, D]
    unet          latents [2, 4, h, w], t [1] float32,
                  embeddings [2, 77, D] (uncond, cond)   -> noise prediction [2, 4, h, w]
    vae_decoder   latents [1, 4, h, w]                   -> image [1, 3, H, W] in [0, 1]

A component's library has one function per batch the pipeline runs it at
(`websd.architecture.ENTRIES`), all taking the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from transformers import CLIPTextModel

from .architecture import ENTRIES, latent_shape, read_vae_config
from .tokenizer import MAX_LENGTH


class TextEncoder(torch.nn.Module):
    def __init__(self, model: CLIPTextModel):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, return_dict=False)[0]  # last hidden state, as SD 1.x uses


class UNet(torch.nn.Module):
    def __init__(self, model: UNet2DConditionModel):
        super().__init__()
        # The classic attention processor: torch's fused attention imports as a "safe
        # softmax" with an int8 intermediate that WebGPU rejects.
        model.set_attn_processor(AttnProcessor())
        self.model = model

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        # A float timestep is what the UNet casts the scheduler's integer to anyway (WGSL has no i64).
        return self.model(latents, timestep, encoder_hidden_states=embeddings, return_dict=False)[0]


class VaeDecoder(torch.nn.Module):
    """Undoes the latent scaling and maps the decoded image from [-1, 1] to [0, 1], as the pipeline does."""

    def __init__(self, model: AutoencoderKL):
        super().__init__()
        model.set_attn_processor(AttnProcessor())
        # decode() never runs the encoder: without it its weights are not parameters of the
        # export, so the page does not download them (34M for SD 1.x).
        model.encoder = model.quant_conv = None
        self.model = model
        self.scaling_factor = model.config.scaling_factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.model.decode(latents / self.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


def load_component(name: str, model_dir: Path) -> torch.nn.Module:
    """The wrapped module for one component of a diffusers pipeline folder, in eval mode."""
    if name == "text_encoder":
        # Eager attention, for the reason UNet gives: SDPA imports with an int8 mask WebGPU rejects.
        module = TextEncoder(CLIPTextModel.from_pretrained(model_dir / "text_encoder", attn_implementation="eager"))
    elif name == "unet":
        module = UNet(UNet2DConditionModel.from_pretrained(model_dir / "unet"))
    elif name == "vae_decoder":
        module = VaeDecoder(AutoencoderKL.from_pretrained(model_dir / "vae"))
    else:
        raise ValueError(f"unknown component {name!r}")
    return module.eval().requires_grad_(False)


def signature(name: str, model_dir: Path, height: int, width: int, entry: str = "main") -> dict:
    """Shapes and dtypes of the inputs and output of a component's function, from the pipeline's configs."""
    if entry not in ENTRIES.get(name, {}):
        raise ValueError(f"unknown function {name}.{entry}")
    batch = ENTRIES[name][entry]
    latents = {"shape": latent_shape(read_vae_config(model_dir), height, width, batch), "dtype": "float32"}
    dim = json.loads((model_dir / "text_encoder" / "config.json").read_text())["hidden_size"]
    embeddings = {"shape": [batch, MAX_LENGTH, dim], "dtype": "float32"}
    if name == "text_encoder":
        return {"inputs": [{"shape": [batch, MAX_LENGTH], "dtype": "int32"}], "output": embeddings}
    if name == "unet":
        timestep = {"shape": [1], "dtype": "float32"}
        return {"inputs": [latents, timestep, embeddings], "output": latents}
    image = {"shape": [batch, 3, height, width], "dtype": "float32"}
    return {"inputs": [latents], "output": image}


def example_inputs(signature: dict) -> tuple[torch.Tensor, ...]:
    """Tensors of the signature's shapes; the export does not depend on their values."""

    def tensor(spec: dict) -> torch.Tensor:
        return torch.zeros(spec["shape"], dtype=torch.int32) if spec["dtype"] == "int32" else torch.rand(spec["shape"])

    return tuple(tensor(spec) for spec in signature["inputs"])
