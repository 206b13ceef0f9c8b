#!/usr/bin/env bash
# The page in headless Chromium on the GPU machine (bench/chromium_bench.py; bench/README.md).
# The browser alone is 56 MB as xz: with the rest it exceeds what a call carries, so it travels
# in two calls made back to back, while the machine is still warm:
#
#   bash bench/chromium_bench.sh pack [config]   # here: fill bench/.carry-chromium-{a,b}
#   bash bench/chromium_bench.sh stash           # there, carry bench/.carry-chromium-a
#   bash bench/chromium_bench.sh run [config]    # there, carry bench/.carry-chromium-b: writes
#                                                # chromium.json, chromium.png and logs in $OUT
#
# a: Debian 12's chromium-headless-shell binary (xz). b: what it needs besides (chromium-common's
# resources, the headless paks, SwiftShader for a machine without GPU), every shared library it
# loads that is not glibc's or the compiler's (run links in those the machine lacks), the Vulkan
# loader and glvnd's debs, the runtime-only TVM and the wheels (gpu_bench.prepare makes the
# weights there), and the config's bundle without its weights.
set -euo pipefail
source bench/gpu_env.sh
config=${2:-config/sd-v1-5-random.yaml}
stash=/root/websd-chromium-stash
CHROMIUM_VERSION=156.0.8078.108-1~deb12u1  # bookworm-security; FINDINGS.md ran this one on the H200
# The GPU machine has no fontconfig setup, and the browser aborts without one (Skia's
# SkFontMgr_FontConfigInterface: "Not implemented"): one font and a fonts.conf naming it.
FONT_VERSION=2.37-6
# Files of chromium-common (and headless-shell) the browser reads beside its binary.
RESOURCES=(resources.pak icudtl.dat snapshot_blob.bin v8_context_snapshot.bin locales/en-US.pak headless_lib_data.pak
  headless_lib_strings.pak headless_command_resources.pak libvulkan.so.1 libEGL.so libGLESv2.so libvk_swiftshader.so
  vk_swiftshader_icd.json)
# Every machine has these (and their copies must match its own glibc and compiler runtime).
BASE_LIBRARIES='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s)\.so'

case "${1:-}" in
pack)
  a=bench/.carry-chromium-a b=bench/.carry-chromium-b
  rm -rf "$a" "$b" && mkdir -p "$a" "$b/libraries"
  debs=$(mktemp -d)
  trap 'rm -rf "$debs"' EXIT
  (cd "$debs" && apt-get download -q "chromium-headless-shell=$CHROMIUM_VERSION" "chromium-common=$CHROMIUM_VERSION" \
    "fonts-dejavu-core=$FONT_VERSION")
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$debs/root"; done
  mkdir -p "$b/fonts" && cp "$debs/root/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf" "$b/fonts/"
  browser=$debs/root/usr/lib/chromium
  xz -T0 -9e -c "$browser/chromium-headless-shell" >"$a/chromium-headless-shell.xz"
  tar -C "$browser" -cf - "${RESOURCES[@]}" | xz -T0 -9e >"$b/chromium-resources.tar.xz"
  # The libraries: what the binary needs, transitively (ldd, against this machine's Debian 12
  # copies, which the browser's package depends on), and the NSS modules libnss3 loads by name.
  nss=$(dpkg -L libnss3 | grep -E '/lib(softokn3|freebl3|freeblpriv3|nssckbi|nssdbm3)\.so$')
  for binary in "$browser/chromium-headless-shell" $nss; do
    if ldd "$binary" | grep 'not found' >&2; then echo "chromium_bench.sh: $binary needs libraries this machine lacks" >&2; exit 1; fi
    ldd "$binary" | awk '$3 ~ /^\// {print $1, $3}'
  done | sort -u | grep -Ev "$BASE_LIBRARIES" | while read -r name path; do cp -L "$path" "$b/libraries/$name"; done
  for module in $nss; do cp -L "$module" "$b/libraries/"; done
  # Which package and version each library came from.
  for library in "$b"/libraries/*; do
    owner=$(dpkg -S "*/$(basename "$library")" 2>/dev/null | head -1 | cut -d: -f1)
    echo "$(basename "$library") $owner $(dpkg-query -W -f='${Version}' "$owner")"
  done >"$b/libraries.txt"
  tar -C "$b" -cf - libraries | xz -T0 -9e >"$b/libraries.tar.xz" && rm -rf "$b/libraries"
  bash bench/pack_gpu.sh python "$b"
  bash bench/pack_gpu.sh vulkan "$b"
  bash bench/pack_gpu.sh bundle "$b" "$config"
  du -sh "$a" "$b"
  ;;
stash)
  mkdir -p "$stash"
  xz -dc bench/.carry-chromium-a/chromium-headless-shell.xz >"$stash/chromium-headless-shell"
  chmod +x "$stash/chromium-headless-shell" && ls -l "$stash"
  ;;
run)
  [ -x "$stash/chromium-headless-shell" ] || { echo "no $stash: run 'stash' first, on the same warm machine" >&2; exit 1; }
  carry=bench/.carry-chromium-b work=/tmp/websd-chromium
  rm -rf "$work" && mkdir -p "$work/dist" "$work/carried"
  install_vulkan_loader "$carry"
  install_python_packages "$carry" "$work/site"
  export TVM_USE_RUNTIME_LIB=1  # the carried TVM has no compiler (it only writes the tensor caches here)
  tar -xJf "$carry/chromium-resources.tar.xz" -C "$stash"  # beside the binary, where it looks for them
  tar -xJf "$carry/libraries.tar.xz" -C "$work/carried"
  link_missing_libraries "$work/carried/libraries" "$work/lib"
  tar -xJf "$carry/dist.tar.xz" -C "$work/dist"
  printf '<?xml version="1.0"?>\n<fontconfig><dir>%s</dir><cachedir>%s</cachedir></fontconfig>\n' \
    "$PWD/$carry/fonts" "$work/fontconfig-cache" >"$work/fonts.conf"
  export FONTCONFIG_FILE=$work/fonts.conf
  python3 bench/chromium_bench.py --config "$config" --chromium "$stash/chromium-headless-shell" --library-path "$work/lib" \
    --bundle "$work/dist" --work "$work" --out "$OUT" 2>&1 | tee "$OUT/chromium.log"
  ;;
*)
  echo "usage: $0 pack|stash|run [config]" >&2
  exit 2
  ;;
esac
