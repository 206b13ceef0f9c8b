"""The compilation targets a config may name, and the last step shared by every target:
a memory-planned Relax module compiled into a VM executable."""

from __future__ import annotations

WASM_HOST = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}
NATIVE = ("llvm", "cuda")

# What a WebGPU device offers unless the page asks for more (the spec's defaults): the build
# keeps within them, and the page requests only what exceeds them (manifest required_limits).
WEBGPU_DEFAULT_LIMITS = {
    "maxStorageBufferBindingSize": 134_217_728,
    "maxBufferSize": 268_435_456,
    "maxStorageBuffersPerShaderStage": 8,
    "maxComputeWorkgroupStorageSize": 16_384,
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxComputeWorkgroupSizeX": 256,
    "maxComputeWorkgroupSizeY": 256,
    "maxComputeWorkgroupSizeZ": 64,
}
# The largest tensor a kernel can bind on any WebGPU device: the import and legalize passes
# split weights and activations to fit it.
BINDING_LIMIT = WEBGPU_DEFAULT_LIMITS["maxStorageBufferBindingSize"]


def tvm_target(name: str):
    import tvm

    if name == "llvm":
        return tvm.target.Target("llvm")
    if name == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    if name == "webgpu":
        return tvm.target.Target("webgpu", host=WASM_HOST)
    raise ValueError(f"unknown target {name!r} (allowed: llvm, cuda, webgpu)")


# Which tuning database each target replays (tuning_db/<name>/). WebGPU has no native runner
# to tune on, and replays none: the five CUDA-tuned records that matched its UNet, replayed in
# Dawn on the H200, were 1.2-4.6x slower than this project's own schedules there
# (bench/results/tile-sweep/profile-unet.md, 2026-11-27), though faster on CUDA.
TUNED_ON = {"llvm": "llvm", "cuda": "cuda", "webgpu": None}
TUNABLE = ("llvm", "cuda")
# MetaSchedule's search strategies that doit tune offers (stages.tune picks the cost model).
TUNING_STRATEGIES = ("evolutionary", "replay-trace")


def tuning_target(name: str, num_cores: int = 1):
    """The target MetaSchedule tunes for. CUDA is held to WebGPU's default limits (256
    invocations and 16 KiB of shared memory per workgroup) so that every schedule it keeps is
    valid on any WebGPU device; records match kernels by structure, not by target."""
    import tvm

    if name == "cuda":
        limits = {"max_threads_per_block": 256, "max_shared_memory_per_block": 16384, "thread_warp_size": 32}
        return tvm.target.Target({"kind": "cuda", "arch": "sm_90", **limits}, host="llvm")
    if name == "llvm":
        return tvm.target.Target({"kind": "llvm", "num-cores": num_cores})
    raise ValueError(f"cannot tune for {name!r} (allowed: {', '.join(TUNABLE)})")


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


def kernel_source(executable, kind: str) -> str:
    """The device code of an executable's `kind` modules ("webgpu": WGSL, "cuda": CUDA C)."""

    def modules(mod):
        yield mod
        for imported in mod.imports:
            yield from modules(imported)

    return "".join(m.inspect_source() for m in modules(executable.mod) if m.kind == kind)
