"""Stage make_model: the diffusers pipeline folder every later stage reads weights from.

`random`: the architecture from the config's JSON, weights drawn from a fixed seed, the real
CLIP tokenizer; saved as a pipeline folder. `pretrained`: a folder (or hub-cache entry) that
already holds one. Either way the stage writes model.json naming the folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd.atomic import atomic_path, write_text
from websd.config import Config, find_pretrained
from websd.paths import Layout


def make_random_model(architecture: Path, seed: int, out_dir: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from websd.tokenizer import build_clip_tokenizer

    arch = json.loads(architecture.read_text())
    torch.manual_seed(seed)
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**arch["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**arch["text_encoder"])),
        tokenizer=build_clip_tokenizer(),
        unet=UNet2DConditionModel(**arch["unet"]),
        scheduler=PNDMScheduler.from_config(arch["scheduler"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_path(out_dir) as tmp:
        pipeline.save_pretrained(tmp)


def _folder_fingerprint(folder: Path) -> str:
    """Cheap identity of a weights folder: names, sizes and times of its files."""
    stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def make_model(config: Config, layout: Layout) -> None:
    if config.model["source"] == "random":
        print(f"make_model: {config.architecture_path.name}, seed {config.model['seed']} -> {layout.random_model_dir}")
        make_random_model(config.architecture_path, config.model["seed"], layout.random_model_dir)
        folder = layout.random_model_dir
    else:
        folder = find_pretrained(config.model["path"])
    record = {"path": str(folder), "fingerprint": _folder_fingerprint(folder)}
    write_text(layout.model, json.dumps(record, indent=1))


def task(config: Config, layout: Layout) -> dict:
    random = config.model["source"] == "random"
    return stage_task(
        doc="the diffusers pipeline folder (random weights from a seed, or pretrained)",
        action=(make_model, [config, layout]),
        file_dep=[config.architecture_path] if random else [],
        targets=[layout.model],
        options=config.model,
        tools=("torch", "diffusers", "transformers", "clip-anytorch"),
        sources=(__file__, WEBSD_DIR / "tokenizer.py"),
    )
