#!/usr/bin/env bash
# Packs what bench/webgpu_node.mjs needs on the GPU machine (which has no node and no registry)
# into a folder ($1, default bench/.carry, git-ignored; carry it with the `run` tool):
#
#   node.xz         xz -9 of the node binary ($NODE, default /usr/bin/node; v20)
#   webgpu.tar.xz   npm webgpu@0.6.2's package.json, index.js and dist/linux-x64/dawn.node, under
#                   webgpu/ (all it needs: index.js imports Node built-ins only); from bench/node_modules
#                   (`cd bench && npm ci`) or $WEBGPU
#
# bench/unpack_node.sh unpacks them there. (tvmjs comes with the bundle: dist/vendor/tvmjs.js.)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/bench/.carry}
NODE=${NODE:-/usr/bin/node}
WEBGPU=${WEBGPU:-$ROOT/bench/node_modules/webgpu}
WEBGPU_VERSION=0.6.2

for f in "$NODE" "$WEBGPU/package.json" "$WEBGPU/index.js" "$WEBGPU/dist/linux-x64/dawn.node"; do
  [ -f "$f" ] || { echo "pack_node.sh: missing $f" >&2; exit 1; }
done
version=$("$NODE" -p "require(process.argv[1]).version" "$WEBGPU/package.json")
[ "$version" = "$WEBGPU_VERSION" ] || { echo "pack_node.sh: $WEBGPU is webgpu $version, want $WEBGPU_VERSION (cd bench && npm ci)" >&2; exit 1; }

mkdir -p "$OUT"
tmp=$(mktemp -d "$OUT/.pack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
xz -9 -T0 -c "$NODE" > "$tmp/node.xz"
tar -C "$WEBGPU" --transform 's,^,webgpu/,' --owner=0 --group=0 -cf - package.json index.js dist/linux-x64/dawn.node \
  | xz -9 -T0 -c > "$tmp/webgpu.tar.xz"
for f in node.xz webgpu.tar.xz; do mv -f "$tmp/$f" "$OUT/$f"; done

echo "packed into $OUT: node $("$NODE" --version), webgpu $version"
for f in node.xz webgpu.tar.xz; do
  printf '  %-14s %10d bytes (%s)\n' "$f" "$(stat -c %s "$OUT/$f")" "$(du -h "$OUT/$f" | cut -f1)"
done
