"""The per-kernel profile (bench/README.md, "Where the time goes"): the WebGPU dispatches of the
default build's UNet named, counted and timed by bench/dispatch_profile.mjs in Node, the same
build's kernels natively by bench/profile_cuda.py, and bench/profile_tables.py's tables of both.

No GPU here: Node runs Dawn's OpenGL backend on Mesa, which offers no "timestamp-query" (so the
dispatches are named and counted but untimed), and the native side runs the llvm build on the
CPU (the clock in place of CUDA events).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEFAULT_CONFIG, layout_of
from test_webgpu_node import WEBGPU_PACKAGE, node_eval
from websd.paths import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import profile_cuda  # noqa: E402
import profile_tables  # noqa: E402

DISPATCH_PROFILE_JS = ROOT / "bench" / "dispatch_profile.mjs"


def test_kernel_classes() -> None:
    """PrimFunc names of the SD 1.5 UNet build, classed by the ops they fuse."""
    expected = {
        "fused_conv2d22_add34": "convolution",
        "fused_conv2d14_add25_expand_dims6_expand_dims7_add26": "convolution",
        "fused_matmul19_add40_tir_sigmoid15_multiply38": "matmul",
        "matmul12": "matmul",
        "attention12": "attention",
        "softmax1": "attention",
        "fused_group_norm_tir_sigmoid1_multiply4": "normalization",
        "layer_norm3": "normalization",
        "fused_mean10_subtract10_divide19": "normalization",  # a split group norm's reductions
        "fused_variance10_add2_tir_sqrt": "normalization",
        "fused_reshape14_reshape12_multiply9_reshape12_add11_tir_sigmoid3_multiply10": "elementwise",
        "fused_reshape7_split_gelu_multiply6_reshape8": "elementwise",
        "fused_broadcast_to_expand_dims_multiply1_multiply2_tir_sin_tir_cos_concatenate_strided_slice_strided_slice1_concatenate": "elementwise",
        "fused_transpose9_reshape15": "elementwise",
        "resize2d3": "elementwise",
        "take1": "elementwise",
    }
    assert {name: profile_tables.kernel_class(name) for name in expected} == expected


def test_prim_func_of_wgsl_kernel() -> None:
    """WGSL kernel names as the SD 1.5 UNet's .wasm holds them (a PrimFunc split in two kernels)."""
    kernels = ["fused_conv2d32_add1_expand_dims2_expand_dims3_add4_kernel", "fused_conv2d32_add1_expand_dims2_expand_dims3_add4_kernel_1",
               "reshape43_kernel", "attention12_kernel"]
    got = node_eval(f'import {{ primFuncOf }} from "{DISPATCH_PROFILE_JS.as_uri()}";'
                    f"console.log(JSON.stringify({json.dumps(kernels)}.map(primFuncOf)));")
    assert got == ["fused_conv2d32_add1_expand_dims2_expand_dims3_add4"] * 2 + ["reshape43", "attention12"]


