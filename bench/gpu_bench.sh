#!/usr/bin/env bash
# The whole GPU benchmark in one call of the `device` tool (bench/README.md):
#   run: bash bench/gpu_bench.sh [config] [unet variants...]   carry: ["bench/.carry"]
# Unpacks bench/.carry (bench/pack_gpu.sh), makes the config's random weights there, runs
# bench/gpu_bench.py and leaves gpu-bench.{json,md,png} and its log in $OUT.
set -euo pipefail
config=${1:-config/sd-v1-5-random.yaml}
shift || true
carry=bench/.carry work=/tmp/websd-bench
mkdir -p "$work/site" "$work/cccl" "$work/carry/cuda" "$work/carry/webgpu"

# Dawn needs the Vulkan loader, which the image lacks, and NVIDIA's ICD needs glvnd's libraries
# (the device README's recipe); point the loader at the driver where the image keeps it.
for deb in "$carry"/debs/*.deb; do dpkg -x "$deb" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; fi
tar -xJf "$carry/tvm-runtime.tar.xz" -C "$work/site"
python3 -m pip install -q --no-index --no-deps --target "$work/site" "$carry"/wheels/*.whl
tar -xJf "$carry/cccl.tar.xz" -C "$work/cccl"
node=$(bash bench/unpack_node.sh "$work/node" "$carry")
for packed in "$carry"/cuda/*.xz "$carry"/webgpu/*.xz; do
  target=$(basename "$(dirname "$packed")")
  xz -dc "$packed" >"$work/carry/$target/$(basename "$packed" .xz)"
done
cp -r "$carry/params" "$work/carry/"

# TVM's CUDA runtime links libcudart.so.13, which the image has with torch.
cudart=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")
export LD_LIBRARY_PATH="$(find "$cudart" -name 'libcudart.so*' -printf '%h\n' | head -1):${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$work/site:$PWD" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
python3 bench/gpu_bench.py --config "$config" --carry "$work/carry" --node "$node" --node-dir "$work/node" \
  --cuda-include "$work/cccl" --unet-variants "$@" --out "$OUT" 2>&1 | tee "$OUT/gpu-bench.log"
