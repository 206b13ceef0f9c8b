"""The pipeline in Node: bench/webgpu_node.mjs (the GPU benchmark's runner) runs the page's own
pipeline (web/src/pipeline.js) on the default bundle, here on Dawn's OpenGL backend over Mesa
(no GPU), and must draw diffusers' image; it times variants (other builds of a component: here
the UNet's and the VAE decoder's own, again), which bench/gpu_bench.py reads into its WebGPU
row; and the limits a device is asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DEFAULT_CONFIG, layout_of
from test_native import NEGATIVE, PROMPT, diffusers_image
from websd.config import load_config
from websd.paths import ROOT, model_folder

sys.path.insert(0, str(ROOT / "bench"))
import gpu_bench  # noqa: E402

WEBGPU_PACKAGE = ROOT / "bench" / "node_modules" / "webgpu"
PIPELINE_JS = ROOT / "web" / "src" / "pipeline.js"
# WebGPU's core defaults, which the default build keeps within, where a compatibility-mode
# device (Dawn on OpenGL) has less.
CORE_DEFAULTS = {"maxComputeInvocationsPerWorkgroup": 256, "maxComputeWorkgroupSizeX": 256, "maxComputeWorkgroupSizeY": 256}
COMPAT_DEFAULTS = {"maxComputeInvocationsPerWorkgroup": 128, "maxComputeWorkgroupSizeX": 128, "maxComputeWorkgroupSizeY": 128}


def node_eval(script: str) -> object:
    result = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def test_limits_to_request() -> None:
    """Only what a build needs beyond a device's defaults, at exactly that value: nothing for a
    build within WebGPU's core defaults on a core device; on a compatibility-mode one (fewer
    invocations per workgroup by default) the core defaults the build counts on."""
    cases = {
        "within": [{"maxStorageBufferBindingSize": 6324224, "maxBufferSize": 6324224}, "core"],
        "bigger": [{"maxStorageBufferBindingSize": 2**30, "maxBufferSize": 2**30, "maxComputeInvocationsPerWorkgroup": 128}, "core"],
        "compat": [{"maxStorageBufferBindingSize": 6324224}, "compatibility"],
        "compat_small": [{"maxComputeInvocationsPerWorkgroup": 64, "maxComputeWorkgroupSizeX": 64, "maxComputeWorkgroupSizeY": 1}, "compatibility"],
    }
    got = node_eval(f"""
