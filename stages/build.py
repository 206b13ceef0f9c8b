"""Stage build: one shared library per component and native target (llvm, cuda), for
tvm.runtime.load_module. (The webgpu target is build_wasm's.)"""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.atomic import atomic_path
from websd.config import Config
from websd.paths import Layout
from websd.targets import NATIVE, compile_planned


def build(module_in: Path, target: str, library_out: Path) -> None:
    executable = compile_planned(relax_io.load_module(module_in), target)
    with atomic_path(library_out) as tmp:
        executable.export_library(str(tmp))
    print(f"build: {library_out}")


def tasks(config: Config, layout: Layout):
    for component in config.components:
        for target in (t for t in config.targets if t in NATIVE):
            yield stage_task(
                name=f"{component}@{target}",
                doc="compile each component for each native target",
                action=(build, [layout.planned(component, target), target, layout.library(component, target)]),
                file_dep=[layout.planned(component, target)],
                targets=[layout.library(component, target)],
                options=config.stage("build"),
                tools=("apache-tvm", "apache-tvm-ffi"),
                sources=(__file__, WEBSD_DIR / "targets.py"),
            )
