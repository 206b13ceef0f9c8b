"""Fused attention against the unfused chain it replaces, per SD 1.5 attention shape (512x512),
and kernel configs against each other.

    python3 bench/attention_bench.py build DIR [--config D=...]...   here: DIR/{variant}.so (cuda),
                                                    DIR/webgpu-{variant}/ (bundles for
                                                    bench/webgpu_node.mjs), DIR/shapes.json
    bash bench/attention_bench.sh                   on the GPU machine (device tool), see there

Each shape is one Relax function written as the torch importer writes diffusers' AttnProcessor
(head reshapes, matmul, scale, [causal mask,] softmax, matmul, head merge), compiled through
the real stages once per variant: `unfused` (without FuseAttention: dlight's schedules for the
chain, plus the committed tuning database, as apply_db does), `fused` (the kernel tables'
choice per head dim), and one per `--config` (bench/matmul_tiles.py's form: tiles or rows for
one head dim, the tables' for the others), for cuda and for webgpu. `run` checks natively that
every variant agrees with `unfused` and times each natively and in Node on Dawn (median of 20
calls after at least a second of warm-up, device synced).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from matmul_tiles import attention_tiles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS, WARMUP, WARMUP_S = 20, 3, 0.3  # kernels alone: no page load to settle after


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
            bb.emit_func_output((out,))  # a 1-tuple, as every function of the pipeline returns
    return bb.get()


def build(out: Path, configs: list[tuple[str, dict]]) -> None:
    """Each variant for cuda (DIR/{variant}.so) and for webgpu (DIR/webgpu-{variant}/: a bundle
    of one component, `attention`, whose functions are the shapes, for bench/webgpu_node.mjs)."""
    import tvm

    from stages import apply_db, memory_plan
    from stages.build_runtime import runtime_dir
    from stages.dist import required_limits
    from stages.legalize import passes
    from websd import relax_io
    from websd.passes.attention import fuse_attention
    from websd.paths import ROOT as REPO
    from websd.paths import TVMJS
    from websd.targets import compile_planned
    from websd.wasm import export_wasm

    out.mkdir(parents=True, exist_ok=True)
    table = shapes()
    variants = {"unfused": None, "fused": {}, **dict(configs)}
    (out / "shapes.json").write_text(json.dumps({"shapes": table, "variants": list(variants)}, indent=1))
    imported = imported_module(table)
    for variant, tiles in variants.items():
        started = time.time()
        steps = [p for p in passes() if tiles is not None or p is not fuse_attention]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            relax_io.save_module(tvm.transform.Sequential(steps)(imported), tmp / "legalized.json")
            for target in ("cuda", "webgpu"):
                database = apply_db.database_files(REPO / "tuning_db", target)
                apply_db.apply_db(tmp / "legalized.json", target, database, True, tmp / "scheduled.json", attention_tiles=tiles)
                memory_plan.memory_plan(tmp / "scheduled.json", tmp / "planned.json", tmp / "memory.json")
                executable = compile_planned(relax_io.load_module(tmp / "planned.json"), target)
                memory = json.loads((tmp / "memory.json").read_text())
                if target == "cuda":
                    executable.export_library(str(out / f"{variant}.so"))
                    continue
                bundle = out / f"webgpu-{variant}"
                stats = export_wasm(executable, bundle / "attention.wasm", runtime_dir())
                (bundle / "vendor").mkdir(parents=True, exist_ok=True)
                (bundle / "vendor" / "tvmjs.js").write_bytes(TVMJS.read_bytes())
                functions = {
                    name: {"inputs": [{"shape": [s["batch"], t, s["heads"] * s["head_dim"]], "dtype": "float32"} for t in (s["q_len"], s["kv_len"], s["kv_len"])]}
                    for name, s in table.items()
                }
                manifest = {
                    "name": f"attention-{variant}",
                    "components": {"attention": {"wasm": "attention.wasm", "params": "params/", "num_params": 0, "functions": functions}},
                    "required_limits": required_limits(stats["limits"], memory["largest_bytes"], 0),
                }
                (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))
        print(f"{variant}: built in {time.time() - started:.0f} s")


def run_cuda(folder: Path, table: dict, variants: list[str], cuda_include: str) -> tuple[str, dict]:
    """Each shape's time per variant, natively, and how far each output is from `unfused`'s."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from gpu_bench import enable_cuda, median_ms

    enable_cuda(cuda_include)
    dev = tvm.cuda()
    vms = {v: VirtualMachine(tvm.runtime.load_module(str(folder / f"{v}.so")), dev) for v in variants}
    rng = np.random.default_rng(0)
    rows = {}
    for name, s in table.items():
        b, h, n, m, d = s["batch"], s["heads"], s["q_len"], s["kv_len"], s["head_dim"]
        args = [tvm.runtime.tensor(rng.standard_normal((b, t, h * d), dtype=np.float32), dev) for t in (n, m, m)]
        outputs = {v: vm[name](*args)[0].numpy() for v, vm in vms.items()}
        scale = np.abs(outputs["unfused"]).max()
        rows[name] = {}
        for v, vm in vms.items():
            rows[name][f"cuda_{v}_ms"] = median_ms(lambda vm=vm: vm[name](*args), dev.sync, RUNS, WARMUP, WARMUP_S)["median_ms"]
            rows[name][f"{v}_max_rel_error"] = float(np.abs(outputs[v] - outputs["unfused"]).max() / scale)
        print(name, rows[name], flush=True)
    return dev.device_name, rows


