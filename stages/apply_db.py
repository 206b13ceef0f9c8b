"""Stage apply_db: a schedule for every kernel, per target.

Kernels found in the MetaSchedule database `<database>/<target>/` get their tuned schedule;
on GPU targets the rest get dlight's default GPU schedules (without any, a webgpu build
silently puts every kernel on the wasm host). On llvm, dlight's CPU rules where they apply.
"""

from __future__ import annotations

from pathlib import Path

from stages.task import WEBSD_DIR, stage_task
from websd import relax_io
from websd.config import Config
from websd.paths import Layout
from websd.targets import is_gpu, tvm_target

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def database_files(database: Path, target: str) -> list[Path]:
    """The target's tuning database, if one has been committed."""
    files = [database / target / name for name in DATABASE_FILES]
    return files if all(f.is_file() for f in files) else []


def default_schedule_rules(target: str) -> list:
    from tvm.s_tir import dlight as dl

    if is_gpu(target):
        return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    return [dl.cpu.GEMV(), dl.cpu.Reduction()]


def apply_db(module_in: Path, target: str, database: list[Path], default_schedules: bool, module_out: Path) -> None:
    from tvm import relax
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    mod = relax_io.load_module(module_in)
    with tvm_target(target):
        if database:
            with JSONDatabase(*map(str, database), allow_missing=False):
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        if default_schedules:
            mod = dl.ApplyDefaultSchedule(*default_schedule_rules(target))(mod)
    tuned = "tuned database" if database else "no tuning database"
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
                sources=(__file__, WEBSD_DIR / "targets.py"),
            )
