#!/usr/bin/env bash
# Installs everything websd needs on a fresh Debian 12 with Python 3.11, as root.
# `./install.sh --test` also installs what the test suite needs.
set -euo pipefail
cd "$(dirname "$0")"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Emscripten compiles TVM's web runtime; Chromium runs the page (and the browser tests).
apt-get install -y -qq emscripten=3.1.6~dfsg-5 chromium >/dev/null

pip() { python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }
pip -e ".[tune]"  # exact pins in pyproject.toml; torch==2.13.0 is the CPU build
# Only for the CLIP BPE file it ships; its own dependencies (torchvision) are not needed.
pip --no-deps clip-anytorch==2.6.0
# pip reads the tilelang sdist's metadata without build isolation (the web runtime's missing
# headers come from that sdist), which needs its build tools present.
pip cmake==4.4.5 scikit-build-core==1.1.2 cython==3.3.1
(cd web && npm ci --no-audit --no-fund --loglevel=error)

if [[ "${1:-}" == "--test" ]]; then
  pip -e ".[test]"
  # Dawn for Node: tests/test_webgpu_node.py runs the GPU benchmark's Node runner without a GPU.
  (cd bench && npm ci --no-audit --no-fund --loglevel=error)
fi
