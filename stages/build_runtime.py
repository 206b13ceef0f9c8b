"""Build TVM's web runtime bitcode (the part of every model .wasm that is not the model) with
Emscripten, once per TVM version, into a cache outside the repo.

The apache-tvm wheel ships `tvm/web/` and the runtime sources but lacks a few support headers;
those come from the TVM tree vendored in the PyPI sdist of tilelang, pinned by sha256.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from websd.atomic import atomic_path
from websd.wasm import RUNTIME_BITCODE, RUNTIME_OBJECTS

TILELANG_VERSION = "0.1.14"
TILELANG_SHA256 = "7ae0fba6c63dae80b3c9c5c11a70bb8d7165794994f290f36e2fe87bfb143cfc"
# Headers the web build includes that the wheel lacks, relative to the sdist's vendored TVM root.
SDIST_HEADERS = (
    "3rdparty/compiler-rt/builtin_fp16.h",
    "src/support/arena.h",
    "src/support/base64.h",
    "src/support/bytes_io.h",
    "src/support/ring_buffer.h",
    "src/support/utils.h",
    "include/tvm/support/io.h",
    "include/tvm/support/serializer.h",
)
# TVM 0.27's vm.cc wants tvm::support::NVTXScopedRange here; the sdist has an older header under
# another path and namespace. Profiling ranges mean nothing in a browser, so a no-op is enough.
NVTX_HEADER = """\
#ifndef TVM_SUPPORT_CUDA_NVTX_H_
#define TVM_SUPPORT_CUDA_NVTX_H_
#include <string>
namespace tvm {
namespace support {
class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
};
}  // namespace support
}  // namespace tvm
#endif  // TVM_SUPPORT_CUDA_NVTX_H_
"""


def runtime_dir() -> Path:
    """The cache folder holding the runtime for the installed TVM version, built by this very
    recipe (its digest is part of the name: a changed recipe builds a new folder)."""
    cache = Path(os.environ.get("WEBSD_CACHE") or Path.home() / ".cache" / "websd")
    tvm_version = importlib.metadata.version("apache-tvm")  # without importing TVM: dodo.py stays quick
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
    return cache / "tvm-web-runtime" / f"{tvm_version}-tilelang{TILELANG_VERSION}-{recipe}"


def _download_sdist(dest: Path) -> Path:
    # --no-build-isolation: with isolation pip spends minutes building tilelang's build env just
    # to read its metadata.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", f"tilelang=={TILELANG_VERSION}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / f"tilelang-{TILELANG_VERSION}.tar.gz"
    if proc.returncode != 0 or not sdist.is_file():
        raise RuntimeError(
            f"could not download the tilelang {TILELANG_VERSION} sdist (it supplies TVM headers "
            "the wheel lacks). It needs PyPI access and, since pip prepares its metadata without "
            "build isolation: pip install 'cmake>=3.26' scikit-build-core cython\n"
            f"$ {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != TILELANG_SHA256:
        raise RuntimeError(f"{sdist.name}: sha256 {digest}, expected {TILELANG_SHA256}")
    return sdist


def _stage_tree(root: Path, sdist: Path) -> None:
    """Lay out the TVM source tree that web/Makefile expects (it includes relative to web/..)."""
    tvm_root = Path(importlib.util.find_spec("tvm").origin).parent
    ffi_root = Path(importlib.util.find_spec("tvm_ffi").origin).parent
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(tvm_root / "web" / "emcc", root / "web" / "emcc", ignore=skip)
    shutil.copy(tvm_root / "web" / "Makefile", root / "web" / "Makefile")
    shutil.copytree(tvm_root / "src" / "runtime", root / "src" / "runtime", ignore=skip)
    shutil.copytree(tvm_root / "include", root / "include", ignore=skip)
    # The tvm_ffi package mirrors the 3rdparty/tvm-ffi source layout (include/, src/, 3rdparty/).
    for part in ("include", "src", "3rdparty"):
        shutil.copytree(ffi_root / part, root / "3rdparty" / "tvm-ffi" / part, ignore=skip)

    prefix = f"tilelang-{TILELANG_VERSION}/3rdparty/tvm/"
    with tarfile.open(sdist) as tar:
        for rel in SDIST_HEADERS:
            src = tar.extractfile(prefix + rel)
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read())
    nvtx = root / "include" / "tvm" / "support" / "cuda" / "nvtx.h"
    nvtx.parent.mkdir(parents=True, exist_ok=True)
    nvtx.write_text(NVTX_HEADER)


def _run(command: list[str], what: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"emcc failed on {what}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")


def complete(out_dir: Path) -> bool:
    return all((out_dir / name).is_file() for name in RUNTIME_BITCODE + RUNTIME_OBJECTS)


# Where the runtime is compiled, always: the compiler records source paths in its output, so
# one fixed place makes every build on a machine give the same bytes. One build at a time.
WORK = Path(tempfile.gettempdir()) / "websd-tvm-web-runtime-build"
LOCK = WORK.with_suffix(".lock")


def ensure_runtime(out_dir: Path) -> None:
    """Build the runtime into `out_dir` unless it is there. The cache is shared by every build
    tree on the machine: one build at a time (a lock), and a complete folder is never rebuilt,
    so no build ever reads a runtime another one is rewriting."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we are killed
        if complete(out_dir):
            print(f"build_runtime: {out_dir} was built meanwhile")
            return
        build_runtime(out_dir)


def build_runtime(out_dir: Path) -> None:
    """Compile the three runtime .bc files, and each to a wasm object, in WORK (the caller holds
    the lock), into `out_dir` (renamed into place when all are done)."""
    if shutil.which("emcc") is None:
        raise RuntimeError("emcc not found: install Emscripten (apt-get install emscripten)")
    if shutil.which("make") is None:
        raise RuntimeError("make not found: apt-get install make")
    shutil.rmtree(WORK, ignore_errors=True)  # left by a killed build
    try:
        print(f"downloading tilelang {TILELANG_VERSION} sdist for TVM support headers", flush=True)
        _stage_tree(WORK / "tvm", _download_sdist(WORK / "sdist"))
        web = WORK / "tvm" / "web"
        for i, name in enumerate(RUNTIME_BITCODE, 1):
            print(f"[{i}/{len(RUNTIME_BITCODE)}] emcc {name} ...", flush=True)
            start = time.monotonic()
            # The Makefile's own target, so the flags stay those TVM's web runtime expects.
            _run(["make", "-C", str(web), f"dist/wasm/{name}"], name)
            print(f"[{i}/{len(RUNTIME_BITCODE)}] {name} done in {time.monotonic() - start:.0f} s", flush=True)
        for bitcode, obj in zip(RUNTIME_BITCODE, RUNTIME_OBJECTS):
            print(f"emcc -c {bitcode} -> {obj} ...", flush=True)
            _run(["emcc", "-O3", "-c", str(web / "dist" / "wasm" / bitcode), "-o", str(web / "dist" / "wasm" / obj)], obj)
        with atomic_path(Path(out_dir)) as staging:
            staging.mkdir()
            for name in RUNTIME_BITCODE + RUNTIME_OBJECTS:
                shutil.copy(web / "dist" / "wasm" / name, staging / name)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


def task() -> dict:
    out = runtime_dir()
    return {
        "actions": [(ensure_runtime, [out])],
        "targets": [str(out / name) for name in RUNTIME_BITCODE + RUNTIME_OBJECTS],
        # The folder is keyed by every input, so a complete one is up to date for any build tree.
        "uptodate": [lambda: complete(out)],
        "doc": f"build TVM's web runtime bitcode with Emscripten into {out}",
    }
