#!/usr/bin/env bash
# Fused attention vs the unfused chain on the GPU machine (bench/attention_bench.py), natively
# and in Node on Dawn, with the tools bench/pack_gpu.sh packs:
#   bash bench/pack_gpu.sh tools && bash bench/attention_bench.sh pack [--config D=...]...   here
#   run: bash bench/attention_bench.sh run     carry: ["bench/.carry"]   (after gpu_bench.sh, or alone)
# leaves attention-bench.{json,md} and the log in $OUT.
set -euo pipefail
carry=bench/.carry
case "${1:-}" in
pack)
  rm -rf "$carry/attention.tmp"
  python3 bench/attention_bench.py build "$carry/attention.tmp" "${@:2}"
  tar -C "$carry/attention.tmp" -cf - . | xz -T0 -9 >"$carry/attention.tar.xz"
  rm -rf "$carry/attention.tmp"
  du -sh "$carry"
  ;;
run)
  source bench/gpu_env.sh
  work=/tmp/websd-attention
  install_vulkan_loader "$carry"
  install_python_packages "$carry" "$work/site"
  use_tvm_runtime_only "$carry" "$work/cccl"
  node=$(bash bench/unpack_node.sh "$work/node" "$carry")
  mkdir -p "$work/build"
  tar -xJf "$carry/attention.tar.xz" -C "$work/build"
  python3 bench/attention_bench.py run "$work/build" --cuda-include "$work/cccl" --node "$node" --node-dir "$work/node" \
    --out "$OUT" 2>&1 | tee "$OUT/attention-bench.log"
  ;;
*)
  echo "usage: $0 pack | run" >&2
  exit 2
  ;;
esac