@pytest.fixture(scope="module")
def unet_profiles(default_build: Path, tmp_path_factory) -> tuple[dict, dict]:
    """The default build's UNet profiled in Node (the bundle with only its UNet: timed and
    profiled, nothing generated) and natively twice, as "unet" and "unet-again": (the Node
    runner's result, the native profile set)."""
    from websd.runtime import Component

    if not (WEBGPU_PACKAGE / "index.js").is_file():
        pytest.fail(f"{WEBGPU_PACKAGE} is missing: run `npm ci` in bench/ (install.sh --test does)")
    bundle = Path(os.environ["WEBSD_DIST"])
    work = tmp_path_factory.mktemp("profile")
    unet_only = work / "bundle"
    unet_only.mkdir()
    for entry in bundle.iterdir():
        if entry.name != "manifest.json":
            (unet_only / entry.name).symlink_to(entry)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["components"] = {"unet": manifest["components"]["unet"]}
    (unet_only / "manifest.json").write_text(json.dumps(manifest))
    spec = {"bundle": str(unet_only), "dawn_options": ["backend=opengl"], "adapter_options": {"featureLevel": "compatibility"},
            "runs": 1, "warmup": 0, "profile": {"runs": 2}, "out": "result.json", "image_out": "image.u8"}
    (work / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run(["node", str(ROOT / "bench" / "webgpu_node.mjs"), str(work / "spec.json")], capture_output=True, text=True,
                            env={**os.environ, "EGL_PLATFORM": "surfaceless"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    unet = Component("unet", layout_of(DEFAULT_CONFIG).root / "llvm" / "unet.so", bundle / "params" / "unet", "llvm")
    functions = manifest["components"]["unet"]["functions"]
    native = {build: profile_cuda.profile_build(build, unet.vm, functions, unet.weights, unet.device, profile_cuda.HostClock(), runs=2)
              for build in ("unet", "unet-again")}
    return json.loads((work / "result.json").read_text()), native


def prim_funcs(target: str) -> set[str]:
    """The PrimFuncs of the default build's UNet for `target`."""
    import tvm

    planned = layout_of(DEFAULT_CONFIG).component_dir("unet") / target / "planned.json"
    module = tvm.ir.load_json(planned.read_text())
    return {gv.name_hint for gv, f in module.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_webgpu_profile_names_every_dispatch(unet_profiles) -> None:
    report, native = unet_profiles
    assert "disable-dawn-features=timestamp_quantization" in report["dawn_options"]
    assert set(report["profile"]["unet"]) == {"main", "unguided"}
    for function, profile in report["profile"]["unet"].items():
        assert profile["runs"] == 2 and profile["dispatches"] > 0 and profile["unnamed_dispatches"] == 0
        assert profile["dispatches"] == sum(k["dispatches"] for k in profile["kernels"].values())
        # Each kernel is a PrimFunc of the build, called as often as the native build calls it.
        assert set(profile["kernels"]) <= prim_funcs("webgpu")
        assert {k: v["calls"] for k, v in profile["kernels"].items()} == {k: v["calls"] for k, v in native["unet"][function]["kernels"].items()}
        assert 0 < profile["host_ms"] <= profile["wall_ms"] and profile["host_us_per_dispatch"] > 0
        # Dawn's OpenGL backend has no timestamp queries: then the kernels are untimed.
        assert profile["timestamps"] == ("timestamp-query" in report["device_features"])
        if profile["timestamps"]:
            assert not profile["quantized"] and all(k["gpu_ms"] > 0 for k in profile["kernels"].values())
            assert profile["gpu_kernel_ms"] <= profile["gpu_span_ms"] <= profile["wall_ms"]
        else:
            assert all(k["gpu_ms"] is None for k in profile["kernels"].values()) and profile["gpu_kernel_ms"] is None


def test_native_profile(unet_profiles) -> None:
    _, native = unet_profiles
    for function, profile in native["unet"].items():
        kernels = profile["kernels"]
        assert set(kernels) <= prim_funcs("llvm")  # PrimFuncs only: no VM builtin (vm.builtin.*)
        assert profile["dispatches"] == sum(k["calls"] for k in kernels.values())
        assert all(k["gpu_ms"] > 0 for k in kernels.values())
        # Over 2 runs a median is a mean: the kernels' medians add up to the median total.
        assert sum(k["gpu_ms"] for k in kernels.values()) == pytest.approx(profile["gpu_kernel_ms"], abs=0.001 * len(kernels))
        assert profile["gpu_kernel_ms"] <= profile["gpu_span_ms"]


def test_tables(unet_profiles, tmp_path: Path) -> None:
    report, native = unet_profiles
    written = profile_tables.write_tables(tmp_path, cuda=native, webgpu=report["profile"])
    assert sorted(p.name for p in written) == sorted(f"{stem}.{ext}" for stem in ("profile-unet", "profile-unet-variants") for ext in ("md", "json"))

    tables = json.loads((tmp_path / "profile-unet.json").read_text())["functions"]
    markdown = (tmp_path / "profile-unet.md").read_text()
    for function, table in tables.items():
        webgpu, cuda = report["profile"]["unet"][function], native["unet"][function]
        rows = table["kernels"]
        assert {r["kernel"] for r in rows} == cuda["kernels"].keys() == webgpu["kernels"].keys()
        assert all(r["cuda_calls"] == r["webgpu_calls"] and r["class"] == profile_tables.kernel_class(r["kernel"]) for r in rows)
        assert [r["cuda_ms"] for r in rows] == sorted((r["cuda_ms"] for r in rows), reverse=True)  # WebGPU untimed: by CUDA ms
        assert sum(t["webgpu_calls"] for t in table["classes"]) == webgpu["dispatches"]
        assert sum(t["cuda_ms"] for t in table["classes"]) == pytest.approx(sum(k["gpu_ms"] for k in cuda["kernels"].values()), abs=0.01)
        assert table["summary"]["dispatches"] == {"cuda": cuda["dispatches"], "webgpu": webgpu["dispatches"]}
        assert table["summary"]["host_us_per_dispatch"]["webgpu"] == webgpu["host_us_per_dispatch"]
        assert f"## unet.{function}" in markdown and all(f"| {r['kernel']} |" in markdown for r in rows)

    variants = json.loads((tmp_path / "profile-unet-variants.json").read_text())["functions"]
    assert [t["function"] for t in variants] == ["main", "unguided"]
    for table in variants:
        assert table["builds"] == ["unet", "unet-again"]
        for row in table["kernels"]:
            times = row["ms"]["cuda"]
            assert row["fastest"]["cuda"] == min(times, key=times.get) and row["fastest"]["webgpu"] is None
