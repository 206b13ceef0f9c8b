"""Where the native CUDA UNet step's time goes: each kernel's time in one step (the device
synced around every call through the VM's instrument hook), for each UNet build given.
Weights are random of the build's shapes (speed does not depend on them). Runs on the GPU
machine through bench/profile_cuda.sh; writes profile-cuda.{json,md} into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import enable_cuda  # noqa: E402


def profile(library: Path, cache_index: Path) -> dict:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    dev = tvm.cuda()
    vm = VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    records = [r for shard in json.loads(cache_index.read_text())["records"] for r in shard["records"]]
    records.sort(key=lambda r: int(r["name"].rsplit("_", 1)[1]))
    rng = np.random.default_rng(0)
    weights = [tvm.runtime.tensor((0.02 * rng.standard_normal(r["shape"])).astype(r["dtype"]), dev) for r in records]
    inputs = [tvm.runtime.tensor(x, dev) for x in (
        rng.standard_normal((2, 4, 64, 64)).astype("float32"), np.array([500.0], "float32"),
        rng.standard_normal((2, 77, 768)).astype("float32"))]
    main = vm["main"]
    for _ in range(3):
        main(*inputs, *weights)
    dev.sync()
    totals, calls, started = defaultdict(float), defaultdict(int), {}

    def instrument(func, symbol, before, ret, *args):
        dev.sync()
        if before:
            started[symbol] = time.perf_counter()
        else:
            totals[symbol] += (time.perf_counter() - started[symbol]) * 1000
            calls[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    main(*inputs, *weights)
    dev.sync()
    kernels = sorted(totals, key=totals.get, reverse=True)
    return {"total_ms": round(sum(totals.values()), 2),
            "kernels": [{"name": k, "calls": calls[k], "ms": round(totals[k], 3)} for k in kernels]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-index", type=Path, required=True, help="the UNet's tensor-cache.json")
    parser.add_argument("--cuda-include", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("builds", nargs="+", help="name=path/to/unet.so")
    args = parser.parse_args()
    enable_cuda(args.cuda_include)
    results = {name: profile(Path(path), args.cache_index) for name, path in (b.split("=", 1) for b in args.builds)}
    (args.out / "profile-cuda.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = []
    for name, result in results.items():
        lines += [f"## {name}: {result['total_ms']} ms in {len(result['kernels'])} kernels (synced per call)", "",
                  "| kernel | calls | ms | share |", "|---|---:|---:|---:|"]
        lines += [f"| {k['name']} | {k['calls']} | {k['ms']:.2f} | {k['ms'] / result['total_ms']:.1%} |" for k in result["kernels"][:30]]
        lines.append("")
    (args.out / "profile-cuda.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
