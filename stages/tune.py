"""Stage tune: MetaSchedule for one component's heaviest kernels, measured where it runs.

Not part of the build: `doit tune` runs on a machine with the tuning target's hardware (for
cuda, an NVIDIA GPU; `bench/tune_on_gpu.sh` runs this module there) and merges the best
schedule per kernel into `tuning_db/<target>/`, which is committed and which apply_db replays.
The kernels are the legalized module's, before any target is chosen, so one database serves
every target that replays it (websd.targets.TUNED_ON: webgpu replays cuda's).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from websd import relax_io
from websd.atomic import atomic_path
from websd.paths import tuning_database
from websd.targets import tuning_target

if TYPE_CHECKING:  # not at run time: the GPU machine runs this module without the config's deps
    from websd.config import Config
    from websd.paths import Layout


def heaviest_kernels(mod, target, count: int) -> list:
    """The `count` kernels with the most floating-point work in one call of `main`, less the
    fused attentions (apply_db gives GPU targets a hand-written kernel for them)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from websd.kernels.attention import ATTR

    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if ATTR not in (t.dispatched[0]["main"].attrs or {})]
    tasks.sort(key=lambda task: task.weight * estimate_tir_flops(task.dispatched[0]), reverse=True)
    return tasks[:count]


# MetaSchedule's time for a candidate that failed to build or run (it still records it).
FAILED_RUN_SECS = 1e10


def measured(record) -> bool:
    """The record holds a real measurement, not a failure."""
    return bool(record.run_secs) and all(float(s) < FAILED_RUN_SECS for s in record.run_secs)


def best_records(databases: list) -> list:
    """The fastest measured record of each kernel found in any of the databases."""
    import tvm_ffi

    best = {}
    for database in databases:
        for record in database.get_all_tuning_records():
            if not measured(record):
                continue
            seconds = sum(float(s) for s in record.run_secs) / len(record.run_secs)
            key = tvm_ffi.structural_hash(record.workload.mod)
            if key not in best or seconds < best[key][0]:
                best[key] = (seconds, record)
    return [record for _, record in best.values()]


def save_database(records: list, folder: Path) -> None:
    from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord

    with atomic_path(folder) as tmp:
        tmp.mkdir()
        database = JSONDatabase(work_dir=str(tmp))
        for record in records:
            workload = database.commit_workload(record.workload.mod)
            database.commit_tuning_record(
                TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info)
            )


