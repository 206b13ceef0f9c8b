"""`doit tune` on this CPU (target llvm, a few trials): MetaSchedule's best schedules land in
the tuning database after every batch, a second run goes on to the next kernels, apply_db
replays the records on every target that reads that database, matching kernels by
structure, and candidates can run on TVM RPC servers that a tracker hands out."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import doit, layout_of, write_config
from websd import relax_io
from websd.kernels.attention import ATTR
from websd.paths import ROOT, TUNING_DATABASE_FILES


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, Path]:
    """A UNet-only config whose tuning database starts empty, tuned once for one kernel."""
    folder = tmp_path_factory.mktemp("tune")
    database = folder / "tuning_db"
    config = write_config(folder / "tune.yaml", {
        "components": ["unet"],
        "targets": ["llvm", "webgpu"],
        "stages": {
            # Only the database's schedules, so that what is scheduled is what it holds.
            "apply_db": {"database": str(database), "default_schedules": False},
            "tune": {"components": ["unet"], "target": "llvm", "kernels": 1, "trials": 4, "batch": 4, "minutes": 5},
        },
    })
    doit(f"config={config}", "tune")
    return config, database


def records(database: Path) -> list[dict]:
    return [json.loads(line) for line in (database / "database_tuning_record.json").read_text().splitlines()]


def wait_until(condition, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"no {what} after {timeout_s} s")
        time.sleep(0.5)


def scheduled_kernels(config: Path, target: str) -> set[str]:
    """The kernels with a schedule, less the fused attentions (GPU targets get them hand-scheduled)."""
    module = relax_io.load_module(layout_of(config).scheduled("unet", target))
    return {gv.name_hint for gv, f in module.functions.items() if "tirx.is_scheduled" in (f.attrs or {}) and ATTR not in f.attrs}


def test_tune_writes_the_best_record_of_each_kernel(tuned) -> None:
    _, database = tuned
    assert all((database / "llvm" / name).is_file() for name in TUNING_DATABASE_FILES)
    assert len(records(database / "llvm")) == 1


def test_a_second_run_tunes_the_next_kernel(tuned) -> None:
    config, database = tuned
    _, result = doit(f"config={config}", "tune")
    assert re.search(r"llvm: 1 of \d+ kernels already tuned; this run tunes up to 1", result.stdout)
    assert len(records(database / "llvm")) == 2


def test_apply_db_replays_the_database(tuned) -> None:
    config, database = tuned
    doit(f"config={config}", "apply_db:unet@llvm")
    tuned_kernels = scheduled_kernels(config, "llvm")
    assert len(tuned_kernels) == 2
    # webgpu replays no database (CUDA's records lost to our own schedules in Dawn), even where
    # cuda's would match its kernels.
    shutil.copytree(database / "llvm", database / "cuda")
    doit(f"config={config}", "apply_db:unet@webgpu")
    assert scheduled_kernels(config, "webgpu") == set()


def test_failed_measurements_are_reported_and_never_stored(tuned) -> None:
    """A candidate that cannot be built or run in time is named, retried, and not kept: the
    database keeps only real measurements (MetaSchedule records a failure as 1e10 s)."""
    config, database = tuned
    measurements = lambda: sorted(json.dumps(record[1]) for record in records(database / "llvm"))  # noqa: E731
    before = measurements()
    write_config(config, {"stages": {"tune": {"timeout_s": 0.001}}}, base=config)
    _, result = doit(f"config={config}", "tune")
    assert "failed to build or run (not stored), e.g.: LocalBuilder: Timeout" in result.stdout
    assert "no candidate could be measured; trying once more" in result.stdout
    assert measurements() == before
    assert all(record[1][1] != [1e10] for record in records(database / "llvm"))


def test_a_killed_run_keeps_the_batches_it_measured(tuned, tmp_path) -> None:
    """Each batch is merged as soon as it is measured, file by file atomically: a run killed
    during its second batch leaves a valid database holding the first batch's best."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    config, database = tuned
    before = len(records(database / "llvm"))
    write_config(config, {"stages": {"tune": {"strategy": "replay-trace", "trials": 8, "batch": 4, "timeout_s": 300}}},
                 base=config)
    # TMPDIR: the killed run's work folders go where pytest cleans up.
    run = subprocess.Popen([sys.executable, "-m", "doit", f"config={config}", "tune"], cwd=ROOT,
                           env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: len(records(database / "llvm")) > before, 600, "record of the first batch")
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # doit and MetaSchedule's workers
        run.wait()
    assert len(records(database / "llvm")) == before + 1
    assert len(JSONDatabase(work_dir=str(database / "llvm")).get_all_tuning_records()) == before + 1


@pytest.fixture
def rpc_servers(tmp_path) -> tuple[str, Path]:
    """`python3 -m stages.tune serve`: TVM's RPC tracker and two servers (key llvm) on
    127.0.0.1; its address, and the folder of their logs."""
    with socket.socket() as probe:  # a free port for the tracker
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logs, output = tmp_path / "rpc", tmp_path / "serve.txt"
    with output.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "stages.tune", "serve", "--gpus", "2", "--key", "llvm", "--port", str(port), "--logs", str(logs)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "registered at the tracker" in output.read_text() or serve.poll() is not None, 180, "RPC servers")
        assert serve.poll() is None, output.read_text()
        yield f"127.0.0.1:{port}", logs
    finally:
        # serve stops the tracker and servers on SIGTERM; whatever it leaves is killed here.
        left = psutil.Process(serve.pid).children(recursive=True)
        serve.terminate()
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        for process in left:
            if process.is_running():
                process.kill()


def test_tuners_share_the_kernels_through_an_rpc_tracker(tuned, rpc_servers) -> None:
    """With `tracker` and `key`, the candidates run on the RPC servers the tracker holds, as
    many at once as there are servers; with `tuners`, that many processes tune a share of the
    kernels each, measuring on the same servers, and their best records land in the database."""
    config, database = tuned
    tracker, logs = rpc_servers
    before = len(records(database / "llvm"))
    write_config(config, {"stages": {"tune": {"strategy": "evolutionary", "trials": 8, "batch": 8, "timeout_s": 300,
                                               "kernels": 2, "tuners": 2, "tracker": tracker, "key": "llvm"}}}, base=config)
    _, result = doit(f"config={config}", "tune", timeout_s=900)
    assert "this run tunes up to 2 with 2 tuners" in result.stdout
    assert result.stdout.count(f"measuring on 2 RPC server(s) with key 'llvm' at {tracker}") == 2
    assert len(records(database / "llvm")) == before + 2
    sessions = {log.name: log.read_text().count("load_module") for log in logs.glob("server-*.log")}
    assert len(sessions) == 2 and all(sessions.values()), sessions


def test_tuners_need_a_tracker(tmp_path) -> None:
    """Several tuners measuring on this machine's one device would time each other's load."""
    from stages.tune import tune

    with pytest.raises(SystemExit, match="tuners > 1 measure on RPC servers, one candidate at a time each: set tracker and key too"):
        tune([], tmp_path, {"target": "llvm", "tuners": 2})