import {{ limitsToRequest }} from "{PIPELINE_JS.as_uri()}";
const cases = {json.dumps(cases)};
console.log(JSON.stringify(Object.fromEntries(Object.entries(cases).map(([k, [limits, level]]) => [k, limitsToRequest(limits, level)]))));
""")
    assert got == {
        "within": {},
        "bigger": {"maxStorageBufferBindingSize": 2**30, "maxBufferSize": 2**30},
        "compat": CORE_DEFAULTS,
        "compat_small": {},
    }


@pytest.fixture(scope="module")
def node_run(default_build: Path, tmp_path_factory) -> tuple[dict, np.ndarray, Path]:
    """One run of the Node runner on the default bundle: its JSON, its image and the bundle."""
    if not (WEBGPU_PACKAGE / "index.js").is_file():
        pytest.fail(f"{WEBGPU_PACKAGE} is missing: run `npm ci` in bench/ (install.sh --test does)")
    bundle = Path(os.environ["WEBSD_DIST"])
    work = tmp_path_factory.mktemp("webgpu-node")
    spec = {
        "bundle": str(bundle),
        "dawn_options": ["backend=opengl"],
        "adapter_options": {"featureLevel": "compatibility"},
        "generation": {"prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": 42, "steps": 20, "scheduler": "dpm-solver", "guidance": 7.5},
        "runs": 1, "warmup": 0, "warmup_ms": 0, "generation_runs": 1,
        "variants": {f"{name}-again": {"component": name, "wasm": str(bundle / f"{name}.wasm")} for name in ("unet", "vae_decoder")},
        "out": "result.json", "image_out": "image.u8",
    }
    (work / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run(["node", str(ROOT / "bench" / "webgpu_node.mjs"), str(work / "spec.json")], capture_output=True, text=True,
                            env={**os.environ, "EGL_PLATFORM": "surfaceless"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = load_config(DEFAULT_CONFIG)
    image = np.fromfile(work / "image.u8", np.uint8).reshape(config.height, config.width, 3)
    return json.loads((work / "result.json").read_text()), image, bundle


def test_node_runner_draws_diffusers_image(node_run) -> None:
    report, ours, _ = node_run
    config = load_config(DEFAULT_CONFIG)
    expected = diffusers_image(model_folder(layout_of(DEFAULT_CONFIG).model), "dpm-solver", 42, config.height, config.width)
    assert expected.std() > 10  # a real image
    assert np.abs(ours.astype(int) - expected).max() <= 3  # as in the browser
    assert report["generation"]["deterministic"]


def test_node_runner_reports(node_run) -> None:
    report, _, bundle = node_run
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "profile" not in report and report["dawn_options"] == ["backend=opengl"]  # without a profile, no profiler
    assert report["required_limits"] == manifest["required_limits"]
    # The default build needs nothing beyond WebGPU's core defaults; Dawn on OpenGL is a
    # compatibility-mode device, so exactly what the build needs above its defaults is requested.
    expected = {name: need for name, need in manifest["required_limits"].items() if need > COMPAT_DEFAULTS.get(name, need)}
    assert report["requested_limits"] == expected
    assert all(need <= CORE_DEFAULTS.get(name, need) for name, need in manifest["required_limits"].items())
    assert all(report["limits_granted"][name] >= need for name, need in manifest["required_limits"].items())
    for name, component in manifest["components"].items():
        assert set(report["timings"][name]) == set(component["functions"])  # the UNet's main and unguided
        for timing in report["timings"][name].values():
            assert timing["runs"] == len(timing["samples_ms"]) == 1 and timing["median_ms"] > 0
        load = report["load"][name]
        assert load["kernels"] > 0 and load["shader_compile_ms"] > 0 and load["num_params"] == component["num_params"]
    # Each variant: its component's every function, on its weights.
    assert {v: r["component"] for v, r in report["variants"].items()} == {"unet-again": "unet", "vae_decoder-again": "vae_decoder"}
    for variant in report["variants"].values():
        component = manifest["components"][variant["component"]]
        assert set(variant["timings"]) == set(component["functions"])  # the UNet's main and unguided; the VAE's main
        assert variant["load"]["num_params"] == component["num_params"] and variant["load"]["kernels"] == report["load"][variant["component"]]["kernels"]
    parts = report["generation"]["parts"][0]
    assert set(parts) == {"text_encoder_ms", "unet_ms", "scheduler_ms", "vae_decoder_ms", "total_ms"}
    assert report["generation"]["steps"] == 20 and report["generation"]["untimed_ms"] > 0


def test_gpu_bench_webgpu_row(node_run) -> None:
    """gpu_bench.py's WebGPU row from the runner's result: each variant's `main` with its
    component, and in the report's table right below that component's own build."""
    report, _, _ = node_run
    row = gpu_bench.webgpu_row(report, profile=False)
    for variant, component in (("unet-again", "unet"), ("vae_decoder-again", "vae_decoder")):
        main = report["variants"][variant]["timings"]["main"]
        assert row["variants"][variant] == {"component": component, "median_ms": main["median_ms"], "min_ms": main["min_ms"], "max_ms": main["max_ms"]}
    table = gpu_bench.variants_table({"webgpu-default": row})
    builds = [line.split(" | ")[0].removeprefix("| ") for line in table if line.startswith("| ") and not line.startswith("| build |")]
    assert builds == ["unet (the build above)", "unet-again", "vae_decoder (the build above)", "vae_decoder-again"]
