"""The build graph's behaviour: task names, incremental reruns, partial builds, crashes.

One config (a copy of the default, native target only: the browser bundle has tests of its
own) is built step by step through this module's tests, which therefore run in order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import doit, layout_of, write_config
from websd.paths import ROOT, Layout

STAGES = ["make_model", "export_fx", "import_relax", "legalize", "apply_db", "memory_plan", "build", "shard_params"]
COMPONENTS = ["text_encoder", "unet", "vae_decoder"]
NATIVE_ONLY = {"targets": ["llvm"]}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("graph") / "graph.yaml", NATIVE_ONLY)


@pytest.fixture(scope="module")
def layout(config: Path) -> Layout:
    return layout_of(config)


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


def test_configs_of_one_name_never_share_a_build(tmp_path: Path) -> None:
    """Two configs named alike in other folders (other seeds) each build their own model."""
    configs = [write_config(tmp_path / folder / "same.yaml", {**NATIVE_ONLY, "model": {"seed": seed}}) for folder, seed in (("a", 1), ("b", 2))]
    for config in configs:
        executed, _ = doit(f"config={config}", "make_model")
        assert executed == ["make_model"]
    first, second = (layout_of(c) for c in configs)
    assert first.root != second.root
    assert first.model.read_text() != second.model.read_text()


def test_dist_follows_the_config(default_build: Path, tmp_path: Path) -> None:
    """dist/ is one folder for every config: a bundle of another config (same components) is
    rebuilt into it, and so is the first one's again."""
    dist = {"WEBSD_DIST": str(tmp_path / "dist")}
    other = write_config(tmp_path / "other.yaml", {"model": {"seed": 1}, "components": ["text_encoder"], "targets": ["webgpu"],
                                                   "stages": {"tune": {"components": ["text_encoder"]}}})
    for config in (default_build, other, default_build):
        executed, _ = doit(f"config={config}", "text_encoder_only", env=dist)
        assert "text_encoder_only" in executed
        manifest = json.loads((tmp_path / "dist" / "manifest.json").read_text())
        # A config in the repository is named relative to it: no local folder in a bundle.
        assert manifest["build"]["config"] == (str(Path(config).resolve()) if config == other else "config/default.yaml")
    executed, _ = doit(f"config={default_build}", "text_encoder_only", env=dist)
    assert executed == []


def test_listing_tasks_needs_no_npm(tmp_path: Path) -> None:
    """Without web/node_modules `doit list` works; the task that installs it says what it needs."""
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, checkout / name)
    assert not (checkout / "web" / "node_modules").exists()
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, but no npm or node
    run = lambda *args: subprocess.run([sys.executable, "-m", "doit", *args], cwd=checkout, capture_output=True, text=True, env=env)
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert "web_packages" in listed.stdout and "build_tokenizer_wasm" in listed.stdout
    needs_npm = run("web_packages")
    assert needs_npm.returncode != 0
    assert "npm not found: install Node.js and npm" in needs_npm.stdout + needs_npm.stderr
    assert "Traceback" not in needs_npm.stdout + needs_npm.stderr
