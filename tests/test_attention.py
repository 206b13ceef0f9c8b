"""Fused attention (websd/passes/attention.py, websd/kernels/attention.py) against PyTorch's
scaled_dot_product_attention: the plain form on llvm, the GPU kernel in headless Chromium's WebGPU
(one wasm for every case: one link), the CUDA codegen of the SD 1.5 shapes, and the pass on the
default model's three components."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from browser import TVMJS, http_server, run_page
from websd.kernels.attention import ATTR, AttentionSpec, Operand, flash_attention, plain_attention, tile_config
from websd.targets import tvm_target

# (groups, q_len, kv_len, head_dim, causal, heads of the (batch, tokens, heads * head_dim) layout
# or 0 for (groups, tokens, head_dim)); small enough for the CPU, odd lengths on purpose.
CASES = [
    (1, 1, 1, 8, False, 0),
    (2, 7, 7, 8, True, 0),
    (4, 77, 77, 64, True, 4),  # CLIP-like, 2 x 4 heads
    (4, 100, 77, 40, False, 2),  # cross-attention
    (2, 333, 333, 40, False, 2),
    (2, 100, 100, 80, False, 1),
    (4, 33, 77, 160, False, 4),
    (1, 100, 100, 512, False, 1),  # VAE-like
    (3, 45, 45, 5, True, 3),  # no table entry: the generic tiles
]


def case_id(case) -> str:
    g, n, m, d, causal, heads = case
    return f"g{g}_q{n}_kv{m}_d{d}{'_causal' if causal else ''}{f'_h{heads}' if heads else ''}"


def make_spec(groups, q_len, kv_len, head_dim, causal, heads) -> AttentionSpec:
    def operand(tokens: int) -> Operand:
        if heads:
            return Operand((groups // heads, tokens, heads * head_dim), heads)
        return Operand((groups, tokens, head_dim))

    return AttentionSpec(groups, q_len, kv_len, head_dim, causal, head_dim**-0.5, operand(q_len), operand(kv_len), operand(kv_len), operand(q_len))


def inputs(spec: AttentionSpec, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(op.shape, dtype=np.float32) for op in (spec.q, spec.k, spec.v)]


def reference(spec: AttentionSpec, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    def heads_first(x: np.ndarray, op: Operand, tokens: int) -> torch.Tensor:
        t = torch.from_numpy(x).double()
        if op.heads:
            t = t.reshape(spec.groups // op.heads, tokens, op.heads, spec.head_dim).transpose(1, 2)
        return t.reshape(spec.groups, tokens, spec.head_dim)

    out = torch.nn.functional.scaled_dot_product_attention(
        heads_first(q, spec.q, spec.q_len), heads_first(k, spec.k, spec.kv_len), heads_first(v, spec.v, spec.kv_len),
        is_causal=spec.causal, scale=spec.scale,
    )
    if spec.out.heads:
        out = out.reshape(spec.groups // spec.out.heads, spec.out.heads, spec.q_len, spec.head_dim).transpose(1, 2)
    return out.reshape(spec.out.shape).float().numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    error = np.abs(got - want).max()
    assert error <= 1e-5 * np.abs(want).max(), f"max abs error {error:.3g}, max abs {np.abs(want).max():.3g}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_plain_form_on_llvm(case) -> None:
    spec = make_spec(*case)
    executable = tvm.compile(tvm.IRModule({"main": plain_attention(spec).with_attr("global_symbol", "main")}), "llvm")
    q, k, v = inputs(spec)
    out = tvm.runtime.tensor(np.zeros(spec.out.shape, np.float32))
    executable["main"](tvm.runtime.tensor(q), tvm.runtime.tensor(k), tvm.runtime.tensor(v), out)
    assert_close(out.numpy(), reference(spec, q, k, v))


def kernel_module(specs: dict[str, AttentionSpec], kernel) -> tvm.IRModule:
    """A Relax function per spec, each one call_tir of `kernel(spec)`."""
    bb = relax.BlockBuilder()
    for name, spec in specs.items():
        params = [relax.Var(n, relax.TensorType(op.shape, "float32")) for n, op in zip("qkv", (spec.q, spec.k, spec.v))]
        with bb.function(name, params):
            gv = bb.add_func(kernel(spec), f"attention_{name}")
            out = bb.emit(relax.call_tir(gv, params, relax.TensorType(spec.out.shape, "float32")))
            bb.emit_func_output(out)
    return bb.get()


PAGE = """<!doctype html>
<script src="tvmjs.js"></script>
<script>
async function run() {
  const gpu = await tvmjs.detectGPUDevice();
  if (gpu === undefined) throw new Error("no WebGPU adapter");
  const wasm = await (await fetch("kernels.wasm")).arrayBuffer();
  const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(), console.log);
  tvm.initWebGPU(gpu.device);
  tvm.beginScope();
  const dev = tvm.webgpu();
  const vm = tvm.createVirtualMachine(dev);
  await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
  const cases = await (await fetch("cases.json")).json();
  const outputs = {};
  for (const c of cases) {
    const args = [];
    for (const input of c.inputs) {
      const data = new Float32Array(await (await fetch(input.file)).arrayBuffer());
      args.push(tvm.empty(input.shape, "float32", dev).copyFrom(data));
    }
    const out = vm.getFunction(c.name)(...args);
    const host = tvm.empty(out.shape, "float32", tvm.cpu()).copyFrom(out);
    await dev.sync();
    outputs[c.name] = Array.from(host.toArray());
  }
  tvm.endScope();
  return outputs;
}
run().then(r => { window.__result = r; }, e => { window.__error = String(e && e.stack || e); });
</script>
"""


@pytest.fixture(scope="module")
def webgpu_outputs(tmp_path_factory, browser) -> dict:
    """Every case's kernel, compiled for webgpu into one wasm, run once in Chromium."""
    from stages.build_runtime import runtime_dir
    from websd.wasm import RUNTIME_OBJECTS, export_wasm

    runtime = runtime_dir()
    if not all((runtime / name).is_file() for name in RUNTIME_OBJECTS):
        pytest.fail(f"{runtime} lacks the web runtime: build it with `doit build_runtime`")
    folder = tmp_path_factory.mktemp("attention-webgpu")
    specs = {case_id(case): make_spec(*case) for case in CASES}
    executable = tvm.compile(kernel_module(specs, flash_attention), tvm_target("webgpu"))
    stats = export_wasm(executable, folder / "kernels.wasm", runtime)
    assert stats["wgsl_kernels"] == len(specs)
    cases, expected = [], {}
    for name, spec in specs.items():
        arrays = inputs(spec)
        for label, array in zip("qkv", arrays):
            array.tofile(folder / f"{name}_{label}.bin")
        cases.append({"name": name, "inputs": [{"file": f"{name}_{label}.bin", "shape": list(a.shape)} for label, a in zip("qkv", arrays)]})
        expected[name] = reference(spec, *arrays)
    (folder / "cases.json").write_text(json.dumps(cases))
    (folder / "index.html").write_text(PAGE)
    shutil.copy(TVMJS, folder / "tvmjs.js")
    with http_server(folder) as url:
        got = run_page(browser, url + "index.html")
    return {name: (np.array(got[name], np.float32).reshape(specs[name].out.shape), expected[name]) for name in specs}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gpu_kernel_in_chromium_webgpu(webgpu_outputs, case) -> None:
    got, want = webgpu_outputs[case_id(case)]
    assert_close(got, want)
