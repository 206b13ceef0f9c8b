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
from websd.paths import TUNING_DATABASE_FILES
from websd.targets import tuning_target

if TYPE_CHECKING:  # not at run time: the GPU machine runs this module without the config's deps
    from websd.config import Config
    from websd.paths import Layout


def heaviest_kernels(mod, target, count: int) -> list:
    """The `count` kernels with the most floating-point work in one call of `main`."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    tasks = ms.relax_integration.extract_tasks(mod, target)
    tasks.sort(key=lambda task: task.weight * estimate_tir_flops(task.dispatched[0]), reverse=True)
    return tasks[:count]


def best_records(databases: list) -> list:
    """The fastest record of each kernel found in any of the databases."""
    import tvm_ffi

    best = {}
    for database in databases:
        for record in database.get_all_tuning_records():
            if not record.run_secs:
                continue  # failed to build or run
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


def tune(module_in: Path, target: str, kernels: int, trials: int, minutes: float, database: Path) -> None:
    """Tune the heaviest `kernels` not yet in `database`, one after another, `trials` candidates
    each, starting no new kernel after `minutes`; merge the best of each into `database`."""
    import os

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    committed = JSONDatabase(work_dir=str(database)) if all((database / f).is_file() for f in TUNING_DATABASE_FILES) else None
    tvm_target = tuning_target(target, num_cores=os.cpu_count())
    tasks = heaviest_kernels(relax_io.load_module(module_in), tvm_target, kernels)
    todo = [t for t in tasks if committed is None or not committed.has_workload(t.dispatched[0])]
    print(f"tune: {target}: {len(tasks) - len(todo)} of the {len(tasks)} heaviest kernels already tuned")
    end = time.monotonic() + 60 * minutes
    with tempfile.TemporaryDirectory(prefix="websd-tune-") as work_dir:
        measured = JSONDatabase(work_dir=work_dir)
        builder = ms.builder.LocalBuilder()
        runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=5, repeat=1, min_repeat_ms=0))
        for done, task in enumerate(todo):
            if time.monotonic() > end:
                print(f"tune: {minutes} min spent; {len(todo) - done} kernels left for the next run")
                break
            print(f"tune: {task.task_name} ({done + 1}/{len(todo)})", flush=True)
            # One batch of random samples of MetaSchedule's design space: with tens of trials
            # per kernel there is nothing for a cost model to learn from.
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                [task], work_dir, strategy="replay-trace", num_threads="logical"
            )
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=trials,
                num_trials_per_iter=trials, builder=builder, runner=runner, cost_model="random", database=measured,
            )
        records = best_records([measured, *([committed] if committed else [])])
    save_database(records, database)
    print(f"tune: {len(records)} kernels in {database}")


def task(config: Config, layout: Layout) -> dict:
    options = config.stage("tune")
    database = config.database_path / options["target"]
    return {
        "doc": "MetaSchedule on the tuning target's hardware, merged into tuning_db/ (run on purpose: it needs the GPU)",
        "actions": [(tune, [layout.legalized(options["component"]), options["target"], options["kernels"],
                            options["trials"], options["minutes"], database])],
        "file_dep": [str(layout.legalized(options["component"]))],
        # The database is a committed input of the build, like the config: tuning writes it but
        # does not own it, so no `targets` (doit would otherwise tune whenever apply_db runs).
        "uptodate": [False],
        "verbosity": 2,
    }


def main() -> None:
    """`python3 -m stages.tune`: what `doit tune` runs, for a machine that has the GPU and the
    build's legalized module but not the rest of the build tree."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("module", type=Path, help="a legalized.json")
    parser.add_argument("database", type=Path, help="the tuning_db/<target> folder to merge into")
    parser.add_argument("--target", default="cuda")
    parser.add_argument("--kernels", type=int, required=True)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--minutes", type=float, required=True, help="stop searching after this long")
    args = parser.parse_args()
    tune(args.module, args.target, args.kernels, args.trials, args.minutes, args.database)


if __name__ == "__main__":
    main()
