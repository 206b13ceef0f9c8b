#!/usr/bin/env bash
# Per-kernel time of every native CUDA build in bench/.carry (bench/pack_gpu.sh: each component,
# and variants of any) on the GPU machine (bench/profile_cuda.py), random weights of the bundle's
# shapes; its tables are CUDA-only (bench/gpu_bench.sh puts WebGPU's beside them):
#   run  bash bench/profile_cuda.sh   carry ["bench/.carry"]
set -euo pipefail
source bench/gpu_env.sh
carry=bench/.carry work=/tmp/websd-profile
install_python_packages "$carry" "$work/site"
use_tvm_runtime_only "$carry" "$work/cccl"
unxz_into "$carry/cuda/*.so.xz" "$work/cuda"
mkdir -p "$work/dist"
tar -xJf "$carry/dist.tar.xz" -C "$work/dist" --wildcards ./manifest.json './params/*/tensor-cache.json'
python3 bench/profile_cuda.py --bundle "$work/dist" --cuda-include "$work/cccl" --out "$OUT" "$work"/cuda/*.so \
  2>&1 | tee "$OUT/profile-cuda.log"
