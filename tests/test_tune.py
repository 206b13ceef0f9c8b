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

import tvm
from tvm.s_tir.meta_schedule.database import JSONDatabase

from conftest import doit, layout_of, write_config
from stages.apply_db import replayed_records
from websd import relax_io
from websd.kernels.attention import ATTR
from websd.paths import ROOT, TUNING_DATABASE_FILES, tuning_database
from websd.targets import kernel_source, tvm_target


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
    # A record labelled default (nothing beat the default schedule) is not replayed.
    replayed = replayed_records(tuning_database(database / "llvm")).get_all_tuning_records()
    assert len(scheduled_kernels(config, "llvm")) == len(replayed)
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
    """With `tracker` and `key`, the candidates run on the RPC servers the tracker holds; with
    `tuners`, that many processes tune a share of the kernels each, each measuring through a
    session it holds on a server of its own, and their best records land in the database."""
    config, database = tuned
    tracker, logs = rpc_servers
    before = len(records(database / "llvm"))
    write_config(config, {"stages": {"tune": {"strategy": "evolutionary", "trials": 8, "batch": 8, "timeout_s": 300,
                                               "kernels": 2, "tuners": 2, "tracker": tracker, "key": "llvm"}}}, base=config)
    _, result = doit(f"config={config}", "tune", timeout_s=900)
    assert "this run tunes up to 2 with 2 tuners" in result.stdout
    assert result.stdout.count(f"measuring on 1 of the 2 RPC server(s) with key 'llvm' at {tracker}") == 2
    assert len(records(database / "llvm")) == before + 2
    # serve's check of each server, then one held session that loads every candidate
    sessions = {log.name: log.read_text().count("start serving") for log in logs.glob("server-*.log")}
    loaded = {log.name: log.read_text().count("load_module") for log in logs.glob("server-*.log")}
    assert sessions == {"server-0.log": 2, "server-1.log": 2} and min(loaded.values()) > 1, (sessions, loaded)


def test_tuners_need_a_tracker(tmp_path) -> None:
    """Several tuners measuring on this machine's one device would time each other's load."""
    from stages.tune import tune

    with pytest.raises(SystemExit, match="tuners > 1 measure on RPC servers, one candidate at a time each: set tracker and key too"):
        tune([], tmp_path, {"target": "llvm", "tuners": 2})


def cuda_kernels(config: Path) -> tuple:
    """A convolution (a GEMM: our tiles) and a kernel we have no tiles for, of the tiny UNet, as
    MetaSchedule's tasks for cuda."""
    from stages.tune import kernels_by_weight
    from websd.schedules.matmul import gemm_of
    from websd.targets import tuning_target

    tasks = kernels_by_weight([layout_of(config).legalized("unet")], tuning_target("cuda"))
    gemm = next(t for t in tasks if t.task_name.startswith("fused_conv2d") and gemm_of(t.dispatched[0]["main"]))
    other = next(t for t in tasks if gemm_of(t.dispatched[0]["main"]) is None)  # the heaviest
    return gemm, other


def test_a_gemms_design_space_is_its_webgpu_default_and_our_tiles(tuned) -> None:
    """Labelled in their traces: the WebGPU build's schedule and each tile of ours that
    schedules the kernel differently; all compile for webgpu."""
    import tvm_ffi

    from websd.schedules.default import default_schedule
    from websd.schedules.space import DEFAULT, TUNING_TILES, label_of, our_schedules

    config, _ = tuned
    gemm, other = cuda_kernels(config)
    func = gemm.dispatched[0]["main"]
    schedules = our_schedules(func, "cuda")
    labels = [label_of(s.trace) for s in schedules]
    assert labels[0] == DEFAULT and set(labels[1:]) < set(TUNING_TILES) and len(labels) == len(TUNING_TILES)
    unlabelled = default_schedule(func, "webgpu").mod
    assert tvm_ffi.structural_hash(unlabelled) != tvm_ffi.structural_hash(schedules[0].mod)  # the label
    for schedule in schedules:
        assert "@compute" in kernel_source(tvm.compile(schedule.mod, tvm_target("webgpu")), "webgpu")
    assert [label_of(s.trace) for s in our_schedules(other.dispatched[0]["main"], "cuda")] == [DEFAULT]


def test_cuda_tuning_measures_the_default_beside_the_alternatives(tuned, tmp_path, monkeypatch) -> None:
    """doit tune for cuda (here with a runner that makes times up: no GPU): a GEMM's default and
    our tiles in one batch, another kernel's default and MetaSchedule's samples; each kernel's
    fastest lands in the database, its outcome in the log, and apply_db replays the records
    that beat the default, not the others."""
    import random

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    import stages.tune
    from websd.schedules.space import DEFAULT, METASCHEDULE, TUNING_TILES, label_of

    times = random.Random(0)

    @derived_object
    class Measured(ms.runner.PyRunnerFuture):
        def __init__(self, seconds):
            super().__init__()
            self.seconds = seconds

        def done(self):
            return True

        def result(self):
            return ms.runner.RunnerResult([self.seconds], None)

    @derived_object
    class MadeUpTimes(ms.runner.PyRunner):
        def run(self, runner_inputs):
            return [Measured(times.uniform(1e-3, 2e-3)) for _ in runner_inputs]

    monkeypatch.setattr(stages.tune, "runner", lambda options: MadeUpTimes())
    config, _ = tuned
    kernels = cuda_kernels(config)
    database, work, log = tmp_path / "cuda", tmp_path / "work", tmp_path / "tune.jsonl"
    database.mkdir(), work.mkdir()
    options = {"target": "cuda", "strategy": "evolutionary", "trials": 4, "batch": 4, "timeout_s": 300}
    stages.tune.tune_kernels(list(kernels), work, database, [], options, time.monotonic() + 1200, 2, log)
    outcomes = {line["kernel"]: line for line in map(json.loads, log.read_text().splitlines())}
    gemm, other = (outcomes[task.task_name] for task in kernels)
    # (one tile is the default's)
    assert DEFAULT in gemm["by_label_ms"] and set(gemm["by_label_ms"]) - {DEFAULT} < set(TUNING_TILES)
    assert len(gemm["by_label_ms"]) == len(TUNING_TILES)
    assert set(other["by_label_ms"]) == {DEFAULT, METASCHEDULE}
    for outcome in outcomes.values():
        assert outcome["fastest_ms"] == min(outcome["by_label_ms"].values())
        assert outcome["fastest"] == min(outcome["by_label_ms"], key=outcome["by_label_ms"].get)
    stored = [label_of(r.trace) for r in JSONDatabase(work_dir=str(database)).get_all_tuning_records()]
    assert sorted(stored) == sorted(o["fastest"] for o in outcomes.values())
    replayed = [label_of(r.trace) for r in replayed_records(tuning_database(database)).get_all_tuning_records()]
    assert sorted(replayed) == sorted(label for label in stored if label != DEFAULT)
