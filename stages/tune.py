"""Stage tune: MetaSchedule for every kernel of the chosen components, measured where it runs:
each kernel's default schedule against our other tiles for it or MetaSchedule's own space
(websd/schedules/space.py).

Not part of the build: `doit tune` runs on a machine with the tuning target's hardware (for
cuda, an NVIDIA GPU; `bench/tune_on_gpu.sh` runs this module there), or measures on TVM RPC
servers that a tracker hands out (`serve` starts them, one per GPU), and merges the best
schedule per kernel into `tuning_db/<target>/`, which is committed and which apply_db replays.
The kernels are the legalized modules', before any target is chosen, so a database could serve
any target whose kernels it matches; which target replays which is websd.targets.TUNED_ON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from websd import relax_io
from websd.atomic import atomic_path
from websd.paths import TUNING_DATABASE_FILES, tuning_database
from websd.targets import TUNABLE, TUNING_STRATEGIES, tuning_target

if TYPE_CHECKING:  # not at run time: the GPU machine runs this module without the config's deps
    from websd.config import Config
    from websd.paths import Layout


def kernels_by_weight(modules: list[Path], target) -> list:
    """Every kernel of the modules, once each, the most floating-point work per call of its
    module's `main` first, less the fused attentions (apply_db gives GPU targets a hand-written
    kernel for them)."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    from websd.kernels.attention import ATTR

    kernels = {}
    for module in modules:
        for task in ms.relax_integration.extract_tasks(relax_io.load_module(module), target):
            if ATTR not in (task.dispatched[0]["main"].attrs or {}):
                kernels.setdefault(tvm_ffi.structural_hash(task.dispatched[0]), task)
    return sorted(kernels.values(), key=lambda task: task.weight * estimate_tir_flops(task.dispatched[0]), reverse=True)


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


def tuned_kernels(databases: list) -> set[int]:
    """The structural hashes of the kernels that have a measured record (a workload alone is
    not a tuned kernel: save_database keeps the rows of kernels whose records it dropped)."""
    import tvm_ffi

    return {tvm_ffi.structural_hash(record.workload.mod) for record in best_records(databases)}


def save_database(records: list, folder: Path) -> None:
    """Make `records` the database in `folder` (one labelled default keeps its label alone:
    websd.schedules.space.default_marker), so that a run killed at any moment leaves a valid one: each file is replaced atomically, the workload table first, and it keeps every
    row it had (records point at rows by number), so the old records still match it until the
    new ones replace them."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord, Workload

    from websd.schedules.space import DEFAULT, default_marker, label_of

    workloads_file, records_file = (Path(folder) / name for name in TUNING_DATABASE_FILES)
    rows = workloads_file.read_text().splitlines() if workloads_file.is_file() else []
    # The workload table is renamed into place first: the inner context closes first.
    with atomic_path(records_file) as new_records, atomic_path(workloads_file) as new_workloads:
        database = JSONDatabase(str(new_workloads), str(new_records))
        for row in rows:
            database.commit_workload(Workload.from_json(json.loads(row)).mod)
        for record in records:
            workload = database.commit_workload(record.workload.mod)
            trace = default_marker(record.workload.mod) if label_of(record.trace) == DEFAULT else record.trace
            database.commit_tuning_record(TuningRecord(trace, workload, record.run_secs, record.target, record.args_info))


def cuda_runtime() -> str:
    """TVM's CUDA runtime library, which the wheel does not load by itself."""
    import tvm

    return os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")


