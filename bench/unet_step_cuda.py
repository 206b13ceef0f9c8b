"""On the GPU machine: the SD 1.5 UNet step (batch 2, 64x64 latents) of our native CUDA build
against PyTorch diffusers on the same card. A first measurement towards the full harness.

Speed does not depend on weight values, so the TVM build gets random weights of the shapes in
its tensor-cache.json, and PyTorch a randomly initialised UNet of the same architecture.

    python3 bench/unet_step_cuda.py --library unet.so --cache-index tensor-cache.json \
        --architecture config/arch/sd15.json --out result.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

RUNS, WARMUP = 20, 3
GFLOP_PER_STEP = 1606.5  # batch-2 SD 1.5 UNet forward at 64x64 latents (FINDINGS.md)


def median_ms(step, sync) -> float:
    for _ in range(WARMUP):
        step()
    sync()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def register_nvrtc_callback(cuda_include: str) -> None:
    """TVM 0.27 stores CUDA source in the library and compiles it at load through the Python
    callback `tvm_callback_cuda_compile`, whose own version needs the compiler-side TVM. This one
    calls NVRTC (from the CUDA libraries torch ships) directly."""
    import ctypes
    import glob
    import os

    import torch
    import tvm_ffi

    lib = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "**", "libnvrtc.so*"), recursive=True))
    nvrtc = ctypes.CDLL(lib[0])
    major, minor = torch.cuda.get_device_capability()

    def check(status: int) -> None:
        if status != 0:
            raise RuntimeError(f"NVRTC error {status}")

    # The generated code includes libcu++ (<cuda/std/...>) when compiled by NVRTC: the CUDA
    # toolkit's cccl headers, carried (torch's wheels lack them). The host-only <cuda.h> must go.
    include = f"-I{cuda_include}"

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def compile_cuda(code: str, *_) -> bytes:
        code = "#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif\n" + "\n".join(
            line for line in code.splitlines() if line.strip() != "#include <cuda.h>"
        )
        program = ctypes.c_void_p()
        check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), code.encode(), b"kernel.cu", 0, None, None))
        options = [f"--gpu-architecture=sm_{major}{minor}".encode(), b"-default-device", b"--device-int128", include.encode()]
        status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        if status != 0:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            raise RuntimeError(log.value.decode()[-3000:])
        size = ctypes.c_size_t()
        check(nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size)))
        cubin = ctypes.create_string_buffer(size.value)
        check(nvrtc.nvrtcGetCUBIN(program, cubin))
        return bytes(cubin.raw)


def tvm_step_ms(library: str, cache_index: str, cuda_include: str) -> float:
    import ctypes
    from pathlib import Path

    import tvm
    from tvm.runtime.vm import VirtualMachine  # not tvm.relax: that needs the compiler library

    # Runtime-only TVM does not load its CUDA runtime by itself; it registers the cuda loader.
    ctypes.CDLL(str(Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
    register_nvrtc_callback(cuda_include)
    dev = tvm.cuda()
    vm = VirtualMachine(tvm.runtime.load_module(library), dev)
    records = [r for shard in json.load(open(cache_index))["records"] for r in shard["records"]]
    records.sort(key=lambda r: int(r["name"].rsplit("_", 1)[1]))
    rng = np.random.default_rng(0)
    weights = [tvm.runtime.tensor((0.02 * rng.standard_normal(r["shape"])).astype(r["dtype"]), dev) for r in records]
    inputs = [
        tvm.runtime.tensor(rng.standard_normal((2, 4, 64, 64)).astype("float32"), dev),
        tvm.runtime.tensor(np.array([500.0], "float32"), dev),
        tvm.runtime.tensor(rng.standard_normal((2, 77, 768)).astype("float32"), dev),
    ]
    main = vm["main"]
    return median_ms(lambda: main(*inputs, *weights), dev.sync)


def torch_step_ms(architecture: str, mode: str) -> float:
    import torch
    from diffusers import UNet2DConditionModel

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "fp32-tf32"
    dtype = torch.float16 if mode == "fp16" else torch.float32
    unet = UNet2DConditionModel(**json.load(open(architecture))["unet"]).to("cuda", dtype).eval()
    sample = torch.randn(2, 4, 64, 64, device="cuda", dtype=dtype)
    embeddings = torch.randn(2, 77, 768, device="cuda", dtype=dtype)
    timestep = torch.tensor([500.0], device="cuda")
    with torch.no_grad():
        ms = median_ms(lambda: unet(sample, timestep, encoder_hidden_states=embeddings), torch.cuda.synchronize)
    del unet
    torch.cuda.empty_cache()
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True)
    parser.add_argument("--cache-index", required=True)
    parser.add_argument("--architecture", required=True)
    parser.add_argument("--cuda-include", required=True, help="folder holding cuda/std/ (libcu++)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import torch

    rows = {"tvm-cuda-fp32": tvm_step_ms(args.library, args.cache_index, args.cuda_include)}
    for mode in ("fp32-no-tf32", "fp32-tf32", "fp16"):
        rows[f"pytorch-{mode}"] = torch_step_ms(args.architecture, mode)
    result = {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "unet_step_median_ms": {k: round(v, 2) for k, v in rows.items()},
        "tflops": {k: round(GFLOP_PER_STEP / v, 1) for k, v in rows.items()},
    }
    json.dump(result, open(args.out, "w"), indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
