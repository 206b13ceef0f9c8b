# The set-up on the GPU machine (the `device` tool) that gpu_bench.sh, profile_cuda.sh and
# tune_on_gpu.sh share; they source this file. That machine has no registries: everything comes
# from a carried folder that pack_gpu.sh (or tune_on_gpu.sh pack) filled here.

# The carried TVM (tvm-runtime.tar.xz: without its compiler library) and the cp312 wheels the
# image lacks (wheels/*.whl), from carry $1 into the folder $2, importable with the repository.
install_python_packages() {
  local carry=$1 site=$2
  mkdir -p "$site"
  tar -xJf "$carry/tvm-runtime.tar.xz" -C "$site"
  python3 -m pip install -q --no-index --no-deps --target "$site" "$carry"/wheels/*.whl
  export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
}

# TVM's CUDA runtime links libcudart.so.13, which the image has with torch.
use_torch_cudart() {
  local nvidia
  nvidia=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")
  export LD_LIBRARY_PATH="$(find "$nvidia" -name 'libcudart.so*' -printf '%h\n' | head -1):${LD_LIBRARY_PATH:-}"
}

# TVM without its compiler (too big to carry) runs our native CUDA libraries: their kernels are
# compiled at load by NVRTC (gpu_bench.enable_cuda), which wants libcu++'s headers, unpacked
# from carry $1 into $2.
use_tvm_runtime_only() {
  local carry=$1 cccl=$2
  mkdir -p "$cccl"
  tar -xJf "$carry/cccl.tar.xz" -C "$cccl"
  use_torch_cudart
  export TVM_USE_RUNTIME_LIB=1
}

# Dawn needs the Vulkan loader, which the image lacks, and NVIDIA's ICD needs glvnd's libraries
# (debs carried in $1/debs); point the loader at the driver where the image keeps it.
install_vulkan_loader() {
  local deb icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  for deb in "$1"/debs/*.deb; do dpkg -x "$deb" /; done
  ldconfig
  if [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; fi
}

# Each file of $1 (a glob's matches, NAME.xz; none is fine) decompressed into the folder $2 as NAME.
unxz_into() {
  local packed dest=$2
  mkdir -p "$dest"
  for packed in $1; do
    if [ -f "$packed" ]; then xz -dc "$packed" >"$dest/$(basename "$packed" .xz)"; fi
  done
}

# Of the shared libraries in folder $1 (named by soname), those this machine lacks (not in
# ldconfig's cache for x86-64) linked into the folder $2, for LD_LIBRARY_PATH: where the
# machine has a library, its own copy is used.
link_missing_libraries() {
  local library have
  mkdir -p "$2"
  have=$(ldconfig -p | awk '/x86-64/ {print $1}')
  for library in "$1"/*; do
    if ! grep -qxF "$(basename "$library")" <<<"$have"; then ln -sf "$library" "$2/"; fi
  done
  echo "link_missing_libraries: $(find "$2" -maxdepth 1 -type l | wc -l) of $(find "$1" -maxdepth 1 -type f | wc -l) carried libraries used" >&2
}
