"""Stage apply_db: a schedule for every kernel, per target.

Kernels found in the MetaSchedule database get their tuned schedule: `<database>/<target>/`
(websd.targets.TUNED_ON: webgpu replays none), unless the record says that the default won
(replayed_records).
On GPU targets the rest get our schedule rules (websd/schedules/) and dlight's (without any,
a webgpu build silently puts every kernel on the wasm host). On llvm, dlight's CPU rules where they apply.
"""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.config import Config
from websd.kernels.attention import schedule_attention
from websd.paths import Layout, tuning_database
from websd.schedules.default import default_schedule_rules
from websd.targets import TUNED_ON, tvm_target


def database_files(database: Path, target: str) -> list[Path]:
    """The tuning database the target replays, if one has been committed."""
    return tuning_database(database / TUNED_ON[target]) if TUNED_ON[target] else []


def replayed_records(files: list[Path]):
    """The records of the database in `files` that replace a default schedule: all but those
    labelled DEFAULT (websd/schedules/space.py), which say that nothing tuned beat it."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase, MemoryDatabase, TuningRecord

    from websd.schedules.space import DEFAULT, label_of

    replayed = MemoryDatabase()
    for record in JSONDatabase(*map(str, files), allow_missing=False).get_all_tuning_records():
        if label_of(record.trace) != DEFAULT:
            workload = replayed.commit_workload(record.workload.mod)
            replayed.commit_tuning_record(TuningRecord(record.trace, workload, record.run_secs, record.target, record.args_info))
    return replayed


def scheduled_kernels(mod) -> list:
    import tvm

    return [gv for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc) and "tirx.is_scheduled" in (f.attrs or {})]


def keep_compiling(tuned, untuned, target: str):
    """Undo the tuned schedules that do not compile for `target`. A record tuned on CUDA can
    still fail WebGPU's codegen (e.g. its buffer vector-type rewrite, for some vectorized
    loads); those kernels get the default schedules instead."""
    import tvm

    for gv in scheduled_kernels(tuned):
        try:
            tvm.compile(tvm.IRModule({"main": tuned[gv].with_attr("global_symbol", "main")}), target=tvm_target(target))
        except Exception as error:  # TVM raises its own InternalError/ValueError kinds
            reason = str(error).strip().splitlines()[-1]
            print(f"apply_db: {gv.name_hint}: the tuned schedule does not compile for {target} ({reason}); default schedule instead")
            tuned[gv] = untuned[gv.name_hint]
    return tuned


def apply_db(module_in: Path, target: str, database: list[Path], default_schedules: bool, module_out: Path,
             matmul_tile: str | None = None, attention_tiles: dict | None = None) -> None:
    """The schedules of `module_in` for `target` into `module_out`. `matmul_tile` and
    `attention_tiles` (per head dim) force tiles, for bench/matmul_tiles.py to time them."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    mod = relax_io.load_module(module_in)
    from_database = 0
    with tvm_target(target):
        if database:
            with replayed_records(database):
                tuned = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
            mod = keep_compiling(tuned, mod, target)
            from_database = len(scheduled_kernels(mod))
        mod = schedule_attention(target, attention_tiles)(mod)  # GPU targets: the hand-scheduled flash-attention kernel
        if default_schedules:
            mod = dl.ApplyDefaultSchedule(*default_schedule_rules(target, matmul_tile))(mod)
    tuned = f"{from_database} kernels from the tuning database" if database else "no tuning database"
    print(f"apply_db: {module_in.parent.name}@{target}: {tuned}, default schedules {'on' if default_schedules else 'off'}")
    relax_io.save_module(mod, module_out)


def tasks(config: Config, layout: Layout):
    options = config.stage("apply_db")
    for component in config.components:
        for target in config.targets:
            database = database_files(config.database_path, target)
            yield stage_task(
                name=f"{component}@{target}",
                doc="tuned schedules from tuning_db/, default schedules for the rest",
                action=(apply_db, [layout.legalized(component), target, database, options["default_schedules"], layout.scheduled(component, target)]),
                file_dep=[layout.legalized(component), *database],
                targets=[layout.scheduled(component, target)],
                options=options,
                tools=("apache-tvm", "apache-tvm-ffi"),
                sources=(__file__, WEBSD_DIR / "targets.py", *sorted((WEBSD_DIR / "kernels").glob("*.py")),
                         *sorted((WEBSD_DIR / "schedules").glob("*.py"))),
            )
