"""The compilation targets a config may name, and the last step shared by every target:
a memory-planned Relax module compiled into a VM executable."""

from __future__ import annotations

WASM_HOST = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}
NATIVE = ("llvm", "cuda")


def tvm_target(name: str):
    import tvm

    if name == "llvm":
        return tvm.target.Target("llvm")
    if name == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    if name == "webgpu":
        return tvm.target.Target("webgpu", host=WASM_HOST)
    raise ValueError(f"unknown target {name!r} (allowed: llvm, cuda, webgpu)")


def is_gpu(name: str) -> bool:
    return name in ("cuda", "webgpu")


def vm_lowering_passes() -> list:
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


def compile_planned(mod, target: str):
    """tvm.compile with only the VM lowering left to do (the stages did the rest)."""
    import tvm

    return tvm.compile(mod, tvm_target(target), relax_pipeline=tvm.transform.Sequential(vm_lowering_passes()))