def cuda_present() -> bool:
    """Load TVM's CUDA runtime, which the wheel does not load by itself, and ask for a GPU.
    (MetaSchedule's worker processes need it too: bench/tune_on_gpu.sh loads it in every
    Python process it starts.)"""
    import ctypes
    import os

    import tvm

    try:
        ctypes.CDLL(os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
    except OSError:  # no NVIDIA driver (libcuda) on this machine
        return False
    return tvm.cuda().exist


def failure_log():
    """A measure callback that keeps the error of every candidate that failed to build or run:
    MetaSchedule itself only logs them, and records them as if they had run for 1e10 s."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class FailureLog(PyMeasureCallback):
        def __init__(self):
            self.errors: list[str] = []

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for built, ran in zip(builder_results, runner_results):
                error = built.error_msg or ran.error_msg
                if error:
                    self.errors.append(str(error).strip().splitlines()[-1])

    return FailureLog()


def tune(module_in: Path, target: str, kernels: int, trials: int, minutes: float, timeout_s: float, database: Path) -> None:
    """Tune the heaviest `kernels` not yet in `database`, one after another, `trials` candidates
    each, starting no new kernel after `minutes`; merge the best of each into `database`.
    A candidate gets `timeout_s` to build and as long to run; failures are reported, a kernel
    none of whose candidates could be measured is tried once more, and no failure is stored."""
    import os

    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    if target == "cuda" and not cuda_present():
        raise SystemExit("tune: target cuda measures on an NVIDIA GPU and this machine has none "
                         "(bench/tune_on_gpu.sh runs it on the device machine)")
    committed = JSONDatabase(work_dir=str(database)) if tuning_database(database) else None
    tvm_target = tuning_target(target, num_cores=os.cpu_count())
    tasks = heaviest_kernels(relax_io.load_module(module_in), tvm_target, kernels)
    todo = [t for t in tasks if committed is None or not committed.has_workload(t.dispatched[0])]
    print(f"tune: {target}: {len(tasks) - len(todo)} of the {len(tasks)} heaviest kernels already tuned")
    end = time.monotonic() + 60 * minutes
    with tempfile.TemporaryDirectory(prefix="websd-tune-") as work_dir:
        results = JSONDatabase(work_dir=work_dir)
        # Generous timeouts: on a busy machine a build worker's first job (TVM's import) alone
        # can take longer than MetaSchedule's default 30 s.
        builder = ms.builder.LocalBuilder(timeout_sec=timeout_s)
        runner = ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=1, min_repeat_ms=0))
        failures = failure_log()
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), failures]
        for done, task in enumerate(todo):
            if time.monotonic() > end:
                print(f"tune: {minutes} min spent; {len(todo) - done} kernels left for the next run")
                break
            print(f"tune: {task.task_name} ({done + 1}/{len(todo)})", flush=True)
            key = tvm_ffi.structural_hash(task.dispatched[0])
            for attempt in (1, 2):
                failures.errors.clear()
                # One batch of random samples of MetaSchedule's design space: with tens of trials
                # per kernel there is nothing for a cost model to learn from.
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    [task], work_dir, strategy="replay-trace", num_threads="logical"
                )
                ms.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=trials,
                    num_trials_per_iter=trials, builder=builder, runner=runner, cost_model="random",
                    database=results, measure_callbacks=callbacks,
                )
                if failures.errors:
                    print(f"tune: {task.task_name}: {len(failures.errors)} candidate(s) failed to build or run "
                          f"(not stored), e.g.: {failures.errors[0]}")
                if any(measured(r) and tvm_ffi.structural_hash(r.workload.mod) == key for r in results.get_all_tuning_records()):
                    break
                print(f"tune: {task.task_name}: no candidate could be measured" + ("; trying once more" if attempt == 1 else ""))
        records = best_records([results, *([committed] if committed else [])])
    save_database(records, database)
    print(f"tune: {len(records)} kernels in {database}")


def drop_losing_records(database: Path, module: Path, target: str, profile: Path, tuned: str, default: str) -> None:
    """Keep a kernel's record only where it beat the default schedule. `profile` is
    bench/profile_cuda.py's per-kernel time in one step of the `tuned` and the `default` build,
    measured in the same run; `module` the legalized module they were built from (it names the
    kernels). A short search can lose to dlight's schedule."""
    import json

    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    builds = json.loads(Path(profile).read_text())
    time_in = {build: {k["name"]: k["ms"] for k in builds[build]["kernels"]} for build in (tuned, default)}
    tasks = ms.relax_integration.extract_tasks(relax_io.load_module(module), tuning_target(target))
    names = {tvm_ffi.structural_hash(t.dispatched[0]): t.task_name for t in tasks}
    kept = []
    for record in best_records([JSONDatabase(work_dir=str(database))]):
        name = names.get(tvm_ffi.structural_hash(record.workload.mod))
        tuned_ms, default_ms = (time_in[build].get(name) for build in (tuned, default))
        if tuned_ms is not None and default_ms is not None and tuned_ms >= default_ms:
            print(f"tune: dropping {name}: {tuned_ms} ms in the step tuned, {default_ms} ms by default")
        else:
            kept.append(record)
    save_database(kept, database)
    print(f"tune: {len(kept)} kernels kept in {database}")


def task(config: Config, layout: Layout) -> dict:
    options = config.stage("tune")
    database = config.database_path / options["target"]
    return {
        "doc": "MetaSchedule on the tuning target's hardware, merged into tuning_db/ (run on purpose: it needs the GPU)",
        "actions": [(tune, [layout.legalized(options["component"]), options["target"], options["kernels"],
                            options["trials"], options["minutes"], options["timeout_s"], database])],
        "file_dep": [str(layout.legalized(options["component"]))],
        # The database is a committed input of the build, like the config: tuning writes it but
        # does not own it, so no `targets` (doit would otherwise tune whenever apply_db runs).
        "uptodate": [False],
        "verbosity": 2,
    }


def main() -> None:
    """`python3 -m stages.tune`: what `doit tune` runs, for a machine that has the GPU and the
    build's legalized module but not the rest of the build tree; `--drop-losing PROFILE
    TUNED DEFAULT` instead prunes the database with a per-kernel profile."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("module", type=Path, help="a legalized.json")
    parser.add_argument("database", type=Path, help="the tuning_db/<target> folder to merge into")
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--kernels", type=int)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--minutes", type=float, help="stop searching after this long")
    parser.add_argument("--timeout-s", type=float, default=300, help="to build, and to run, one candidate")
    parser.add_argument("--drop-losing", nargs=3, metavar=("PROFILE", "TUNED", "DEFAULT"))
    args = parser.parse_args()
    if args.drop_losing:
        profile, tuned, default = args.drop_losing
        drop_losing_records(args.database, args.module, args.target, Path(profile), tuned, default)
    else:
        tune(args.module, args.target, args.kernels, args.trials, args.minutes, args.timeout_s, args.database)


if __name__ == "__main__":
    main()
