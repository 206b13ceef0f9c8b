"""`doit tune` on this CPU (target llvm, a few trials): MetaSchedule's best schedules land in
the tuning database, a second run goes on to the next kernels, and apply_db replays the
records on every target that reads that database, matching kernels by structure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import doit, layout_of, write_config
from websd import relax_io
from websd.kernels.attention import ATTR
from websd.paths import TUNING_DATABASE_FILES


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
            "tune": {"component": "unet", "target": "llvm", "kernels": 1, "trials": 4, "minutes": 5},
        },
    })
    doit(f"config={config}", "tune")
    return config, database


def records(database: Path) -> list[dict]:
    return [json.loads(line) for line in (database / "database_tuning_record.json").read_text().splitlines()]


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
    write_config(config, {"stages": {"tune": {"kernels": 2}}}, base=config)
    _, result = doit(f"config={config}", "tune")
    assert "1 of the 2 heaviest kernels already tuned" in result.stdout
    assert len(records(database / "llvm")) == 2


def test_apply_db_replays_the_database(tuned) -> None:
    config, database = tuned
    doit(f"config={config}", "apply_db:unet@llvm")
    tuned_kernels = scheduled_kernels(config, "llvm")
    assert len(tuned_kernels) == 2
    # webgpu replays cuda's database: a record matches its kernel whatever target it was tuned on.
    shutil.copytree(database / "llvm", database / "cuda")
    doit(f"config={config}", "apply_db:unet@webgpu")
    assert scheduled_kernels(config, "webgpu") == tuned_kernels


def test_failed_measurements_are_reported_and_never_stored(tuned) -> None:
    """A candidate that cannot be built or run in time is named, retried, and not kept: the
    database keeps only real measurements (MetaSchedule records a failure as 1e10 s)."""
    config, database = tuned
    measurements = lambda: sorted(json.dumps(record[1]) for record in records(database / "llvm"))  # noqa: E731
    before = measurements()
    write_config(config, {"stages": {"tune": {"kernels": 3, "timeout_s": 0.001}}}, base=config)
    _, result = doit(f"config={config}", "tune")
    assert "failed to build or run (not stored), e.g.: LocalBuilder: Timeout" in result.stdout
    assert "no candidate could be measured; trying once more" in result.stdout
    assert measurements() == before
    assert all(record[1][1] != [1e10] for record in records(database / "llvm"))
