#!/usr/bin/env bash
# Packs what bench/webgpu_node.mjs needs on the GPU machine (which has no node and no registry)
# into a folder ($1, default bench/.carry, git-ignored; carry it with the `run` tool):
#
#   node.xz         xz -9 of the node binary ($NODE, default /usr/bin/node; v20)
#   webgpu.tar.xz   npm webgpu@0.6.2's package.json, index.js and dist/linux-x64/dawn.node, under
#                   webgpu/ (all it needs: index.js imports Node built-ins only); from bench/node_modules
#                   (`cd bench && npm ci`) or $WEBGPU
#   tvmjs.js        tvmjs, a copy of web/node_modules/@mlc-ai/web-runtime/lib/index.js
#                   (`cd web && npm ci`) or $TVMJS
#
# bench/unpack_node.sh unpacks them there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/bench/.carry}
NODE=${NODE:-/usr/bin/node}
WEBGPU=${WEBGPU:-$ROOT/bench/node_modules/webgpu}
TVMJS=${TVMJS:-$ROOT/web/node_modules/@mlc-ai/web-runtime/lib/index.js}
WEBGPU_VERSION=0.6.2

for f in "$NODE" "$WEBGPU/package.json" "$WEBGPU/index.js" "$WEBGPU/dist/linux-x64/dawn.node" "$TVMJS"; do
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
cp "$TVMJS" "$tmp/tvmjs.js"
for f in node.xz webgpu.tar.xz tvmjs.js; do mv -f "$tmp/$f" "$OUT/$f"; done

echo "packed into $OUT: node $("$NODE" --version), webgpu $version"
for f in node.xz webgpu.tar.xz tvmjs.js; do
  printf '  %-14s %10d bytes (%s)\n' "$f" "$(stat -c %s "$OUT/$f")" "$(du -h "$OUT/$f" | cut -f1)"
done
