"""Time and peak memory of every build stage of a config, on this machine.

Runs each doit task of `dist` in its own process, in dependency order, and records the wall
time and the peak resident memory of that process (os.wait4's rusage is per child). Writes
bench/results/build-<config>.json and .md.

    python3 bench/build_stages.py config/sd-v1-5-random.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


# The graph's stages in an order where each depends only on earlier ones (see dodo.py).
STAGES = ["make_model", "build_runtime", "build_tokenizer_wasm", "export_fx", "import_relax", "legalize",
          "apply_db", "memory_plan", "build", "build_wasm", "shard_params", "dist"]


def ordered_tasks(config: Path) -> list[str]:
    listed = subprocess.run([sys.executable, "-m", "doit", f"config={config}", "list", "--all", "-q"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    ordered = []
    for stage in STAGES:
        sub_tasks = [task for task in listed if task.startswith(f"{stage}:")]
        ordered += sub_tasks or [stage] * (stage in listed)  # a group's name only runs its sub-tasks
    return ordered


def run(config: Path, task: str) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "doit", f"config={config}", task], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{task} failed:\n{output}")
    return {"task": task, "seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    config = parser.parse_args().config.resolve()
    rows = []
    for task in ordered_tasks(config):
        rows.append(run(config, task))
        print(f"{rows[-1]['task']:<36}{rows[-1]['seconds']:>9.1f} s{rows[-1]['peak_rss_mib']:>9} MiB", flush=True)
    result = {
        "config": str(config.relative_to(ROOT)),
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "date": time.strftime("%Y-%m-%d"),
        "total_seconds": round(sum(r["seconds"] for r in rows), 1),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "stages": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"build-{config.stem}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    table = ["| task | seconds | peak RSS (MiB) |", "|---|---:|---:|"]
    table += [f"| {r['task']} | {r['seconds']} | {r['peak_rss_mib']} |" for r in rows]
    table.append(f"| **total** | {result['total_seconds']} | {result['peak_rss_mib']} |")
    (RESULTS / f"{name}.md").write_text(f"# Build of {result['config']}\n\n{result['machine']}, {result['date']}\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
