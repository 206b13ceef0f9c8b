"""No buffer above WebGPU's default binding: the import splits wide embedding tables, legalize
splits wide activations, and the results still match PyTorch. The tiny model has nothing that
wide at the real limit (128 MiB), so the stages run here with a limit small enough to split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import doit, layout_of, write_config
from stages import apply_db, build, import_relax, legalize, memory_plan, shard_params
from websd import relax_io
from websd.architecture import ENTRIES
from websd.components import example_inputs, load_component, signature
from websd.config import load_config
from websd.paths import ROOT, model_folder
from websd.targets import BINDING_LIMIT
from websd.runtime import Component
from websd.wasm import wgsl_limits

SMALL_LIMIT = 300_000  # bytes: the tiny CLIP's token embedding is 6.3 MB, its VAE's images 512 KiB


@pytest.mark.parametrize("component", ["text_encoder", "vae_decoder"])
def test_split_component_matches_pytorch(default_build: Path, tmp_path: Path, component: str) -> None:
    config = load_config(default_build)
    layout = layout_of(default_build)
    model = model_folder(layout.model)
    exported = {entry: layout.exported(component, entry) for entry in ENTRIES[component]}
    out = {name: tmp_path / name for name in ("imported.json", "params.npz", "legalized.json", "scheduled.json", "planned.json", "memory.json", "lib.so", "params")}
    import_relax.import_relax(exported, out["imported.json"], out["params.npz"], binding_limit=SMALL_LIMIT)
    legalize.legalize(out["imported.json"], out["legalized.json"], binding_limit=SMALL_LIMIT)
    apply_db.apply_db(out["legalized.json"], "llvm", [], True, out["scheduled.json"])
    memory_plan.memory_plan(out["scheduled.json"], out["planned.json"], out["memory.json"])
    build.build(out["planned.json"], "llvm", out["lib.so"])
    shard_params.shard_params(out["params.npz"], component, 32, "raw", out["params"])

    weights = relax_io.load_params(out["params.npz"])
    assert max(w.nbytes for w in weights.values()) <= SMALL_LIMIT
    assert json.loads(out["memory.json"].read_text())["largest_bytes"] <= SMALL_LIMIT
    if component == "text_encoder":
        assert any(name.endswith("token_embedding.weight[:, 0:1]") for name in weights)  # 49408 x 32: 197 KB a column

    module = load_component(component, model)
    torch.manual_seed(2)
    inputs = example_inputs(signature(component, model, config.height, config.width))
    if component == "text_encoder":
        inputs = (torch.randint(0, 49408, inputs[0].shape, dtype=torch.int32),)
    expected = module(*inputs).numpy()
    got = Component(component, out["lib.so"], out["params"], "llvm")(*(x.numpy() for x in inputs))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_kernel_limits_are_read_off_the_wgsl() -> None:
    wgsl = """
@group(0) @binding(0) var<storage, read_write> out : array<f32>;
@group(0) @binding(1) var<storage, read> a : array<f32>;
var<workgroup> tile : array<vec4<f32>, 64>;
var<workgroup> total : f32;
@compute @workgroup_size(64, 4, 1)
fn main() {}
@group(0) @binding(0) var<storage, read_write> out : array<f32>;
@compute @workgroup_size(32)
fn main() {}
"""
    assert wgsl_limits(wgsl) == {
        "maxStorageBuffersPerShaderStage": 2,
        "maxComputeWorkgroupStorageSize": 64 * 16 + 4,
        "maxComputeInvocationsPerWorkgroup": 256,
        "maxComputeWorkgroupSizeX": 64,
        "maxComputeWorkgroupSizeY": 4,
        "maxComputeWorkgroupSizeZ": 1,
    }


def test_sd15_fits_webgpu_default_limits(tmp_path: Path) -> None:
    """Full SD 1.5 at 512x512 (random weights), built through memory planning for webgpu: no
    weight and no planned buffer is larger than WebGPU's default binding, so the page needs to
    request no limit (the token embedding is split, the attention scores and the VAE's
    256-channel images are gone). Slow: the full model's export and import (several minutes)."""
    sd15 = ROOT / "config" / "sd-v1-5-random.yaml"
    config = write_config(tmp_path / "sd15-webgpu.yaml", {"targets": ["webgpu"]}, base=sd15)
    doit(f"config={config}", "memory_plan")
    layout = layout_of(config)
    for component in ("text_encoder", "unet", "vae_decoder"):
        module = relax_io.load_module(layout.imported(component))
        weights = [param for param in module["main"].params[int(module["main"].attrs["num_input"]):]]
        largest_weight = max(math.prod(int(d) for d in w.ty.shape.values) * 4 for w in weights)
        largest_buffer = json.loads(layout.memory_report(component, "webgpu").read_text())["largest_bytes"]
        assert largest_weight <= BINDING_LIMIT, component
        assert largest_buffer <= BINDING_LIMIT, component
        if component == "text_encoder":  # 49408 x 768 floats in two blocks
            assert sum("token_embedding" in w.name for w in weights) == 2
