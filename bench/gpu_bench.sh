#!/usr/bin/env bash
# The whole GPU benchmark in one call of the `device` tool (bench/README.md):
#   run: bash bench/gpu_bench.sh [config] [variants...] [gpu_bench.py options]   carry: ["bench/.carry"]
# Unpacks bench/.carry (bench/pack_gpu.sh): the cuda libraries and the WebGPU bundle, whose
# weights bench/gpu_bench.py makes there from the config's seed, and the variants, other builds
# of a component named <component>-<name> (e.g. unet-untuned, vae_decoder-tile-128x64-vec4x4-k16:
# pack_gpu.sh variant, matmul_tiles.py); leaves gpu-bench.{json,md,png} and its log in $OUT, and
# the per-kernel profiles as profiles.tar.gz.
set -euo pipefail
source bench/gpu_env.sh
config=${1:-config/sd-v1-5-random.yaml}
shift || true
carry=bench/.carry work=/tmp/websd-bench

install_vulkan_loader "$carry"
install_python_packages "$carry" "$work/site"
use_tvm_runtime_only "$carry" "$work/cccl"
node=$(bash bench/unpack_node.sh "$work/node" "$carry")
unxz_into "$carry/cuda/*.xz" "$work/carry/cuda"
unxz_into "$carry/webgpu/*.xz" "$work/carry/webgpu"
mkdir -p "$work/carry/dist"
tar -xJf "$carry/dist.tar.xz" -C "$work/carry/dist"

python3 bench/gpu_bench.py --config "$config" --carry "$work/carry" --node "$node" --node-dir "$work/node" \
  --cuda-include "$work/cccl" --variants "$@" --out "$OUT" 2>&1 | tee "$OUT/gpu-bench.log"
# The device tool brings back at most 8 files of $OUT: the per-kernel profiles come as one.
if compgen -G "$OUT/profile-*" >/dev/null; then
  (cd "$OUT" && tar -czf profiles.tar.gz profile-* && rm -f profile-*)
fi
