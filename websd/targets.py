"""The compilation targets a config may name, as TVM targets."""

from __future__ import annotations

WASM_HOST = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}


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
