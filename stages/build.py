"""Stage build: one loadable library per component and target.

llvm and cuda: a shared library for tvm.runtime.load_module. webgpu: WGSL kernels plus a
wasm32 host, linked with the TVM web runtime into a .wasm for tvmjs.
"""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.atomic import atomic_path
from websd.config import Config
from websd.paths import Layout
from websd.targets import tvm_target


def passes() -> list:
    """What remains after memory planning: lower to the VM's instructions."""
    from tvm import relax

    return [
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


def build(module_in: Path, target: str, library_out: Path) -> None:
    import tvm

    mod = relax_io.load_module(module_in)
    executable = tvm.compile(mod, tvm_target(target), relax_pipeline=tvm.transform.Sequential(passes()))
    if target == "webgpu":
        from stages.build_runtime import runtime_dir
        from websd.wasm import export_wasm

        stats = export_wasm(executable, library_out, runtime_dir())
        print(f"build: {library_out.name}: {stats}")
    else:
        with atomic_path(library_out) as tmp:
            executable.export_library(str(tmp))
        print(f"build: {library_out}")


def tasks(config: Config, layout: Layout):
    for component in config.components:
        for target in config.targets:
            yield stage_task(
                name=f"{component}@{target}",
                doc="compile each component for each target",
                action=(build, [layout.planned(component, target), target, layout.library(component, target)]),
                file_dep=[layout.planned(component, target)],
                targets=[layout.library(component, target)],
                options=config.stage("build"),
                tools=("apache-tvm", "apache-tvm-ffi"),
                sources=(__file__, WEBSD_DIR / "targets.py"),
            )
