"""Per-kernel tables of one run's profiles of the same builds, native CUDA (profile_cuda.py)
beside WebGPU (webgpu_node.mjs's `profile`): profile-<component>.{md,json} (per function: each
kernel's class, calls, CUDA and WebGPU ms and their ratio, sorted by WebGPU ms; the totals per
class; the dispatches per call, the host's time per dispatch, and the sum of the kernels
against the wall time) and, where a component has other builds (variants, e.g. the UNet's or
the VAE decoder's), profile-<component>-variants.{md,json}: each kernel's time in each build and
the fastest build per kernel, for a sweep of schedules to pick from.

A profile set (either side may be missing) is {build: {function: profile}}, each profile as
profile_cuda.summarize's; a build is a component ("unet") or another build of one, named
"<component>-<name>" ("unet-untuned", "vae_decoder-tile-128x64-vec4x4-k16").

    python3 bench/profile_tables.py --cuda profile-cuda.json --webgpu profile-webgpu.json --out DIR
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

# A kernel's class from its PrimFunc's name (fused ops joined by "_", each maybe numbered), by
# the first of these it holds; else elementwise (reshapes, adds, activations, concatenations...).
# Split group norms' mean and variance reductions count as normalization.
CLASSES = {
    "attention": ("attention", "softmax"),
    "convolution": ("conv1d", "conv2d", "conv3d", "conv2d_transpose"),
    "matmul": ("matmul", "batch_matmul", "dense"),
    "normalization": ("group_norm", "layer_norm", "rms_norm", "mean", "variance"),
}
ELEMENTWISE = "elementwise"


def kernel_class(name: str) -> str:
    for kind, ops in CLASSES.items():
        if re.search(rf"(?:^|_)(?:{'|'.join(ops)})\d*(?:_|$)", name):
            return kind
    return ELEMENTWISE


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def kernel_rows(cuda: dict | None, webgpu: dict | None) -> list[dict]:
    """One row per kernel of either profile of one function, slowest on WebGPU first."""
    sides = {"cuda": (cuda or {}).get("kernels", {}), "webgpu": (webgpu or {}).get("kernels", {})}
    rows = []
    for name in sides["cuda"].keys() | sides["webgpu"].keys():
        row = {"kernel": name, "class": kernel_class(name)}
        for side, kernels in sides.items():
            row[f"{side}_calls"] = kernels.get(name, {}).get("calls")
            row[f"{side}_ms"] = kernels.get(name, {}).get("gpu_ms")
        row["webgpu_over_cuda"] = ratio(row["webgpu_ms"], row["cuda_ms"])
        rows.append(row)
    return sorted(rows, key=lambda r: (-(r["webgpu_ms"] or 0), -(r["cuda_ms"] or 0), r["kernel"]))


def class_totals(rows: list[dict]) -> list[dict]:
    webgpu_total = sum(r["webgpu_ms"] or 0 for r in rows)
    totals = []
    for kind in [*CLASSES, ELEMENTWISE]:
        members = [r for r in rows if r["class"] == kind]
        if not members:
            continue
        total = {"class": kind, "kernels": len(members)}
        for side in ("cuda", "webgpu"):
            times = [r[f"{side}_ms"] for r in members if r[f"{side}_ms"] is not None]
            total[f"{side}_calls"] = sum(r[f"{side}_calls"] or 0 for r in members)
            total[f"{side}_ms"] = round(sum(times), 3) if times else None
        total["webgpu_over_cuda"] = ratio(total["webgpu_ms"], total["cuda_ms"])
        total["webgpu_share"] = round(total["webgpu_ms"] / webgpu_total, 3) if total["webgpu_ms"] and webgpu_total else None
        totals.append(total)
    return sorted(totals, key=lambda t: -(t["webgpu_ms"] or t["cuda_ms"] or 0))


SUMMARY = {  # key: what it is
    "dispatches": "dispatches per call (CUDA: PrimFunc calls)",
    "gpu_kernel_ms": "sum of the kernels' GPU times (ms)",
    "gpu_span_ms": "GPU span, first kernel's start to the last one's end (ms)",
    "wall_ms": "the whole call, wall clock (ms)",
    "wall_minus_kernels_ms": "wall minus the kernels: launching/encoding, idle GPU, sync (ms)",
    "host_ms": "host time until the call returns, every dispatch encoded/queued (ms)",
    "host_us_per_dispatch": "host time per dispatch (us)",
    "quantized": "GPU timestamps rounded to 65.5 us (Dawn's timestamp_quantization on)",
}


def summary(cuda: dict | None, webgpu: dict | None) -> dict:
    """{key: {"cuda": value, "webgpu": value}} for each of SUMMARY's figures."""
    out = {key: {} for key in SUMMARY}
    for side, profile in (("cuda", cuda or {}), ("webgpu", webgpu or {})):
        for key in SUMMARY:
            out[key][side] = profile.get(key)
        wall, kernels = profile.get("wall_ms"), profile.get("gpu_kernel_ms")
        out["wall_minus_kernels_ms"][side] = round(wall - kernels, 3) if wall is not None and kernels is not None else None
    return out


def cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def percent(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def calls_cell(row: dict) -> str:
    calls = {row["cuda_calls"], row["webgpu_calls"]} - {None}
    return " / ".join(str(c) for c in sorted(calls)) or "-"  # two values: the builds differ


def function_markdown(title: str, table: dict) -> list[str]:
    lines = [f"## {title}", "", "| kernel | class | calls | CUDA ms | WebGPU ms | WebGPU / CUDA |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['kernel']} | {r['class']} | {calls_cell(r)} | {cell(r['cuda_ms'])} | {cell(r['webgpu_ms'])} | {cell(r['webgpu_over_cuda'], 2)} |"
              for r in table["kernels"]]
    lines += ["", "| class | kernels | calls (CUDA / WebGPU) | CUDA ms | WebGPU ms | WebGPU / CUDA | share of WebGPU |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {t['class']} | {t['kernels']} | {t['cuda_calls']} / {t['webgpu_calls']} | {cell(t['cuda_ms'])} | {cell(t['webgpu_ms'])} "
              f"| {cell(t['webgpu_over_cuda'], 2)} | {percent(t['webgpu_share'])} |" for t in table["classes"]]
    lines += ["", "| | CUDA | WebGPU |", "|---|---:|---:|"]
    lines += [f"| {label} | {cell(table['summary'][key]['cuda'])} | {cell(table['summary'][key]['webgpu'])} |" for key, label in SUMMARY.items()]
    return [*lines, ""]


def component_tables(cuda: dict, webgpu: dict) -> dict:
    """{function: {kernels, classes, summary}} for every function either side profiled."""
    tables = {}
    for function in [*cuda, *(f for f in webgpu if f not in cuda)]:
        rows = kernel_rows(cuda.get(function), webgpu.get(function))
        tables[function] = {"kernels": rows, "classes": class_totals(rows), "summary": summary(cuda.get(function), webgpu.get(function))}
    return tables


def variant_table(builds: dict, function: str) -> dict:
    """Each kernel's ms in each build ({build: {"cuda": profile, "webgpu": profile}}) of one
    function, and per side the build where it is fastest."""
    names = sorted({k for sides in builds.values() for p in sides.values() if p for k in p["kernels"]})
    rows = []
    for name in names:
        row = {"kernel": name, "class": kernel_class(name), "ms": {}, "fastest": {}}
        for side in ("cuda", "webgpu"):
            times = {b: sides[side]["kernels"].get(name, {}).get("gpu_ms") for b, sides in builds.items() if sides[side]}
            row["ms"][side] = times
            timed = {b: ms for b, ms in times.items() if ms is not None}
            row["fastest"][side] = min(timed, key=timed.get) if timed else None
        rows.append(row)
    totals = {side: {b: sides[side]["gpu_kernel_ms"] for b, sides in builds.items() if sides[side]} for side in ("cuda", "webgpu")}
    return {"function": function, "builds": list(builds), "kernels": rows, "gpu_kernel_ms": totals}


def variants_markdown(table: dict) -> list[str]:
    sides = [s for s in ("cuda", "webgpu") if table["gpu_kernel_ms"][s]]
    columns = [(side, build) for side in sides for build in table["gpu_kernel_ms"][side]]
    names = {"cuda": "CUDA", "webgpu": "WebGPU"}
    lines = [f"## {table['function']}: each build's kernels (ms)", "",
             "| kernel | class | " + " | ".join(f"{names[s]} {b}" for s, b in columns) + " | " + " | ".join(f"fastest {names[s]}" for s in sides) + " |",
             "|---|---|" + "---:|" * len(columns) + "---|" * len(sides)]
    for row in table["kernels"]:
        lines.append(f"| {row['kernel']} | {row['class']} | " + " | ".join(cell(row["ms"][s].get(b)) for s, b in columns)
                     + " | " + " | ".join(row["fastest"][s] or "-" for s in sides) + " |")
    lines.append("| sum of the kernels | | " + " | ".join(cell(table["gpu_kernel_ms"][s][b]) for s, b in columns) + " |" + " |" * len(sides))
    return [*lines, ""]


def write_tables(out: Path, cuda: dict | None = None, webgpu: dict | None = None) -> list[Path]:
    """The tables of the profile sets given, into `out`; returns the files written."""
    cuda, webgpu = cuda or {}, webgpu or {}
    written = []

    def write(stem: str, data: dict, lines: list[str]) -> None:
        (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
        (out / f"{stem}.md").write_text("\n".join(lines))
        written.extend([out / f"{stem}.md", out / f"{stem}.json"])

    builds = list(dict.fromkeys([*cuda, *webgpu]))
    for component in [b for b in builds if "-" not in b]:
        tables = component_tables(cuda.get(component, {}), webgpu.get(component, {}))
        lines = [f"# Where {component}'s time goes: each kernel, native CUDA beside WebGPU (same build, same run)", ""]
        for function, table in tables.items():
            lines += function_markdown(f"{component}.{function}", table)
        write(f"profile-{component}", {"component": component, "functions": tables}, lines)

        others = [b for b in builds if b.startswith(f"{component}-")]
        if others:
            sides = {b: {"cuda": cuda.get(b, {}), "webgpu": webgpu.get(b, {})} for b in [component, *others]}
            functions = list(dict.fromkeys(f for by_side in sides.values() for profiles in by_side.values() for f in profiles))
            tables = [variant_table({b: {side: profiles.get(function) for side, profiles in by_side.items()} for b, by_side in sides.items()}, function)
                      for function in functions]
            lines = [f"# {component}'s kernels in each build (GPU ms per call)", ""]
            for table in tables:
                lines += variants_markdown(table)
            write(f"profile-{component}-variants", {"component": component, "functions": tables}, lines)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", type=Path, help="a CUDA profile set: profile_cuda.py's (or gpu_bench.py's) profile-cuda.json")
    parser.add_argument("--webgpu", type=Path, help="a WebGPU profile set: gpu_bench.py's profile-webgpu.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = json.loads(args.cuda.read_text()) if args.cuda else None
    webgpu = json.loads(args.webgpu.read_text()) if args.webgpu else None
    for path in write_tables(args.out, cuda, webgpu):
        print(path)


if __name__ == "__main__":
    main()