def load_cuda_runtime() -> bool:
    """Load TVM's CUDA runtime; False where it cannot be (no NVIDIA driver, libcuda, here)."""
    import ctypes

    try:
        ctypes.CDLL(cuda_runtime(), ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def load_cuda_compiler() -> None:
    """What a process that builds CUDA candidates needs: the compile callback of
    tvm.support.nvcc (NVRTC, or nvcc where there is one), and TVM's CUDA runtime where there is
    a driver (the candidates are then CUDA modules, else CUDA source, as on this CPU machine)."""
    import tvm.support.nvcc  # noqa: F401  (registers tvm_callback_cuda_compile)

    load_cuda_runtime()


def cuda_present() -> bool:
    """Whether this machine has an NVIDIA GPU that TVM's CUDA runtime can reach."""
    import tvm

    return load_cuda_runtime() and tvm.cuda().exist


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


def merge_each_batch(folder: Path, committed: list, results):
    """A measure callback that merges the best records so far into the database in `folder`
    after every batch, so that a run killed or stopped loses at most the batch in flight.
    It runs after MetaSchedule's own callbacks, which put the batch into `results`."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class MergeEachBatch(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            save_database(best_records([*committed, results]), folder)

    return MergeEachBatch()


def until(deadline: float, strategy):
    """`strategy`, proposing no more batches once time.monotonic() passes `deadline`: the task
    scheduler then ends the kernel. (It has no deadline of its own, and a measure callback
    cannot stop it.)"""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class UntilDeadline(PySearchStrategy):
        def __init__(self, inner):
            self.inner = inner

        def _initialize_with_tune_context(self, context):
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, *args):
            self.inner.pre_tuning(*args)

        def post_tuning(self):
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            return None if time.monotonic() > deadline else self.inner.generate_measure_candidates()

        def notify_runner_results(self, measure_candidates, results):
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return UntilDeadline(self.inner.clone())

    return UntilDeadline(strategy)


def cost_model(strategy: str, cores: int):
    """XGBoost's where the evolutionary search can have it (the `tune` extra), else random
    predictions (the evolutionary search then still breeds from the best measured)."""
    from tvm.s_tir import meta_schedule as ms

    if strategy == "replay-trace":
        print("tune: replay-trace: random samples of the design space, no cost model")
        return ms.cost_model.CostModel.create("random")
    try:
        import xgboost  # noqa: F401
    except ImportError:
        print("tune: evolutionary search, random cost model (xgboost is not installed)")
        return ms.cost_model.CostModel.create("random")
    print("tune: evolutionary search, XGBoost cost model")
    return readable_only(ms.cost_model.CostModel.create("xgb", num_tuning_cores=cores))


def readable_only(model):
    """`model` (XGBoost's), learning from and scoring only the candidates whose features
    MetaSchedule can extract; random scores for the others. Its feature extractor rejects a
    kernel with a block under blockIdx and outside any threadIdx, as dlight's reductions leave
    their epilogue (e.g. a mean's division), and fails the whole batch."""
    import numpy as np
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.cost_model import PyCostModel

    guess = ms.cost_model.CostModel.create("random")

    def readable(context, candidate) -> bool:
        try:
            model.extractor.extract_from(context, [candidate])
        except RuntimeError:
            return False
        return True

    @derived_object
    class ReadableOnly(PyCostModel):
        def load(self, path: str) -> None:
            model.load(path)

        def save(self, path: str) -> None:
            model.save(path)

        def update(self, context, candidates, results) -> None:
            kept = [(c, r) for c, r in zip(candidates, results) if readable(context, c)]
            if kept:
                model.update(context, *map(list, zip(*kept)))

        def predict(self, context, candidates) -> np.ndarray:
            try:
                return model.predict(context, candidates)
            except RuntimeError:  # one of them is unreadable: score each on its own
                return np.concatenate([model.predict(context, [c]) if readable(context, c) else guess.predict(context, [c])
                                       for c in candidates])

    return ReadableOnly()


def search_strategy(name: str):
    """MetaSchedule's search strategy `name`. The evolutionary search starts from whatever it
    can sample (MetaSchedule's default asks for 50 distinct candidates, and a matmul's design
    space is a dozen fixed schedules), from a population of 64, bred twice."""
    from tvm.s_tir import meta_schedule as ms

    if name == "evolutionary":
        return ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=1, genetic_num_iters=2)
    return ms.search_strategy.SearchStrategy.create(name)


def report(task, results, log: Path | None) -> None:
    """The kernel's default schedule against the fastest of its candidates in `results`, named
    by their labels (websd/schedules/space.py): printed, and added to `log` as a JSON line."""
    from websd.schedules.space import DEFAULT, label_of

    fastest: dict[str, float] = {}
    workload = results.commit_workload(task.dispatched[0])
    for record in results.get_top_k(workload, 1 << 20):
        if measured(record):
            label, milliseconds = label_of(record.trace), 1e3 * sum(map(float, record.run_secs)) / len(record.run_secs)
            fastest[label] = min(milliseconds, fastest.get(label, math.inf))
    if not fastest:
        return
    best = min(fastest, key=fastest.get)
    default = fastest.get(DEFAULT)
    against = f"default {default:.4f} ms" if default is not None else "default not measured"
    print(f"tune: {task.task_name}: {against}, fastest {best} {fastest[best]:.4f} ms ({len(fastest)} kinds measured)")
    if log is not None:
        line = {"kernel": task.task_name, "default_ms": default, "fastest": best, "fastest_ms": fastest[best],
                "by_label_ms": fastest}
        with open(log, "a") as out:  # one write per line: the tuners append to it at once
            out.write(json.dumps(line) + "\n")


def evaluator_config():
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.EvaluatorConfig(number=5, repeat=1, min_repeat_ms=0)


def rpc_config(tracker: str, key: str, timeout_s: float):
    """MetaSchedule's RPC settings for the servers registered under `key` with the tracker at
    `tracker` (host:port); `timeout_s` bounds reaching the tracker and each session."""
    from tvm.s_tir import meta_schedule as ms

    host, port = tracker.rsplit(":", 1)
    return ms.runner.RPCConfig(
        tracker_host=host, tracker_port=int(port), tracker_key=key, session_timeout_sec=math.ceil(timeout_s)
    )


def runner(options: dict):
    """Where candidates run: this machine, or (with a tracker) the RPC servers it holds. Each of
    the `tuners` processes measures on servers // tuners of them at once, each through a session
    it holds (held_session)."""
    from tvm.s_tir import meta_schedule as ms

    from websd import held_session

    if not options.get("tracker"):
        return ms.runner.LocalRunner(timeout_sec=options["timeout_s"], evaluator_config=evaluator_config())
    config = rpc_config(options["tracker"], options["key"], options["timeout_s"])
    try:
        servers = config.count_num_servers(allow_missing=False)
    except ValueError as error:  # no tracker there, or no server with the key
        raise SystemExit(f"tune: {error}\n(`python3 -m stages.tune serve` starts a tracker and servers)") from None
    tuners = options.get("tuners", 1)
    if servers < tuners:  # a tuner without a server to hold would wait for one forever
        raise SystemExit(f"tune: {tuners} tuners hold a session on an RPC server each, and the tracker has {servers} "
                         f"with key {options['key']!r}: set tuners to at most {servers}")
    print(f"tune: measuring on {servers // tuners} of the {servers} RPC server(s) with key {options['key']!r} "
          f"at {options['tracker']}")
    return ms.runner.RPCRunner(config, evaluator_config(), max_workers=servers // tuners,
                               f_create_session=held_session.held_session,
                               f_upload_module=held_session.upload_under_own_name,
                               f_run_evaluator=held_session.measure_or_drop_session,
                               f_cleanup=held_session.remove_upload)


def tune(modules: list[Path], database: Path, options: dict, log: Path | None = None) -> None:
    """Tune the kernels of `modules` that `database` lacks, heaviest first, at most
    options["kernels"] of them (all without it): `trials` candidates each, measured `batch` at
    a time, starting no batch after `minutes`; merge the best of each into `database` after
    every batch. A candidate gets `timeout_s` to build and as long to run; failures are
    reported, a kernel none of whose candidates could be measured is tried once more, and no
    failure is stored. With `tuners` > 1, that many processes (`tuner`) tune every tuners-th
    kernel each, all measuring on the tracker's servers, and this one merges what they find
    into `database` as they go. `options` are the config's `stages.tune`; each kernel's default
    schedule against its fastest candidate is printed and added to `log`."""
    import tvm_ffi
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    target, tuners = options["target"], options.get("tuners", 1)
    if tuners > 1 and not options.get("tracker"):
        # One GPU measuring several tuners' candidates at once would time them against each other.
        raise SystemExit("tune: tuners > 1 measure on RPC servers, one candidate at a time each: "
                         "set tracker and key too (`python3 -m stages.tune serve` starts them)")
    if target == "cuda" and not options.get("tracker") and not cuda_present():
        raise SystemExit("tune: target cuda measures on an NVIDIA GPU and this machine has none "
                         "(bench/tune_on_gpu.sh runs it on the device machine; a tracker option measures elsewhere)")
    committed = [JSONDatabase(work_dir=str(database))] if tuning_database(database) else []
    kernels, missing = kernels_to_tune(modules, committed, options)
    todo = missing[: options.get("kernels")]
    print(f"tune: {target}: {len(kernels) - len(missing)} of {len(kernels)} kernels already tuned; "
          f"this run tunes up to {len(todo)}" + (f" with {tuners} tuners" if tuners > 1 else ""))
    end = time.monotonic() + 60 * options["minutes"]
    with tempfile.TemporaryDirectory(prefix="websd-tune-") as work_dir:
        if tuners == 1:
            tune_kernels(todo, Path(work_dir), database, committed, options, end, os.cpu_count(), log)
        else:
            run_tuners(modules, database, committed, Path(work_dir), options, log)
        tuned = tuned_kernels([JSONDatabase(work_dir=str(database))]) if tuning_database(database) else set()
    untuned = sum(tvm_ffi.structural_hash(task.dispatched[0]) not in tuned for task in kernels)
    spent = f"{options['minutes']} min spent; " if time.monotonic() > end else ""
    print(f"tune: {len(tuned)} kernels in {database}; {spent}{untuned} left for the next run")


def kernels_to_tune(modules: list[Path], committed: list, options: dict) -> tuple[list, list]:
    """Every kernel of the modules, heaviest first, and those of them without a record in
    `committed`. The same on every call with the same inputs: each tuner takes its share of
    the second list by position."""
    import tvm_ffi

    tuned = tuned_kernels(committed)
    kernels = kernels_by_weight(modules, tuning_target(options["target"], num_cores=os.cpu_count()))
    return kernels, [task for task in kernels if tvm_ffi.structural_hash(task.dispatched[0]) not in tuned]


def tune_kernels(todo: list, work_dir: Path, folder: Path, committed: list, options: dict, end: float, cores: int,
                 log: Path | None) -> None:
    """MetaSchedule for each kernel of `todo` in turn, over its design space
    (websd/schedules/space.py), until time.monotonic() passes `end`, with `cores` CPU cores for
    the search and the builds; after every batch the best records of `committed` and of this
    run go into the database in `folder`; each kernel's outcome is reported (and added to `log`)."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    from websd.schedules.space import has_tiles, metaschedule_space, our_schedules, our_space

    search_cost_model = cost_model(options["strategy"], cores)
    builder = pooled_builder(cores, options["timeout_s"], options["target"])
    measure = runner(options)
    results = JSONDatabase(work_dir=str(work_dir))
    failures = failure_log()
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), failures,
                 merge_each_batch(folder, committed, results)]
    target = options["target"]
    for done, task in enumerate(todo):
        if time.monotonic() > end:
            break
        print(f"tune: {task.task_name} ({done + 1}/{len(todo)})", flush=True)
        func, key = task.dispatched[0]["main"], tvm_ffi.structural_hash(task.dispatched[0])
        # Ours first, all in one batch (the default among them); then, where we have no tiles,
        # MetaSchedule's own search.
        ours = our_schedules(func, target)
        searches = [(our_space(ours, target), len(ours), len(ours))]
        if not has_tiles(func, target):
            searches.append((metaschedule_space(target), options["trials"], options["batch"]))
        for attempt in (1, 2):
            failures.errors.clear()
            for space, trials, batch in searches:
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    [task], str(work_dir), space=space, strategy=until(end, search_strategy(options["strategy"])),
                    num_threads=cores,
                )
                try:
                    ms.tune_tasks(
                        tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
                        num_trials_per_iter=batch, builder=builder, runner=measure,
                        cost_model=search_cost_model, database=results, measure_callbacks=callbacks,
                    )
                except Exception as error:  # its rules can fail a kernel (a ScheduleError): the next one
                    print(f"tune: {task.task_name}: the search stopped: {str(error).strip().splitlines()[-1]}")
            if failures.errors:
                print(f"tune: {task.task_name}: {len(failures.errors)} candidate(s) failed to build or run "
                      f"(not stored), e.g.: {failures.errors[0]}")
            if key in tuned_kernels([results]) or time.monotonic() > end:
                report(task, results, log)
                break
            print(f"tune: {task.task_name}: no candidate could be measured" + ("; trying once more" if attempt == 1 else ""))


def build_candidate(mod, target) -> str:
    """What MetaSchedule's LocalBuilder does with a candidate in a worker: compile, export."""
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    return default_export(default_build(mod, target, None))


def pooled_builder(workers: int, timeout_s: float, target: str):
    """MetaSchedule's LocalBuilder, its worker processes kept from batch to batch. It starts
    them afresh for every batch, and each imports TVM: with 16 tuners on the 4-GPU machine,
    about 40 s a batch before the first build (bench/results/tuning/README.md)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s,
                                          initializer=load_cuda_compiler if target == "cuda" else None)

        def build(self, build_inputs):
            results = []
            for built in self.pool.map_with_error_catching(lambda i: build_candidate(i.mod, i.target), build_inputs):
                if built.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(built.value, None))
                elif built.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {timeout_s} seconds"))
                else:
                    results.append(BuilderResult(None, f"LocalBuilder: An exception occurred\n{built.value}"))
            return results

    return PooledBuilder()


def run_tuners(modules: list[Path], database: Path, committed: list, work_dir: Path, options: dict, log: Path | None) -> None:
    """options["tuners"] processes `python3 -m stages.tune tuner`, tuner i taking every
    tuners-th kernel from the i-th and keeping its records in a folder of its own; their
    best records and `committed`'s are merged into `database` every few seconds while they
    run, and once more when the last has ended (or this one is stopped)."""
    import shutil
    import subprocess
    import sys

    from tvm.s_tir.meta_schedule.database import JSONDatabase

    tuners = options["tuners"]
    folders = [work_dir / f"tuner-{i}" for i in range(tuners)]
    # The tuners share out the kernels that this copy lacks: `database` changes as they go.
    before = work_dir / "committed"
    if tuning_database(database):
        shutil.copytree(database, before)
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()
             if name in ("target", "strategy", "trials", "batch", "kernels", "minutes", "timeout_s", "tracker", "key")]
    cores = max(1, os.cpu_count() // tuners)

    read = {}  # each tuner's database as last read whole

    def merge() -> None:
        for folder in folders:
            if tuning_database(folder):
                try:
                    read[folder] = JSONDatabase(work_dir=str(folder))
                except (RuntimeError, ValueError):  # caught between its two files' renames: next time
                    pass
        save_database(best_records([*committed, *read.values()]), database)

    processes = []
    try:
        for i, folder in enumerate(folders):
            folder.mkdir()
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "stages.tune", "tuner", str(folder), str(before), *map(str, modules),
                 f"--share={i}/{tuners}", f"--cores={cores}", *flags, *([f"--log={log}"] if log else [])],
                cwd=Path(__file__).resolve().parent.parent))
        while any(process.poll() is None for process in processes):
            time.sleep(10)
            merge()
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
            process.wait()
        merge()
    failed = [i for i, process in enumerate(processes) if process.returncode]
    if failed:
        raise SystemExit(f"tune: tuner(s) {', '.join(map(str, failed))} failed (their records so far are merged)")


def tuner(folder: Path, database: Path, modules: list[Path], share: str, cores: int, options: dict, log: Path | None) -> None:
    """One of run_tuners' processes: of the kernels that `database` lacks, those at positions
    i, i + n, i + 2n, ... (share "i/n"), tuned into the database in `folder`."""
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    i, n = map(int, share.split("/"))
    options = {**options, "tuners": n}  # each holds a session on servers // n of the servers
    committed = [JSONDatabase(work_dir=str(database))] if tuning_database(database) else []
    _, todo = kernels_to_tune(modules, committed, options)
    end = time.monotonic() + 60 * options["minutes"]
    with tempfile.TemporaryDirectory(prefix=f"websd-tuner-{i}-") as work_dir:
        tune_kernels(todo[: options.get("kernels")][i::n], Path(work_dir), folder, [], options, end, cores, log)


def drop_losing_records(database: Path, module: Path, target: str, profile: Path, tuned: str, default: str) -> None:
    """Keep a kernel's record only where it beat the default schedule. `profile` is
    bench/profile_cuda.py's (or gpu_bench.py's) profile-cuda.json: each kernel's time in the UNet
    step (`main`) of the `tuned` and the `default` build (e.g. unet, unet-untuned), measured in
    the same run; `module` the legalized module they were built from (it names the kernels). A
    short search can lose to dlight's schedule."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.database import JSONDatabase

    builds = json.loads(Path(profile).read_text())
    time_in = {build: {name: k["gpu_ms"] for name, k in builds[build]["main"]["kernels"].items()} for build in (tuned, default)}
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


def serve(gpus: int, key: str, host: str, port: int, tracker: str | None, logs: Path | None,
          device: str | None = None) -> None:
    """Run TVM's RPC tracker on `port` (unless `tracker`, host:port, names one already running)
    and `gpus` RPC servers registered with it under `key`, server i seeing only GPU i
    (CUDA_VISIBLE_DEVICES), until interrupted or terminated; then stop them all. `host` is the
    address this machine is reached at: the tracker and the servers bind it, and the tracker
    hands it out to whoever tunes. Each server is first asked for a session that computes on
    `device` (default: named by the key: cuda, or cpu for llvm)."""
    import signal
    import socket
    import subprocess
    import sys

    def start(name: str, module: str, *args: str, **env: str) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "w") if logs else None  # open while serve runs
        # A session of its own, so that stop() reaches its worker processes too: TVM's tracker
        # and servers work in child processes that outlive their parent.
        return subprocess.Popen([sys.executable, "-m", module, *args], env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(process: subprocess.Popen) -> None:
        """SIGTERM to its process group, SIGKILL if it has not ended 10 s later."""
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except ProcessLookupError:  # the whole group is gone already
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def ended() -> list[str]:
        return [name for name, process in processes.items() if process.poll() is not None]

    def registered() -> int | None:
        """The servers with `key` at the tracker, None while it cannot be reached."""
        try:
            return rpc_config(tracker, key, timeout_s=5).count_num_servers()
        except ValueError:
            return None

    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    see_logs = f" (see {logs})" if logs else ""
    for ending in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C does: the `finally` stops them
        signal.signal(ending, lambda *_: sys.exit(0))
    processes = {}
    try:
        before = 0
        if tracker is None:
            # Else the tracker fails in its log, and the servers join whatever holds the port.
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the tracker binds
                try:
                    probe.bind((host, port))
                except OSError as error:
                    raise SystemExit(f"serve: cannot start a tracker at {host}:{port}: {error}") from None
            tracker = f"{host}:{port}"
            processes["tracker"] = start("tracker", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
                                         "--port-end", str(port + 1))
        elif (before := registered()) is None:
            raise SystemExit(f"serve: no RPC tracker answers at {tracker}")
        device = device or {"llvm": "cpu"}.get(key, key)
        # Each session in a process the server spawns (--no-fork), which loads the CUDA runtime.
        # Forked sessions failed every CUDA call with cudaErrorInitializationError on the H200,
        # whether the server had loaded the CUDA runtime (2026-11-28, 00:55 UTC) or not (18:23).
        session = ["--no-fork", *(["--load-library", cuda_runtime()] if device == "cuda" else [])]
        for gpu in range(gpus):
            processes[f"server-{gpu}"] = start(f"server-{gpu}", "tvm.exec.rpc_server", "--tracker", tracker,
                                               "--key", key, "--host", host, *session, CUDA_VISIBLE_DEVICES=str(gpu))
        end = time.monotonic() + 120  # a busy machine needs a while to import TVM in each
        while (registered() or 0) < before + gpus:
            if ended() or time.monotonic() > end:
                raise SystemExit(f"serve: {', '.join(ended()) or 'the servers'} did not come up{see_logs}")
            time.sleep(0.5)
        started_s = reach(tracker, key, device, gpus)
        print(f"serve: {gpus} RPC server(s) with key {key!r} registered at the tracker {tracker} "
              f"(sessions that compute on {device}: {started_s:.1f} s to start one)", flush=True)
        while not ended():
            time.sleep(1)
        raise SystemExit(f"serve: {', '.join(ended())} ended{see_logs}")
    finally:
        for ending in (signal.SIGTERM, signal.SIGHUP):  # stop them once, whatever comes
            signal.signal(ending, signal.SIG_IGN)
        for process in processes.values():
            stop(process)


def reach(tracker: str, key: str, device: str, servers: int) -> float:
    """Ask the tracker for a session on each of `servers` servers with `key` (all held at once,
    so that each server gives one), and check that each computes on `device` (a copy there and
    back); the seconds to start a session, on average."""
    import numpy as np
    import tvm
    from tvm import rpc

    host, port = tracker.rsplit(":", 1)
    client = rpc.connect_tracker(host, int(port))
    start = time.monotonic()
    sessions = [client.request(key, session_timeout=120) for _ in range(servers)]
    for session in sessions:
        values = np.arange(4, dtype="float32")
        try:
            back = tvm.runtime.tensor(values, session.device(device)).numpy()
        except Exception as error:  # any failure in the session comes back as a TVM error
            raise SystemExit(f"serve: a session of key {key!r} fails on {device}: {str(error).strip().splitlines()[-1]}") from None
        if not np.array_equal(back, values):
            raise SystemExit(f"serve: a session of key {key!r} got {back} back from {device}, not {values}")
    return (time.monotonic() - start) / servers


def task(config: Config, layout: Layout) -> dict:
    options = config.stage("tune")
    modules = [layout.legalized(component) for component in options["components"]]
    return {
        "doc": "MetaSchedule where the tuning target's hardware is, merged into tuning_db/ (run on purpose: it needs the GPU)",
        "actions": [(tune, [modules, config.database_path / options["target"], options, layout.tuning_log(options["target"])])],
        "file_dep": [str(module) for module in modules],
        # The database is a committed input of the build, like the config: tuning writes it but
        # does not own it, so no `targets` (doit would otherwise tune whenever apply_db runs).
        "uptodate": [False],
        "verbosity": 2,
    }


def main() -> None:
    """`python3 -m stages.tune`: `tune` is what `doit tune` runs, for a machine that has the
    GPU and the build's legalized modules but not the rest of the build tree (`tuner` is one
    of the processes it starts with --tuners); `drop-losing`
    prunes the database with a per-kernel profile; `serve` starts TVM's RPC tracker and one
    RPC server per GPU for `tune --tracker` to measure on."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def tuning_options(command) -> None:
        """The config's stages.tune, as options (tuners aside)."""
        command.add_argument("--target", choices=TUNABLE, default="cuda")
        command.add_argument("--strategy", choices=TUNING_STRATEGIES, default="evolutionary")
        command.add_argument("--trials", type=int, required=True, help="candidates measured per kernel")
        command.add_argument("--batch", type=int, required=True, help="candidates measured at a time")
        command.add_argument("--kernels", type=int, help="tune at most this many kernels (default: all)")
        command.add_argument("--minutes", type=float, required=True, help="start no batch after this long")
        command.add_argument("--timeout-s", type=float, default=300, help="to build, and to run, one candidate")
        command.add_argument("--tracker", help="host:port of the RPC tracker whose servers measure (default: this machine)")
        command.add_argument("--key", help="the servers' key at the tracker")
        command.add_argument("--log", type=Path, help="add each kernel's outcome to this file (JSON lines)")

    run = commands.add_parser("tune", help="the options are the config's stages.tune")
    run.add_argument("database", type=Path, help="the tuning_db/<target> folder to merge into")
    run.add_argument("modules", type=Path, nargs="+", metavar="module", help="a legalized.json per component")
    tuning_options(run)
    run.add_argument("--tuners", type=int, default=1, help="tuning processes at once, all measuring on the tracker's servers")

    share = commands.add_parser("tuner", help="one of the processes that `tune --tuners N` starts")
    share.add_argument("folder", type=Path, help="where this tuner keeps its records")
    share.add_argument("database", type=Path, help="the database whose kernels are tuned already")
    share.add_argument("modules", type=Path, nargs="+", metavar="module", help="a legalized.json per component")
    share.add_argument("--share", required=True, help="i/n: this tuner takes kernels i, i + n, i + 2n, ...")
    share.add_argument("--cores", type=int, required=True, help="CPU cores for its search and builds")
    tuning_options(share)

    drop = commands.add_parser("drop-losing", help="keep only the records that beat the default schedule")
    drop.add_argument("database", type=Path, help="the tuning_db/<target> folder to prune")
    drop.add_argument("module", type=Path, help="the legalized.json both builds were made from")
    drop.add_argument("profile", type=Path, help="bench/profile_cuda.py's results")
    drop.add_argument("tuned", help="the profile's name of the tuned build")
    drop.add_argument("default", help="the profile's name of the build without the database")
    drop.add_argument("--target", choices=TUNABLE, default="cuda")

    rpc = commands.add_parser("serve", help="TVM's RPC tracker and one RPC server per GPU")
    rpc.add_argument("--gpus", type=int, required=True, help="servers to start: server i sees only GPU i")
    rpc.add_argument("--key", default="cuda", help="the servers' key at the tracker (the config's stages.tune.key)")
    rpc.add_argument("--host", default="127.0.0.1",
                     help="this machine's address for whoever tunes (default: tuning on this machine)")
    where = rpc.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=9190, help="start the tracker here, on this port")
    where.add_argument("--tracker", help="host:port of a tracker already running, to add these servers to")
    rpc.add_argument("--logs", type=Path, help="a log file per process in this folder (default: this terminal)")
    rpc.add_argument("--device", help="the device a session must compute on (default: named by the key: cuda, or cpu for llvm)")

    args = parser.parse_args()
    if args.command in ("tune", "tuner"):
        if (args.tracker is None) != (args.key is None):
            parser.error("--tracker and --key go together")
        options = {name: value for name, value in vars(args).items() if value is not None and name != "log"}
        if args.command == "tune":
            tune(args.modules, args.database, options, args.log)
        else:
            tuner(args.folder, args.database, args.modules, args.share, args.cores, options, args.log)
    elif args.command == "drop-losing":
        drop_losing_records(args.database, args.module, args.target, args.profile, args.tuned, args.default)
    else:
        serve(args.gpus, args.key, args.host, args.port, args.tracker, args.logs, args.device)


if __name__ == "__main__":
    main()
