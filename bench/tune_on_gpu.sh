#!/usr/bin/env bash
# `doit tune` of a config, on the GPU machine (the `device` tool), which has no registry access
# and takes 64 MiB per call. TVM's compiler library alone is 59 MB as xz, so it travels in two
# calls made back to back, while the machine is still warm (bench/README.md: "Tuning"):
#
#   bash bench/tune_on_gpu.sh pack [config]   # here: fill bench/.carry-tune-{a,b}
#   bash bench/tune_on_gpu.sh stash           # there, carry bench/.carry-tune-a
#   bash bench/tune_on_gpu.sh run [config]    # there, carry bench/.carry-tune-b; $OUT/cuda/ is
#                                             # the merged database for tuning_db/cuda/ (xz),
#                                             # $OUT/kernels.jsonl each kernel's outcome
#
# With a `tracker` in the config's stages.tune, `run` first starts that tracker (at its port)
# and one RPC server per GPU of the machine (`python3 -m stages.tune serve`), and measures there.
set -euo pipefail
source bench/gpu_env.sh
config=${2:-config/sd-v1-5-random.yaml}
stash=/root/websd-tune-stash
# A stages.tune option of the config: a list space-separated, nothing for one it leaves out.
option() { python3 -c "import yaml; v = yaml.safe_load(open('$config'))['stages']['tune'].get('$1', ''); print(' '.join(v) if isinstance(v, list) else v)"; }

case "${1:-}" in
pack)
  # The build's legalized modules, the compiler library (xz, split in two), and what the
  # runtime-only bench carry already has: the rest of the tvm package and the cp312 wheels
  # (and tornado, which TVM's RPC tracker needs).
  build=$(python3 -c "import sys; from websd.config import load_config; from websd.paths import Layout; print(Layout(load_config(sys.argv[1]).build_key).root)" "$config")
  a=bench/.carry-tune-a b=bench/.carry-tune-b
  rm -rf "$a" "$b" && mkdir -p "$a" "$b"
  tvm_lib=$(python3 -c "import tvm, os; print(os.path.join(os.path.dirname(tvm.__file__), 'lib'))")
  xz -T0 --lzma2=preset=9e,dict=256MiB,nice=273 -c "$tvm_lib/libtvm_compiler.so" | split -b 31000000 -d - "$b/libtvm_compiler.so.xz.part-"
  mv "$b/libtvm_compiler.so.xz.part-00" "$a/"
  for component in $(option components); do
    xz -9 -c "$build/$component/legalized.json" >"$b/legalized-$component.json.xz"
  done
  bash bench/pack_gpu.sh tvm-runtime "$b"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$b/wheels" apache-tvm-ffi==0.1.14.post1 tornado==6.6.1
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
  modules=()
  for component in $(option components); do
    xz -dc "bench/.carry-tune-b/legalized-$component.json.xz" >"/tmp/legalized-$component.json"
    modules+=("/tmp/legalized-$component.json")
  done
  # TVM's CUDA runtime needs torch's libcudart; the builders load it with the NVRTC compile
  # callback (stages.tune.load_cuda_compiler), the RPC sessions with --load-library.
  use_torch_cudart
  target=$(option target)
  mkdir -p "$OUT/$target"
  cp tuning_db/"$target"/*.json "$OUT/$target/" 2>/dev/null || true  # merge into what is committed
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/tune-gpu.txt"
  flags=()
  for name in strategy trials batch kernels minutes timeout_s tracker key tuners; do
    value=$(option "$name")
    if [ -n "$value" ]; then flags+=("--${name//_/-}" "$value"); fi
  done
  tracker=$(option tracker) key=$(option key)
  export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
  if [ -n "$tracker" ]; then
    python3 -m stages.tune serve --gpus "$(nvidia-smi -L | wc -l)" --key "$key" --port "${tracker##*:}" \
      --logs "$OUT/rpc" >"$OUT/serve.log" 2>&1 &
    serve=$!
    trap 'kill $serve 2>/dev/null && wait $serve' EXIT  # serve stops the tracker and its servers
    until grep -q "registered at the tracker" "$OUT/serve.log"; do
      kill -0 $serve 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
      sleep 1
    done
    tail -1 "$OUT/serve.log"
  fi
  python3 -m stages.tune tune "$OUT/$target" "${modules[@]}" --target "$target" "${flags[@]}" --log "$OUT/kernels.jsonl" 2>&1 \
    | tee "$OUT/tune.log" | grep -v DEBUG
  # The workload table outgrows what a call brings back (11 MB for 140 kernels): xz, for
  # `xz -dc ... > tuning_db/<target>/...` here.
  xz -T0 "$OUT/$target"/*.json
  ;;
*)
  echo "usage: $0 pack|stash|run [config]" >&2
  exit 2
  ;;
esac
