"""TVM's web runtime is cached once per machine (~/.cache/websd) for every build tree: builds
that need it at the same time build it once, never read a half-written one, and a rebuild gives
the same bytes (so build_wasm, which depends on them, is not rerun)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stages import build_runtime
from websd.paths import ROOT
from websd.wasm import RUNTIME_BITCODE, RUNTIME_OBJECTS

# A process that ensures the runtime in `out` with a slow stand-in for the emcc build, which
# logs each build it starts.
RACER = """
import sys, time
from pathlib import Path
from stages import build_runtime
from websd.atomic import atomic_path
out, log = Path(sys.argv[1]), Path(sys.argv[2])

def slow_build(out_dir):
    with log.open("a") as f:
        f.write("build\\n")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in build_runtime.RUNTIME_BITCODE + build_runtime.RUNTIME_OBJECTS:
            time.sleep(0.3)
            (tmp / name).write_text(name)

build_runtime.build_runtime = slow_build
build_runtime.ensure_runtime(out)
assert build_runtime.complete(out)
"""


def test_concurrent_builds_build_the_runtime_once(tmp_path: Path) -> None:
    out, log = tmp_path / "cache" / "runtime", tmp_path / "builds.log"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(log)], cwd=ROOT) for _ in range(3)]
    assert [racer.wait(60) for racer in racers] == [0, 0, 0]
    assert log.read_text() == "build\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(RUNTIME_BITCODE + RUNTIME_OBJECTS)


def test_a_rebuild_gives_the_same_bytes(default_build: Path, tmp_path: Path) -> None:
    cached = build_runtime.runtime_dir()  # what default_build's doit dist built or found
    again = tmp_path / cached.name
    build_runtime.ensure_runtime(again)
    for name in RUNTIME_BITCODE + RUNTIME_OBJECTS:
        assert (again / name).read_bytes() == (cached / name).read_bytes(), name
