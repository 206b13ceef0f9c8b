"""Where a native build's time goes, kernel by kernel: every PrimFunc call of every function of
every component (the manifest's functions: text_encoder, unet main and unguided, vae_decoder;
and variants, other builds of a component), timed on the device through the VM's instrument hook.

On CUDA each call is bracketed by CUDA events on the stream TVM launches on (the default one),
with the GPU held busy first (torch.cuda._sleep) while the host queues the whole call, so that
an event pair spans its kernel rather than the host's pace; on the CPU (llvm), which runs each
call to its end, by the clock. Beside the kernels: the plain call's host time (until the call
returns, every kernel queued) and its wall time, as webgpu_node.mjs's profile reports them for
WebGPU; bench/profile_tables.py puts the two side by side.

Standalone, on the GPU machine through bench/profile_cuda.sh: random weights of the build's
shapes (speed does not depend on them); writes profile-cuda.json and the CUDA-only tables into
--out. gpu_bench.py's CUDA child calls profile_build on the components it has loaded, so that
one run's CUDA and WebGPU profiles come from the same builds.

    python3 bench/profile_cuda.py --bundle DIST --out OUT [--target llvm] LIB...
    (LIB: <component>.so or a variant's <component>-<name>.so, e.g. unet.so, vae_decoder-untuned.so)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_tables  # noqa: E402

PROFILE_RUNS = 3
TIMESTEP = 500.0  # the UNet's timestep in every profile and timing (webgpu_node.mjs's UNET_TIMESTEP)
HOLD_MARGIN = 1.5  # how much longer than the host's part of a call the GPU is held busy


def signature_inputs(signature: dict, rng: np.random.Generator, prompt_ids: list[int] | None = None) -> list[np.ndarray]:
    """Inputs of a function of the manifest's `signature` ({inputs: [{shape, dtype}]}): the
    prompt's ids for int32 (zeros without a prompt: speed does not depend on them), the
    timestep for a single value, else standard normal."""
    arrays = []
    for spec in signature["inputs"]:
        shape, dtype = spec["shape"], spec["dtype"]
        if dtype == "int32":
            arrays.append(np.array(prompt_ids, np.int32).reshape(shape) if prompt_ids is not None else np.zeros(shape, np.int32))
        elif int(np.prod(shape)) == 1:
            arrays.append(np.full(shape, TIMESTEP, dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


class CudaClock:
    """Marks on the stream TVM launches on: CUDA events, read after a sync."""

    def __init__(self):
        import torch

        self.torch = torch
        # TVM launches on the default stream unless told otherwise; the events must go there too.
        assert torch.cuda.current_stream().cuda_stream == 0, "torch's current stream is not the default stream"
        start = self.mark()
        torch.cuda._sleep(10_000_000)
        end = self.mark()
        self.sync()
        self.cycles_per_ms = 10_000_000 / start.elapsed_time(end)

    def mark(self):
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @staticmethod
    def elapsed_ms(start, end) -> float:
        return start.elapsed_time(end)

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def hold(self, ms: float) -> None:
        """Keep the GPU busy for about `ms`."""
        self.torch.cuda._sleep(int(ms * self.cycles_per_ms))


class HostClock:
    """The CPU target runs each call to its end: marks are the clock's."""

    mark = staticmethod(time.perf_counter)

    @staticmethod
    def elapsed_ms(start, end) -> float:
        return (end - start) * 1000

    def sync(self) -> None:
        pass

    def hold(self, ms: float) -> None:
        pass


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def profile_function(vm, entry: str, args: list, clock, runs: int = PROFILE_RUNS) -> dict:
    """`entry` on `args` (inputs, then weights, on the device): `runs` plain calls (host time
    until the call returns, wall time to the sync's end), then one instrumented call to warm the
    hook and measure its host time, then `runs` instrumented ones, each PrimFunc call between
    two marks. Per kernel (PrimFunc) its calls per call and its time (median over the runs)."""
    function = vm[entry]
    function(*args)
    clock.sync()
    host, wall = [], []
    for _ in range(runs):
        started = time.perf_counter()
        function(*args)
        host.append(ms_since(started))
        clock.sync()
        wall.append(ms_since(started))

    calls = []  # [PrimFunc, start mark, end mark] of each call, in order

    def instrument(func, symbol, before, ret, *call_args):
        if "." not in symbol:  # a PrimFunc (VM builtins, vm.builtin.*, launch no kernel)
            if before:
                calls.append([symbol, clock.mark(), None])
            else:
                calls[-1][2] = clock.mark()
        return 0  # VMInstrumentReturnKind.NO_OP: make the call as usual

    vm.set_instrument(instrument)
    try:
        started = time.perf_counter()
        function(*args)
        instrumented_host_ms = ms_since(started)
        clock.sync()
        recorded = []
        for _ in range(runs):
            calls.clear()
            clock.hold(HOLD_MARGIN * instrumented_host_ms)
            function(*args)
            clock.sync()
            recorded.append(([(name, clock.elapsed_ms(start, end)) for name, start, end in calls],
                             clock.elapsed_ms(calls[0][1], calls[-1][2])))
    finally:
        vm.set_instrument(None)
    return summarize(recorded, host, wall)


