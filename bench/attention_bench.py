"""Fused attention against the unfused chain it replaces, per SD 1.5 attention shape (512x512).

    python3 bench/attention_bench.py build DIR      here: DIR/{fused,unfused}.so (cuda) and
                                                    DIR/shapes.json
    bash bench/attention_bench.sh                   on the GPU machine (device tool), see there

Each shape is one Relax function written as the torch importer writes diffusers' AttnProcessor
(head reshapes, matmul, scale, [causal mask,] softmax, matmul, head merge), compiled through
the real stages twice: with FuseAttention (the flash-attention kernel) and without it (dlight's
schedules for the unfused chain, plus the committed tuning database, as apply_db does). `run`
checks that both agree and times each (median of 20 calls after 3, device synced).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS, WARMUP = 20, 3


def shapes() -> dict[str, dict]:
    """name -> batch, heads, q_len, kv_len, head_dim, causal."""
    table = {}
    for batch in (2, 1):
        for tokens, head_dim in ((4096, 40), (1024, 80), (256, 160), (64, 160)):
            table[f"unet_b{batch}_self_{tokens}"] = dict(batch=batch, heads=8, q_len=tokens, kv_len=tokens, head_dim=head_dim, causal=False)
            table[f"unet_b{batch}_cross_{tokens}"] = dict(batch=batch, heads=8, q_len=tokens, kv_len=77, head_dim=head_dim, causal=False)
    table["vae_mid_4096"] = dict(batch=1, heads=1, q_len=4096, kv_len=4096, head_dim=512, causal=False)
    table["clip_77"] = dict(batch=1, heads=12, q_len=77, kv_len=77, head_dim=64, causal=True)
    return table


def imported_module(table: dict):
    """One Relax function per shape, as the importer gives an attention: q, k, v (batch, tokens,
    heads * head_dim) in, the same layout out."""
    from tvm import relax

    bb = relax.BlockBuilder()
    for name, s in table.items():
        b, h, n, m, d = s["batch"], s["heads"], s["q_len"], s["kv_len"], s["head_dim"]
        params = [relax.Var(x, relax.TensorType((b, t, h * d), "float32")) for x, t in (("q", n), ("k", m), ("v", m))]
        with bb.function(name, params):
            with bb.dataflow():
                def heads_first(x, t):
                    x = bb.emit(relax.op.reshape(x, (b, t, h, d)))
                    x = bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))
                    return bb.emit(relax.op.reshape(x, (b * h, t, d)))

                q, k, v = (heads_first(x, t) for x, t in zip(params, (n, m, m)))
                scores = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 2, 1]))))
                scores = bb.emit(relax.op.multiply(scores, relax.const(d**-0.5, "float32")))
                if s["causal"]:  # transformers' additive mask: 0 on and below the diagonal
                    mask = np.triu(np.full((n, m), np.finfo(np.float32).min, np.float32), 1)[None]
                    scores = bb.emit(relax.op.add(scores, relax.const(mask)))
                out = bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(scores, axis=-1)), v))
                out = bb.emit(relax.op.reshape(out, (b, h, n, d)))
                out = bb.emit(relax.op.permute_dims(out, [0, 2, 1, 3]))
                out = bb.emit_output(relax.op.reshape(out, (b, n, h * d)))
            bb.emit_func_output(out)
    return bb.get()


def build(out: Path, target: str = "cuda") -> None:
    import tvm

    from stages import apply_db, memory_plan
    from stages.legalize import passes
    from websd import relax_io
    from websd.passes.attention import fuse_attention
    from websd.paths import ROOT as REPO
    from websd.targets import compile_planned

    out.mkdir(parents=True, exist_ok=True)
    table = shapes()
    (out / "shapes.json").write_text(json.dumps(table, indent=1))
    imported = imported_module(table)
    database = apply_db.database_files(REPO / "tuning_db", target)
    for variant in ("fused", "unfused"):
        started = time.time()
        steps = [p for p in passes() if variant == "fused" or p is not fuse_attention]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            relax_io.save_module(tvm.transform.Sequential(steps)(imported), tmp / "legalized.json")
            apply_db.apply_db(tmp / "legalized.json", target, database, True, tmp / "scheduled.json")
            memory_plan.memory_plan(tmp / "scheduled.json", tmp / "planned.json", tmp / "memory.json")
            compile_planned(relax_io.load_module(tmp / "planned.json"), target).export_library(str(out / f"{variant}.so"))
            (out / f"{variant}-memory.json").write_text((tmp / "memory.json").read_text())
        print(f"{variant}: built in {time.time() - started:.0f} s")


def median_ms(call, sync) -> float:
    for _ in range(WARMUP):
        call()
    sync()
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        call()
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run(folder: Path, cuda_include: str, out: Path) -> None:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from gpu_bench import enable_cuda

    enable_cuda(cuda_include)
    dev = tvm.cuda()
    table = json.loads((folder / "shapes.json").read_text())
    vms = {v: VirtualMachine(tvm.runtime.load_module(str(folder / f"{v}.so")), dev) for v in ("fused", "unfused")}
    rng = np.random.default_rng(0)
    rows = {}
    for name, s in table.items():
        b, h, n, m, d = s["batch"], s["heads"], s["q_len"], s["kv_len"], s["head_dim"]
        args = [tvm.runtime.tensor(rng.standard_normal((b, t, h * d), dtype=np.float32), dev) for t in (n, m, m)]
        outputs = {v: vm[name](*args).numpy() for v, vm in vms.items()}
        error = float(np.abs(outputs["fused"] - outputs["unfused"]).max() / np.abs(outputs["unfused"]).max())
        times = {v: median_ms(lambda vm=vm: vm[name](*args), dev.sync) for v, vm in vms.items()}
        gflop = 4 * b * h * n * m * d / 1e9
        rows[name] = {**s, "fused_ms": round(times["fused"], 4), "unfused_ms": round(times["unfused"], 4),
                      "speedup": round(times["unfused"] / times["fused"], 2), "fused_tflops": round(gflop / times["fused"], 2),
                      "max_rel_error": error}
        print(name, rows[name], flush=True)
    result = {"device": tvm.cuda().device_name, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    (out / "attention-bench.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Fused attention vs the unfused chain, native CUDA, {result['device']} ({result['date']})", "",
             "| shape | B x H | q x kv | d | unfused ms | fused ms | speedup | fused TFLOP/s | max rel. error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['batch']} x {r['heads']} | {r['q_len']} x {r['kv_len']} | {r['head_dim']} | {r['unfused_ms']} | "
                     f"{r['fused_ms']} | {r['speedup']} | {r['fused_tflops']} | {r['max_rel_error']:.1e} |")
    (out / "attention-bench.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--cuda-include", required=True)
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "build":
        build(args.out)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        run(args.folder, args.cuda_include, args.out)


if __name__ == "__main__":
    main()
