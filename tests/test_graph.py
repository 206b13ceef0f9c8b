"""The build graph's behaviour: task names, incremental reruns, partial builds, crashes.

One config (a copy of the default, native target only: the browser bundle has tests of its
own) is built step by step through this module's tests, which therefore run in order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import doit, write_config
from websd.paths import ROOT, Layout

STAGES = ["make_model", "export_fx", "import_relax", "legalize", "apply_db", "memory_plan", "build", "shard_params"]
COMPONENTS = ["text_encoder", "unet", "vae_decoder"]
NATIVE_ONLY = {"targets": ["llvm"]}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("graph") / "graph.yaml", NATIVE_ONLY)


@pytest.fixture(scope="module")
def layout(config: Path) -> Layout:
    return Layout(config.stem)


def test_task_names(config: Path) -> None:
    _, result = doit(f"config={config}", "list", "--all")
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    for stage in STAGES + ["dist", "text_encoder_only"]:
        assert stage in listed
    for component in COMPONENTS:
        assert f"export_fx:{component}" in listed
        assert f"build:{component}@llvm" in listed


def test_text_encoder_only_builds_nothing_else(config: Path, layout: Layout) -> None:
    executed, _ = doit(f"config={config}", "text_encoder_only")
    assert "build:text_encoder@llvm" in executed
    assert not [task for task in executed if "unet" in task or "vae" in task]
    assert layout.library("text_encoder", "llvm").is_file()
    for component in ("unet", "vae_decoder"):
        assert not layout.component_dir(component).exists()
        assert not layout.library(component, "llvm").exists()


def test_dist_then_nothing_to_do(config: Path, layout: Layout) -> None:
    executed, _ = doit(f"config={config}", "dist")
    assert "build:unet@llvm" in executed and "build:vae_decoder@llvm" in executed
    assert not [task for task in executed if "text_encoder" in task]  # built already
    executed, _ = doit(f"config={config}", "dist")
    assert executed == []


def test_apply_db_change_reruns_exactly_its_dependents(config: Path) -> None:
    write_config(config, {**NATIVE_ONLY, "stages": {"apply_db": {"default_schedules": False}}})
    executed, _ = doit(f"config={config}", "dist")
    expected = {f"{stage}:{c}@llvm" for stage in ("apply_db", "memory_plan", "build") for c in COMPONENTS}
    assert set(executed) == expected


def test_killed_mid_write_leaves_no_target(config: Path, layout: Layout) -> None:
    library = layout.library("unet", "llvm")
    library.unlink()
    # doit in a process that SIGKILLs itself at the moment the library would be renamed into place.
    crash = f"""
import os, signal, sys
rename = os.replace
def killed(src, dst):
    if str(dst) == {str(library)!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst)
os.replace = killed
from doit.doit_cmd import DoitMain
sys.exit(DoitMain().run(["config={config}", "dist"]))
"""
    result = subprocess.run([sys.executable, "-c", crash], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    assert not library.exists()
    executed, _ = doit(f"config={config}", "dist")
    assert executed == ["build:unet@llvm"]
    assert library.is_file()
    assert not list(library.parent.glob(".*.tmp"))
    executed, _ = doit(f"config={config}", "dist")
    assert executed == []