def summarize(recorded: list, host: list[float], wall: list[float]) -> dict:
    """The profile of a function from its recorded runs ([(PrimFunc, ms) per call], span ms),
    keyed as webgpu_node.mjs's (a PrimFunc call counts as one dispatch: TVM does not say how
    many CUDA kernels it launches)."""
    dispatches = len(recorded[0][0])
    calls = Counter(name for name, _ in recorded[0][0])
    kernel_ms = defaultdict(lambda: [0.0] * len(recorded))
    for run, (timed, _) in enumerate(recorded):
        for name, ms in timed:
            kernel_ms[name][run] += ms
    host_ms = statistics.median(host)
    return {
        "runs": len(recorded),
        "dispatches": dispatches,
        "kernels": {name: {"calls": calls[name], "dispatches": calls[name], "gpu_ms": round(statistics.median(ms), 3)}
                    for name, ms in kernel_ms.items()},
        "gpu_kernel_ms": round(statistics.median(sum(ms for _, ms in timed) for timed, _ in recorded), 3),
        "gpu_span_ms": round(statistics.median(span for _, span in recorded), 3),
        "host_ms": round(host_ms, 3),
        "host_us_per_dispatch": round(1000 * host_ms / dispatches, 3),
        "wall_ms": round(statistics.median(wall), 3),
    }


def profile_build(build: str, vm, functions: dict, weights: list, device, clock, prompt_ids: list[int] | None = None,
                  runs: int = PROFILE_RUNS) -> dict:
    """profile_function for each of the manifest's `functions` of one build of a component
    (named `build`): {entry: profile}. The VM's pooled activations are released after each, as
    between the parts of a generation: profiling holds no more memory than a generation."""
    import tvm

    from websd.runtime import release_activations

    rng = np.random.default_rng(1)
    profiles = {}
    for entry, signature in functions.items():
        args = [tvm.runtime.tensor(x, device) for x in signature_inputs(signature, rng, prompt_ids)]
        profiles[entry] = profile_function(vm, entry, [*args, *weights], clock, runs)
        release_activations()
        p = profiles[entry]
        print(f"profile_cuda: {build}.{entry}: {p['dispatches']} calls, kernels {p['gpu_kernel_ms']} ms, call {p['wall_ms']} ms "
              f"(host {p['host_us_per_dispatch']} us per call)", flush=True)
    return profiles


def random_weights(cache_index: Path, device, rng: np.random.Generator) -> list:
    """Weights of the shapes a tensor cache names, in the functions' order (`<component>_<i>`)."""
    import tvm

    records = [r for shard in json.loads(cache_index.read_text())["records"] for r in shard["records"]]
    records.sort(key=lambda r: int(r["name"].rsplit("_", 1)[1]))
    return [tvm.runtime.tensor((0.02 * rng.standard_normal(r["shape"])).astype(r["dtype"]), device) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="holds manifest.json and params/<component>/tensor-cache.json")
    parser.add_argument("--target", choices=("cuda", "llvm"), default="cuda")
    parser.add_argument("--cuda-include", help="a folder holding cuda/std/ (libcu++), for NVRTC (runtime-only TVM)")
    parser.add_argument("--runs", type=int, default=PROFILE_RUNS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("libraries", nargs="+", type=Path, help="<component>.so or a variant's <component>-<name>.so")
    args = parser.parse_args()
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if args.target == "cuda" and args.cuda_include:
        from gpu_bench import enable_cuda

        enable_cuda(args.cuda_include)
    device = tvm.cuda() if args.target == "cuda" else tvm.cpu()
    clock = CudaClock() if args.target == "cuda" else HostClock()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    profiles = {}  # a profile set (profile_tables.py)
    for library in args.libraries:
        build = library.name.removesuffix(".so")
        component = build.partition("-")[0]
        vm = VirtualMachine(tvm.runtime.load_module(str(library)), device)
        weights = random_weights(args.bundle / "params" / component / "tensor-cache.json", device, rng)
        profiles[build] = profile_build(build, vm, manifest["components"][component]["functions"], weights, device, clock, runs=args.runs)
        del vm, weights
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile-cuda.json").write_text(json.dumps(profiles, indent=1) + "\n")
    for path in profile_tables.write_tables(args.out, cuda=profiles):
        print(f"profile_cuda: wrote {path}")


if __name__ == "__main__":
    main()