def run_webgpu(folder: Path, table: dict, variants: list[str], node: Path, node_dir: Path, work: Path) -> dict:
    """Each shape's time per variant in Node on Dawn (bench/webgpu_node.mjs)."""
    from gpu_bench import run_logged

    rows = {name: {} for name in table}
    for variant in variants:
        spec = {"bundle": str(folder / f"webgpu-{variant}"), "webgpu_package": str(node_dir / "webgpu"),
                "dawn_options": ["backend=vulkan"], "runs": RUNS, "warmup": WARMUP, "warmup_ms": WARMUP_S * 1000,
                "out": str(work / f"attention-webgpu-{variant}.json"), "image_out": str(work / "unused.u8")}
        (work / f"attention-webgpu-{variant}.spec.json").write_text(json.dumps(spec))
        run_logged([str(node), str(ROOT / "bench" / "webgpu_node.mjs"), str(work / f"attention-webgpu-{variant}.spec.json")])
        raw = json.loads(Path(spec["out"]).read_text())
        for name in table:
            rows[name][f"webgpu_{variant}_ms"] = raw["timings"]["attention"][name]["median_ms"]
    return rows


def run(folder: Path, cuda_include: str, node: Path, node_dir: Path, out: Path) -> None:
    built = json.loads((folder / "shapes.json").read_text())
    table, variants = built["shapes"], built["variants"]
    device, rows = run_cuda(folder, table, variants, cuda_include)
    webgpu = run_webgpu(folder, table, variants, node, node_dir, out)
    for name, s in table.items():
        rows[name] = {**s, **rows[name], **webgpu[name]}
    result = {"device": device, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": RUNS, "warmup": WARMUP,
              "warmup_s": WARMUP_S, "variants": variants, "rows": rows}
    (out / "attention-bench.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Attention kernels per SD 1.5 shape at 512x512 ({result['device']}, {result['date']})", "",
             f"Median of {RUNS} calls after at least {WARMUP} and {WARMUP_S} s, in ms (TFLOP/s of the two products in brackets);",
             "CUDA: our native build; WebGPU: the same graph in Node on Dawn (Vulkan), default robustness, each call",
             "submitted and awaited alone. `unfused`: dlight's schedules for the chain the fused kernel replaced;",
             "`fused`: the kernel tables' choice (websd/kernels/attention.py, row_attention.py); the others: one",
             "head dim's config forced. Max error of each variant against `unfused`, relative to its largest output.", ""]
    for target in ("cuda", "webgpu"):
        lines += [f"## {target}", "", "| shape | B x H | q x kv | d | " + " | ".join(variants) + " |",
                  "| --- | --- | --- | --- | " + " | ".join("---:" for _ in variants) + " |"]
        for name, r in rows.items():
            gflop = 4 * r["batch"] * r["heads"] * r["q_len"] * r["kv_len"] * r["head_dim"] / 1e9
            cells = [f"{r[f'{target}_{v}_ms']} ({gflop / r[f'{target}_{v}_ms']:.1f})" for v in variants]
            lines.append(f"| {name} | {r['batch']} x {r['heads']} | {r['q_len']} x {r['kv_len']} | {r['head_dim']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## max relative error against `unfused` (native)", "", "| shape | " + " | ".join(variants[1:]) + " |",
              "| --- | " + " | ".join("---:" for _ in variants[1:]) + " |"]
    lines += [f"| {name} | " + " | ".join(f"{r[f'{v}_max_rel_error']:.1e}" for v in variants[1:]) + " |" for name, r in rows.items()]
    (out / "attention-bench.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--config", type=attention_tiles, action="append", default=[], metavar="D=...",
                   help="a variant with this kernel config for head dim D (bench/matmul_tiles.py's --attention)")
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--cuda-include", required=True)
    r.add_argument("--node", type=Path, required=True)
    r.add_argument("--node-dir", type=Path, required=True, help="bench/unpack_node.sh's folder")
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "build":
        build(args.out, args.config)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        run(args.folder, args.cuda_include, args.node, args.node_dir, args.out)


if __name__ == "__main__":
    main()
