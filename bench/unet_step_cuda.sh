#!/usr/bin/env bash
# Run on the GPU machine from the repository root, with bench/.carry holding (see bench/README.md):
# tvm-runtime.tar.xz (the apache-tvm package without its compiler library), the cp312
# apache-tvm-ffi and diffusers wheels, unet.so (build/sd-v1-5-random/cuda/) and its tensor-cache.json.
set -euo pipefail
site=/tmp/site
mkdir -p "$site"
tar -xJf bench/.carry/tvm-runtime.tar.xz -C "$site"
mkdir -p /tmp/cccl && tar -xJf bench/.carry/cccl.tar.xz -C /tmp/cccl
python3 -m pip install -q --no-index --no-deps --upgrade --target "$site" bench/.carry/*.whl
# TVM without libtvm_compiler runs runtime-only; its CUDA runtime wants torch's libcudart.
cudart=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")
export LD_LIBRARY_PATH="$(find "$cudart" -name 'libcudart.so*' -printf '%h\n' | head -1):${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$site" TVM_USE_RUNTIME_LIB=1
python3 bench/unet_step_cuda.py --library bench/.carry/unet.so --cache-index bench/.carry/tensor-cache.json \
  --architecture config/arch/sd15.json --cuda-include /tmp/cccl --out "${OUT:-.}/unet_step_cuda.json"
