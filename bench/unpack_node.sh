#!/usr/bin/env bash
# Unpacks bench/pack_node.sh's folder ($2, default bench/.carry) into $1 and prints the node path.
# Then $1/webgpu is the spec's "webgpu_package":
#   NODE=$(bash bench/unpack_node.sh /tmp/node) && "$NODE" bench/webgpu_node.mjs spec.json
set -euo pipefail
DEST=${1:?usage: unpack_node.sh DEST [PACKED_DIR]}
SRC=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.carry}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
if command -v xz >/dev/null; then
  xz -dc "$SRC/node.xz" > "$DEST/node"
  xz -dc "$SRC/webgpu.tar.xz" | tar -C "$DEST" -xf -
else # python's lzma reads xz too
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$SRC/node.xz" "$DEST/node"
  python3 -c 'import lzma, sys, tarfile; tarfile.open(fileobj=lzma.open(sys.argv[1])).extractall(sys.argv[2])' "$SRC/webgpu.tar.xz" "$DEST"
fi
chmod +x "$DEST/node"
echo "unpack_node.sh: node $("$DEST/node" --version), webgpu_package $DEST/webgpu" >&2
echo "$DEST/node"
