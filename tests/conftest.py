"""Shared fixtures: every test builds into one scratch build tree (WEBSD_BUILD), never build/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# Before websd.paths is imported anywhere, so the tests' Layouts and doit agree. Removed when the
# session ends (WEBSD_KEEP_TEST_BUILDS=1 keeps it to look into). The one cache the suite keeps on
# purpose is TVM's web runtime in ~/.cache/websd: it depends only on the TVM version.
SCRATCH = Path(tempfile.mkdtemp(prefix="websd-tests-"))
os.environ["WEBSD_BUILD"] = str(SCRATCH / "build")
os.environ["WEBSD_DIST"] = str(SCRATCH / "dist")

from websd.config import load_config  # noqa: E402
from websd.paths import ROOT, Layout  # noqa: E402

DEFAULT_CONFIG = ROOT / "config" / "default.yaml"


def pytest_sessionfinish(session, exitstatus) -> None:
    if not os.environ.get("WEBSD_KEEP_TEST_BUILDS"):
        shutil.rmtree(SCRATCH, ignore_errors=True)


def layout_of(config: Path) -> Layout:
    """The build tree of a config file."""
    return Layout(load_config(config).build_key)


def conv_function(x_shape, w_shape, stride, padding, before=None, after=None):
    """An IRModule of main(x, w, b) = after(conv2d(before(x), w) + b), b one per output channel,
    as in the UNet (`before`, `after`: Relax ops of one tensor, or None)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x, w = relax.Var("x", relax.TensorType(x_shape, "float32")), relax.Var("w", relax.TensorType(w_shape, "float32"))
    b = relax.Var("b", relax.TensorType((w_shape[0],), "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            h = bb.emit(before(x)) if before else x
            conv = bb.emit(relax.op.nn.conv2d(h, w, strides=stride, padding=padding))
            out = relax.op.add(conv, relax.op.reshape(b, (1, w_shape[0], 1, 1)))
            out = bb.emit_output(after(bb.emit(out)) if after else out)
        bb.emit_func_output(out)
    return bb.get()


def kernels(mod) -> dict:
    """A module's PrimFuncs by name."""
    import tvm

    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def doit(
    *args: str, check: bool = True, env: dict | None = None, timeout_s: float | None = None
) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run doit in the repository (with `env` added to the environment, killed after
    `timeout_s`); return the tasks it executed (not those up to date)."""
    result = subprocess.run(
        [sys.executable, "-m", "doit", *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})},
        timeout=timeout_s,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"doit {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    executed = [line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")]
    return executed, result


def write_config(path: Path, changes: dict, base: Path = DEFAULT_CONFIG) -> Path:
    """A copy of `base` with `changes` merged in (nested dicts merge; the architecture made absolute)."""
    raw = yaml.safe_load(base.read_text())
    raw["model"]["architecture"] = str((base.parent / raw["model"]["architecture"]).resolve())
    raw["stages"]["apply_db"]["database"] = str((base.parent / raw["stages"]["apply_db"]["database"]).resolve())

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(raw, changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (with WebGPU) for the whole session: Playwright's sync API allows
    only one running instance per process."""
    from browser import chromium

    with chromium() as instance:
        yield instance


@pytest.fixture(scope="session")
def default_build() -> Path:
    """The default config, fully built (once per test session)."""
    doit(f"config={DEFAULT_CONFIG}", "dist")
    return DEFAULT_CONFIG
