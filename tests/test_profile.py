"""The per-kernel profile (bench/README.md, "Where the time goes"): the WebGPU dispatches of the
default build's UNet and VAE decoder, and of a variant of each (the same build again), named,
counted and timed by bench/dispatch_profile.mjs in Node, the same builds' kernels natively by
bench/profile_cuda.py, and bench/profile_tables.py's tables of both (per component, and of each
component's variants), from profile sets named as bench/gpu_bench.py names them.

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
import gpu_bench  # noqa: E402
import profile_cuda  # noqa: E402
import profile_tables  # noqa: E402

DISPATCH_PROFILE_JS = ROOT / "bench" / "dispatch_profile.mjs"
PROFILED = ("unet", "vae_decoder")  # the components profiled, each with a variant "<component>-again"


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
def profiles(default_build: Path, tmp_path_factory) -> tuple[dict, dict, dict]:
    """The default build's UNet and VAE decoder profiled in Node (a bundle of only those two:
    timed and profiled, nothing generated), each also as a variant "<component>-again" (the same
    .wasm), and natively, each as itself and as "<component>-again": (the Node runner's result,
    its profile set as gpu_bench.py makes it, the native profile set)."""
    from websd.runtime import Component

    if not (WEBGPU_PACKAGE / "index.js").is_file():
        pytest.fail(f"{WEBGPU_PACKAGE} is missing: run `npm ci` in bench/ (install.sh --test does)")
    bundle = Path(os.environ["WEBSD_DIST"])
    work = tmp_path_factory.mktemp("profile")
    profiled_only = work / "bundle"
    profiled_only.mkdir()
    for entry in bundle.iterdir():
        if entry.name != "manifest.json":
            (profiled_only / entry.name).symlink_to(entry)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["components"] = {name: manifest["components"][name] for name in PROFILED}
    (profiled_only / "manifest.json").write_text(json.dumps(manifest))
    spec = {"bundle": str(profiled_only), "dawn_options": ["backend=opengl"], "adapter_options": {"featureLevel": "compatibility"},
            "runs": 1, "warmup": 0, "warmup_ms": 0, "profile": {"runs": 2}, "out": "result.json", "image_out": "image.u8",
            "variants": {f"{name}-again": {"component": name, "wasm": str(bundle / f"{name}.wasm")} for name in PROFILED}}
    (work / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run(["node", str(ROOT / "bench" / "webgpu_node.mjs"), str(work / "spec.json")], capture_output=True, text=True,
                            env={**os.environ, "EGL_PLATFORM": "surfaceless"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work / "result.json").read_text())

    native = {}
    for name in PROFILED:
        component = Component(name, layout_of(DEFAULT_CONFIG).root / "llvm" / f"{name}.so", bundle / "params" / name, "llvm")
        functions = manifest["components"][name]["functions"]
        for build in (name, f"{name}-again"):
            native[build] = profile_cuda.profile_build(build, component.vm, functions, component.weights, component.device,
                                                       profile_cuda.HostClock(), runs=2)
    return report, gpu_bench.webgpu_profiles(report), native


def prim_funcs(component: str, target: str) -> set[str]:
    """The PrimFuncs of the default build's `component` for `target`."""
    import tvm

    planned = layout_of(DEFAULT_CONFIG).component_dir(component) / target / "planned.json"
    module = tvm.ir.load_json(planned.read_text())
    return {gv.name_hint for gv, f in module.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_webgpu_profile_names_every_dispatch(profiles) -> None:
    report, webgpu, native = profiles
    assert "disable-dawn-features=timestamp_quantization" in report["dawn_options"]
    # gpu_bench.py's profile set: each component and each variant, named as natively.
    assert webgpu.keys() == native.keys() == {*PROFILED, *(f"{name}-again" for name in PROFILED)}
    for build, functions in webgpu.items():
        component = build.partition("-")[0]
        assert set(functions) == ({"main", "unguided"} if component == "unet" else {"main"})
        for function, profile in functions.items():
            assert profile["runs"] == 2 and profile["dispatches"] > 0 and profile["unnamed_dispatches"] == 0
            assert profile["dispatches"] == sum(k["dispatches"] for k in profile["kernels"].values())
            # Each kernel is a PrimFunc of the build, called as often as the native build calls it.
            # The native (llvm) build may call more: its unscheduled copy of a reshape between
            # two transposes (the VAE's attention), which on webgpu, once scheduled, is a plain
            # reshape that RewriteDataflowReshape turns into a view.
            calls = {k: v["calls"] for k, v in profile["kernels"].items()}
            native_calls = {k: v["calls"] for k, v in native[build][function]["kernels"].items()}
            assert set(calls) <= prim_funcs(component, "webgpu")
            assert calls.items() <= native_calls.items()
            assert all(profile_tables.kernel_class(k) == "elementwise" for k in native_calls.keys() - calls.keys())
            # A variant (the same .wasm again) dispatches exactly what its component does.
            assert calls == {k: v["calls"] for k, v in webgpu[component][function]["kernels"].items()}
            assert 0 < profile["host_ms"] <= profile["wall_ms"] and profile["host_us_per_dispatch"] > 0
            # Dawn's OpenGL backend has no timestamp queries: then the kernels are untimed.
            assert profile["timestamps"] == ("timestamp-query" in report["device_features"])
            if profile["timestamps"]:
                assert not profile["quantized"] and all(k["gpu_ms"] > 0 for k in profile["kernels"].values())
                assert profile["gpu_kernel_ms"] <= profile["gpu_span_ms"] <= profile["wall_ms"]
            else:
                assert all(k["gpu_ms"] is None for k in profile["kernels"].values()) and profile["gpu_kernel_ms"] is None


def test_native_profile(profiles) -> None:
    _, _, native = profiles
    for build, functions in native.items():
        for profile in functions.values():
            kernels = profile["kernels"]
            assert set(kernels) <= prim_funcs(build.partition("-")[0], "llvm")  # PrimFuncs only: no VM builtin (vm.builtin.*)
            assert profile["dispatches"] == sum(k["calls"] for k in kernels.values())
            assert all(k["gpu_ms"] > 0 for k in kernels.values())
            # Over 2 runs a median is a mean: the kernels' medians add up to the median total.
            assert sum(k["gpu_ms"] for k in kernels.values()) == pytest.approx(profile["gpu_kernel_ms"], abs=0.001 * len(kernels))
            assert profile["gpu_kernel_ms"] <= profile["gpu_span_ms"]


def test_tables(profiles, tmp_path: Path) -> None:
    _, webgpu, native = profiles
    written = profile_tables.write_tables(tmp_path, cuda=native, webgpu=webgpu)
    assert sorted(p.name for p in written) == sorted(f"profile-{stem}.{ext}" for name in PROFILED for stem in (name, f"{name}-variants")
                                                     for ext in ("md", "json"))

    for name in PROFILED:
        tables = json.loads((tmp_path / f"profile-{name}.json").read_text())["functions"]
        markdown = (tmp_path / f"profile-{name}.md").read_text()
        for function, table in tables.items():
            cuda, gpu = native[name][function], webgpu[name][function]
            rows = table["kernels"]
            assert {r["kernel"] for r in rows} == cuda["kernels"].keys() | gpu["kernels"].keys()
            assert all(r["cuda_calls"] == r["webgpu_calls"] for r in rows if r["kernel"] in gpu["kernels"])
            assert all(r["class"] == profile_tables.kernel_class(r["kernel"]) for r in rows)
            assert [r["cuda_ms"] for r in rows] == sorted((r["cuda_ms"] for r in rows), reverse=True)  # WebGPU untimed: by CUDA ms
            assert sum(t["webgpu_calls"] for t in table["classes"]) == gpu["dispatches"]
            assert sum(t["cuda_ms"] for t in table["classes"]) == pytest.approx(sum(k["gpu_ms"] for k in cuda["kernels"].values()), abs=0.01)
            assert table["summary"]["dispatches"] == {"cuda": cuda["dispatches"], "webgpu": gpu["dispatches"]}
            assert table["summary"]["host_us_per_dispatch"]["webgpu"] == gpu["host_us_per_dispatch"]
            assert f"## {name}.{function}" in markdown and all(f"| {r['kernel']} |" in markdown for r in rows)

        # Each kernel of the component in both of its builds, the component's own first.
        variants = json.loads((tmp_path / f"profile-{name}-variants.json").read_text())["functions"]
        assert [t["function"] for t in variants] == list(native[name])
        for table in variants:
            assert table["builds"] == [name, f"{name}-again"]
            assert {row["kernel"] for row in table["kernels"]} == native[name][table["function"]]["kernels"].keys()
            for row in table["kernels"]:
                times = row["ms"]["cuda"]
                assert row["fastest"]["cuda"] == min(times, key=times.get) and row["fastest"]["webgpu"] is None
