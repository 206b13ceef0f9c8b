#!/usr/bin/env bash
# `doit tune` of a config, on the GPU machine (the `device` tool), which has no registry access
# and takes 64 MiB per call. TVM's compiler library alone is 59 MB as xz, so it travels in two
# calls made back to back, while the machine is still warm (bench/README.md: "Tuning"):
#
#   bash bench/tune_on_gpu.sh pack [config]   # here: fill bench/.carry-tune-{a,b}
#   bash bench/tune_on_gpu.sh stash           # there, carry bench/.carry-tune-a
#   bash bench/tune_on_gpu.sh run [config]    # there, carry bench/.carry-tune-b; $OUT/cuda/ is
#                                             # the merged database for tuning_db/cuda/
set -euo pipefail
source bench/gpu_env.sh
config=${2:-config/sd-v1-5-random.yaml}
stash=/root/websd-tune-stash
option() { python3 -c "import sys, yaml; print(yaml.safe_load(open('$config'))['stages']['tune']['$1'])"; }

case "${1:-}" in
pack)
  # The build's legalized module, the compiler library (xz, split in two), and what the
  # runtime-only bench carry already has: the rest of the tvm package and the cp312 wheels.
  component=$(option component)
  legalized=$(python3 -c "import sys; from websd.config import load_config; from websd.paths import Layout; print(Layout(load_config(sys.argv[1]).build_key).legalized(sys.argv[2]))" "$config" "$component")
  a=bench/.carry-tune-a b=bench/.carry-tune-b
  rm -rf "$a" "$b" && mkdir -p "$a" "$b"
  tvm_lib=$(python3 -c "import tvm, os; print(os.path.join(os.path.dirname(tvm.__file__), 'lib'))")
  xz -T0 --lzma2=preset=9e,dict=256MiB,nice=273 -c "$tvm_lib/libtvm_compiler.so" | split -b 31000000 -d - "$b/libtvm_compiler.so.xz.part-"
  mv "$b/libtvm_compiler.so.xz.part-00" "$a/"
  xz -9 -c "$legalized" >"$b/legalized.json.xz"
  bash bench/pack_gpu.sh tvm-runtime "$b"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$b/wheels" apache-tvm-ffi==0.1.14.post1
  du -sh "$a" "$b"
  ;;
stash)
  mkdir -p "$stash" && cp bench/.carry-tune-a/* "$stash/" && ls -l "$stash"
  ;;
run)
  [ -f "$stash/libtvm_compiler.so.xz.part-00" ] || { echo "no $stash: run 'stash' first, on the same warm machine" >&2; exit 1; }
  site=/tmp/tune-site && rm -rf "$site"
  install_python_packages bench/.carry-tune-b "$site"
  cat "$stash"/libtvm_compiler.so.xz.part-* bench/.carry-tune-b/libtvm_compiler.so.xz.part-* | xz -dc >"$site/tvm/lib/libtvm_compiler.so"
  xz -dc bench/.carry-tune-b/legalized.json.xz >/tmp/legalized.json
  # Every Python process MetaSchedule starts (the builders and runners too) loads TVM's CUDA
  # runtime (which needs torch's libcudart) and its NVRTC compile callback at start-up.
  use_torch_cudart
  cat >"$site/sitecustomize.py" <<'EOF'
import ctypes, os
import tvm
ctypes.CDLL(os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
import tvm.support.nvcc  # registers tvm_callback_cuda_compile
EOF
  target=$(option target)
  mkdir -p "$OUT/$target"
  cp tuning_db/"$target"/*.json "$OUT/$target/" 2>/dev/null || true  # merge into what is committed
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/tune-gpu.txt"
  python3 -m stages.tune /tmp/legalized.json "$OUT/$target" \
    --target "$target" --kernels "$(option kernels)" --trials "$(option trials)" \
    --minutes "$(option minutes)" 2>&1 | tee "$OUT/tune.log" | grep -v DEBUG
  ;;
*)
  echo "usage: $0 pack|stash|run [config]" >&2
  exit 2
  ;;
esac
