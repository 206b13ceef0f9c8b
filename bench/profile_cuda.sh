#!/usr/bin/env bash
# Per-kernel time of the native CUDA UNet step on the GPU machine (bench/profile_cuda.py), from
# bench/.carry (bench/pack_gpu.sh):   run  bash bench/profile_cuda.sh   carry ["bench/.carry"]
set -euo pipefail
source bench/gpu_env.sh
carry=bench/.carry work=/tmp/websd-profile
install_python_packages "$carry" "$work/site"
use_tvm_runtime_only "$carry" "$work/cccl"
unxz_into "$carry/cuda/unet*.so.xz" "$work"
builds=()
for library in "$work"/unet*.so; do builds+=("$(basename "$library" .so)=$library"); done
tar -xJf "$carry/dist.tar.xz" -C "$work" ./params/unet/tensor-cache.json
python3 bench/profile_cuda.py --cache-index "$work/params/unet/tensor-cache.json" --cuda-include "$work/cccl" \
  --out "$OUT" "${builds[@]}" 2>&1 | tee "$OUT/profile-cuda.log"
