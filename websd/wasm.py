"""Link a webgpu-compiled Relax executable into a model .wasm that tvmjs loads in the browser."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from websd.atomic import atomic_path
from websd.targets import kernel_source

# The runtime bitcode create_tvmjs_wasm links into every model, by the names it looks for.
RUNTIME_BITCODE = ("wasm_runtime.bc", "tvmjs_support.bc", "webgpu_runtime.bc")
# The same, compiled once to wasm objects (-O3): linking bitcode recompiles the whole runtime
# at every link (about 100 s per model here); linking objects takes seconds.
RUNTIME_OBJECTS = tuple(name.replace(".bc", ".o") for name in RUNTIME_BITCODE)
# wasm-opt at -O3 takes a minute per model for no smaller a file than -O2 (a few MB of host code).
LINK_OPTIONS = ["-O2"]


def webgpu_source(executable) -> str:
    """All WGSL of the executable; raises if no kernel went to the GPU."""
    source = kernel_source(executable, "webgpu")
    if not source:
        # tvm.compile for webgpu without GPU schedules succeeds and puts every kernel on the host.
        raise ValueError(
            "the executable has no webgpu module: every kernel was compiled for the wasm host. "
            "Apply GPU schedules (tvm.s_tir.dlight gpu rules inside `with target:`) before tvm.compile."
        )
    return source


_SCALAR_BYTES = {"f32": 4, "i32": 4, "u32": 4, "f16": 2}


def _wgsl_bytes(wgsl_type: str) -> int:
    """The size of a WGSL workgroup variable's type: scalars, vectors, fixed arrays of them."""
    wgsl_type = wgsl_type.strip()
    if array := re.fullmatch(r"array<(.+),\s*(\d+)u?>", wgsl_type):
        return _wgsl_bytes(array.group(1)) * int(array.group(2))
    if vector := re.fullmatch(r"vec([234])<(\w+)>", wgsl_type):
        return int(vector.group(1)) * _SCALAR_BYTES[vector.group(2)]
    return _SCALAR_BYTES[wgsl_type]


def wgsl_limits(wgsl: str) -> dict[str, int]:
    """What the kernels need of a WebGPU device, by limit name: the most storage buffers, bytes
    of workgroup memory and invocations of any one kernel, and the largest workgroup sizes.
    (Each kernel's bindings and workgroup variables precede its @compute entry point.)"""
    need = dict.fromkeys(("maxStorageBuffersPerShaderStage", "maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup",
                          "maxComputeWorkgroupSizeX", "maxComputeWorkgroupSizeY", "maxComputeWorkgroupSizeZ"), 0)
    buffers = workgroup = 0
    for line in wgsl.splitlines():
        if "var<storage" in line:
            buffers += 1
        elif variable := re.match(r"\s*var<workgroup>\s+\w+\s*:\s*(.+);", line):
            workgroup += _wgsl_bytes(variable.group(1))
        elif entry := re.match(r"\s*@compute\s+@workgroup_size\(([^)]*)\)", line):
            x, y, z = ([int(v) for v in entry.group(1).split(",")] + [1, 1])[:3]
            kernel = {"maxStorageBuffersPerShaderStage": buffers, "maxComputeWorkgroupStorageSize": workgroup,
                      "maxComputeInvocationsPerWorkgroup": x * y * z, "maxComputeWorkgroupSizeX": x,
                      "maxComputeWorkgroupSizeY": y, "maxComputeWorkgroupSizeZ": z}
            need = {name: max(need[name], kernel[name]) for name in need}
            buffers = workgroup = 0
    return need


@contextlib.contextmanager
def _tvm_home(runtime_dir: Path) -> Iterator[None]:
    """Point create_tvmjs_wasm at `runtime_dir`'s objects: it only searches $TVM_HOME/web/dist/wasm,
    by the bitcode names (the linker tells objects from bitcode by their contents)."""
    with tempfile.TemporaryDirectory(prefix="websd-tvm-home-") as home:
        dist = Path(home) / "web" / "dist" / "wasm"
        dist.mkdir(parents=True)
        for bitcode, obj in zip(RUNTIME_BITCODE, RUNTIME_OBJECTS):
            (dist / bitcode).symlink_to(runtime_dir.resolve() / obj)
        old = os.environ.get("TVM_HOME")
        os.environ["TVM_HOME"] = home
        try:
            yield
        finally:
            if old is None:
                del os.environ["TVM_HOME"]
            else:
                os.environ["TVM_HOME"] = old


def _create_wasm(output, objects, **kwargs):
    from tvm.contrib.tvmjs import create_tvmjs_wasm

    return create_tvmjs_wasm(output, objects, options=LINK_OPTIONS)


# Wasm objects, not LLVM bitcode: Debian's LLVM-14 wasm-ld cannot read TVM's LLVM-22 bitcode.
_create_wasm.object_format = "o"


def export_wasm(executable, out_path: Path, runtime_dir: Path) -> dict:
    """Link `executable` (tvm.compile for webgpu with a wasm32 host) with the runtime bitcode in
    `runtime_dir` into `out_path`; return the WGSL kernel count and size, and the device limits
    its kernels need."""
    wgsl = webgpu_source(executable)
    missing = [name for name in RUNTIME_OBJECTS if not (Path(runtime_dir) / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{runtime_dir} lacks {', '.join(missing)}: build it with stages/build_runtime.py"
        )
    with _tvm_home(Path(runtime_dir)), atomic_path(Path(out_path)) as tmp:
        executable.export_library(str(tmp), fcompile=_create_wasm)
    return {"wgsl_kernels": wgsl.count("@compute"), "wgsl_bytes": len(wgsl.encode()), "limits": wgsl_limits(wgsl)}
