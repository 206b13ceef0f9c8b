#!/usr/bin/env bash
# Fused attention vs the unfused chain on the GPU machine (bench/attention_bench.py):
#   bash bench/attention_bench.sh pack     here: bench/.carry-attention (TVM runtime-only, the
#                                          cp312 wheels it needs, libcu++ headers, the builds)
#   run: bash bench/attention_bench.sh run    carry: ["bench/.carry-attention"]
# leaves attention-bench.{json,md} and the log in $OUT.
set -euo pipefail
carry=bench/.carry-attention
case "${1:-}" in
pack)
  mkdir -p "$carry/wheels"
  bash bench/pack_gpu.sh tvm-runtime "$carry"
  rm -f "$carry"/wheels/*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$carry/wheels" \
    apache-tvm-ffi==0.1.14.post1 jsonschema==4.26.0 referencing==0.37.0 jsonschema-specifications==2025.9.1 rpds-py==0.30.0
  tar -C /usr/local/cuda/include/cccl -cf - cuda nv | xz -T0 -9 >"$carry/cccl.tar.xz"
  python3 bench/attention_bench.py build "$carry/build"
  du -sh "$carry"
  ;;
run)
  work=/tmp/websd-attention
  mkdir -p "$work/site" "$work/cccl"
  tar -xJf "$carry/tvm-runtime.tar.xz" -C "$work/site"
  python3 -m pip install -q --no-index --no-deps --target "$work/site" "$carry"/wheels/*.whl
  tar -xJf "$carry/cccl.tar.xz" -C "$work/cccl"
  cudart=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")
  export LD_LIBRARY_PATH="$(find "$cudart" -name 'libcudart.so*' -printf '%h\n' | head -1):${LD_LIBRARY_PATH:-}"
  export PYTHONPATH="$work/site:$PWD" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  python3 bench/attention_bench.py run "$carry/build" --cuda-include "$work/cccl" --out "$OUT" 2>&1 | tee "$OUT/attention-bench.log"
  ;;
*)
  echo "usage: $0 pack | run" >&2
  exit 2
  ;;
esac
