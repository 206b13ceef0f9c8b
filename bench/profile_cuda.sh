#!/usr/bin/env bash
# Per-kernel time of the native CUDA UNet step on the GPU machine (bench/profile_cuda.py), from
# bench/.carry (bench/pack_gpu.sh):   run  bash bench/profile_cuda.sh   carry ["bench/.carry"]
set -euo pipefail
carry=bench/.carry work=/tmp/websd-profile
mkdir -p "$work/site" "$work/cccl"
tar -xJf "$carry/tvm-runtime.tar.xz" -C "$work/site"
python3 -m pip install -q --no-index --no-deps --target "$work/site" "$carry"/wheels/*.whl
tar -xJf "$carry/cccl.tar.xz" -C "$work/cccl"
builds=()
for packed in "$carry"/cuda/unet*.so.xz; do
  name=$(basename "$packed" .so.xz)
  xz -dc "$packed" >"$work/$name.so"
  builds+=("$name=$work/$name.so")
done
cudart=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")
export LD_LIBRARY_PATH="$(find "$cudart" -name 'libcudart.so*' -printf '%h\n' | head -1):${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$work/site:$PWD" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
python3 bench/profile_cuda.py --cache-index "$carry/params/unet/tensor-cache.json" --cuda-include "$work/cccl" \
  --out "$OUT" "${builds[@]}" 2>&1 | tee "$OUT/profile-cuda.log"
