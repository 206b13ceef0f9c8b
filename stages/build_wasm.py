"""Stage build_wasm: each component for webgpu: WGSL kernels plus a wasm32 host, linked with
the TVM web runtime into a .wasm for tvmjs. Fails if no kernel reached the GPU, and records
the kernel count and WGSL size next to the .wasm."""

from __future__ import annotations

import json
from pathlib import Path

from stages import build_runtime
from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.atomic import write_text
from websd.config import Config
from websd.paths import Layout
from websd.targets import compile_planned
from websd.wasm import RUNTIME_OBJECTS, export_wasm


def build_wasm(module_in: Path, runtime: Path, wasm_out: Path, stats_out: Path) -> None:
    executable = compile_planned(relax_io.load_module(module_in), "webgpu")
    stats = export_wasm(executable, wasm_out, runtime)
    stats["wasm_bytes"] = wasm_out.stat().st_size
    write_text(stats_out, json.dumps(stats, indent=1))
    print(f"build_wasm: {wasm_out.name}: {stats}")


def tasks(config: Config, layout: Layout):
    if "webgpu" not in config.targets:
        return
    runtime = build_runtime.runtime_dir()
    for component in config.components:
        outputs = [layout.library(component, "webgpu"), layout.wasm_stats(component)]
        yield stage_task(
            name=component,
            doc="webgpu + wasm32 build of each component, linked with the web runtime",
            action=(build_wasm, [layout.planned(component, "webgpu"), runtime, *outputs]),
            file_dep=[layout.planned(component, "webgpu"), *(runtime / name for name in RUNTIME_OBJECTS)],
            targets=outputs,
            options=config.stage("build"),
            tools=("apache-tvm", "apache-tvm-ffi"),
            sources=(__file__, WEBSD_DIR / "targets.py", WEBSD_DIR / "wasm.py"),
        )
