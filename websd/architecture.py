"""What the stages and runners need to know of a model's architecture, read from its JSON
configs alone (no torch: the config check and `doit list` use it).

The VAE's scale (pixels per latent) is diffusers' `vae_scale_factor`: each VAE block but the
last halves the image, so 2^(blocks - 1); 8 for SD 1.x, other for other VAEs.
"""

from __future__ import annotations

import json
from pathlib import Path


# Each component's functions (all taking the same weights) and the batch each one runs: the
# UNet's `main` runs classifier-free guidance's [uncond, cond] in one call, `unguided` the
# prompt alone, as diffusers does at guidance <= 1 (half the work per step).
ENTRIES = {"text_encoder": {"main": 1}, "unet": {"main": 2, "unguided": 1}, "vae_decoder": {"main": 1}}

# AutoencoderKL's defaults, for architecture files that leave a key out.
VAE_DEFAULTS = {"block_out_channels": [64], "latent_channels": 4}


def vae_scale_factor(vae_config: dict) -> int:
    return 2 ** (len({**VAE_DEFAULTS, **vae_config}["block_out_channels"]) - 1)


def read_vae_config(model_dir: Path) -> dict:
    """The VAE's config of a diffusers pipeline folder."""
    return json.loads((Path(model_dir) / "vae" / "config.json").read_text())


def latent_shape(vae_config: dict, height: int, width: int, batch: int = 1) -> list[int]:
    """The latents the UNet denoises for an image of this size, as diffusers draws them."""
    scale = vae_scale_factor(vae_config)
    return [batch, {**VAE_DEFAULTS, **vae_config}["latent_channels"], height // scale, width // scale]
