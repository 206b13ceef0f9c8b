#!/usr/bin/env bash
# Packs what bench/gpu_bench.sh needs on the GPU machine (no registries there, 64 MiB per call)
# into bench/.carry (git-ignored; the `run` tool carries it):
#
#   bash bench/pack_gpu.sh tools               TVM without its compiler library, the cp312 wheels
#                                              the image lacks, libcu++ headers, the Vulkan loader,
#                                              node + Dawn (bench/pack_node.sh)
#   bash bench/pack_gpu.sh build [config]      the config's cuda libraries (xz) and its WebGPU
#                                              bundle (`doit config=... dist`'s dist/, dist.tar.xz)
#                                              without the weights' shards: they are made there
#                                              from the config's seed, in the order each
#                                              tensor-cache.json names
#   bash bench/pack_gpu.sh variant COMPONENT NAME [config]   the component's current builds
#                                              again, as the variant COMPONENT-NAME (e.g.
#                                              vae_decoder-untuned), to time beside the others
#                                              (e.g. before tuning): gpu_bench.sh CONFIG COMPONENT-NAME
#   bash bench/pack_gpu.sh tvm-runtime DIR     just the runtime-only TVM package, into DIR
#   bash bench/pack_gpu.sh python DIR          the runtime-only TVM and the wheels, into DIR
#                                              (what gpu_env.sh's install_python_packages takes)
#   bash bench/pack_gpu.sh vulkan DIR          the Vulkan loader and glvnd's debs, into DIR/debs
#   bash bench/pack_gpu.sh bundle DIR [config]  the config's WebGPU bundle without its weights'
#                                              shards, as DIR/dist.tar.xz
set -euo pipefail
carry=bench/.carry
config=config/sd-v1-5-random.yaml
components="text_encoder unet vae_decoder"

tvm_runtime() {  # the installed tvm package without lib/libtvm_compiler.so (259 MB) and 3rdparty/
  local site dist
  site=$(python3 -c "import tvm, os; print(os.path.dirname(os.path.dirname(tvm.__file__)))")
  dist=$(cd "$site" && ls -d apache_tvm-*.dist-info)
  tar -C "$site" --exclude=tvm/lib/libtvm_compiler.so --exclude=tvm/3rdparty --exclude='__pycache__' \
    -cf - tvm "$dist" | xz -T0 -9 >"$1/tvm-runtime.tar.xz"
}

python_packages() {  # the runtime-only TVM and the cp312 wheels the image lacks, into $1
  mkdir -p "$1/wheels"
  tvm_runtime "$1"
  rm -f "$1"/wheels/*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$1/wheels" \
    apache-tvm-ffi==0.1.14.post1 diffusers==0.42.1 doit==0.37.0 clip-anytorch==2.6.0 jsonschema==4.26.0 \
    referencing==0.37.0 jsonschema-specifications==2025.9.1 rpds-py==0.30.0
}

vulkan_debs() {  # the Vulkan loader and glvnd's libraries, which NVIDIA's ICD needs, into $1/debs
  mkdir -p "$1/debs"
  (cd "$1/debs" && rm -f ./*.deb && apt-get download -q libvulkan1 libglvnd0 libglx0 libgl1 libegl1 libopengl0 libgles2)
}

bundle() {  # config $2's WebGPU bundle (dist/, which every config shares) without the weights' shards, as $1/dist.tar.xz
  local dist
  dist=$(python3 -c "
import json, sys
from websd.config import load_config
from websd.paths import DIST
config = load_config(sys.argv[1])
built = json.loads((DIST / 'manifest.json').read_text())['build']['config']
if built != config.shown_path:
    sys.exit(f'{DIST} holds the bundle of {built}: run doit config={sys.argv[1]} dist')
print(DIST)" "$2")
  mkdir -p "$1"
  tar -C "$dist" --exclude='params_shard_*.bin' -cf - . | xz -T0 -9 >"$1/dist.tar.xz"
}

case "${1:-}" in
tools)
  python_packages "$carry"
  tar -C /usr/local/cuda/include/cccl -cf - cuda nv | xz -T0 -9 >"$carry/cccl.tar.xz"
  vulkan_debs "$carry"
  bash bench/pack_node.sh "$carry"
  ;;
build | variant)
  if [ "$1" = variant ]; then
    usage="usage: pack_gpu.sh variant COMPONENT NAME [config]"
    component=${2:?$usage} name=${3:?$usage} config=${4:-$config}
    [[ " $components " == *" $component "* ]] || { echo "pack_gpu.sh: no component $component (one of: $components)" >&2; exit 2; }
  else
    config=${2:-$config}
  fi
  build=$(python3 -c "import sys; from websd.config import load_config; from websd.paths import Layout; print(Layout(load_config(sys.argv[1]).build_key).root)" "$config")
  mkdir -p "$carry/cuda" "$carry/webgpu"
  if [ "$1" = variant ]; then
    xz -T0 -9 -c "$build/cuda/$component.so" >"$carry/cuda/$component-$name.so.xz"
    xz -T0 -9 -c "$build/webgpu/$component.wasm" >"$carry/webgpu/$component-$name.wasm.xz"
  else
    bundle "$carry" "$config"
    for component in $components; do
      xz -T0 -9 -c "$build/cuda/$component.so" >"$carry/cuda/$component.so.xz"
    done
  fi
  ;;
tvm-runtime)
  tvm_runtime "${2:?usage: pack_gpu.sh tvm-runtime DIR}"
  ;;
python)
  python_packages "${2:?usage: pack_gpu.sh python DIR}"
  ;;
vulkan)
  vulkan_debs "${2:?usage: pack_gpu.sh vulkan DIR}"
  ;;
bundle)
  bundle "${2:?usage: pack_gpu.sh bundle DIR [config]}" "${3:-$config}"
  ;;
*)
  echo "usage: $0 tools | build [config] | variant COMPONENT NAME [config] | tvm-runtime DIR | python DIR | vulkan DIR | bundle DIR [config]" >&2
  exit 2
  ;;
esac
du -sh "$carry" 2>/dev/null || true
