"""A small Relax model compiled for WebGPU, linked by export_wasm, runs in headless Chromium through
tvmjs and matches numpy. Slow: the emcc -O3 link takes ~1.5 min here (and
the runtime bitcode is built into the cache first if missing, ~1.5 min more)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tvm
import tvm.s_tir.dlight as dl
from tvm import relax
from tvm.contrib import tvmjs
from tvm.relax.backend import gpu_generic
from tvm.script import ir as I
from tvm.script import relax as R

from stages.build_runtime import build_runtime, runtime_dir
from websd.wasm import RUNTIME_OBJECTS, export_wasm

from browser import http_server, run_page
from websd.paths import TVMJS

TARGET = tvm.target.Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})


# Weights come from the tensor cache, here as one tuple argument (getParamsFromCache gives a TVMArray).
@I.ir_module
class Model:
    @R.function
    def main(
        x: R.Tensor((4, 64), "float32"),
        params: R.Tuple(R.Tensor((64, 32), "float32"), R.Tensor((32,), "float32")),
    ):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            z = R.add(R.matmul(x, params[0]), params[1])
            s = R.nn.softmax(z, axis=-1)
            R.output(z, s)
        return (s, z)


GPU_RULES = (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())

HARNESS = """<!doctype html>
<script src="tvmjs.js"></script>
<script>
async function run() {
  const gpu = await tvmjs.detectGPUDevice();
  if (gpu === undefined) throw new Error("no WebGPU adapter");
  const wasm = await (await fetch("model.wasm")).arrayBuffer();
  const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(), console.log);
  tvm.initWebGPU(gpu.device);
  tvm.beginScope();
  const dev = tvm.webgpu();
  const vm = tvm.createVirtualMachine(dev);
  await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
  await tvm.fetchTensorCache(new URL("params/", location.href).href, dev);
  const params = tvm.getParamsFromCache("param", 2);
  const input = await (await fetch("input.json")).json();
  const x = tvm.empty(input.shape, "float32", dev).copyFrom(new Float32Array(input.data));
  const out = vm.getFunction("main")(x, params);
  const outputs = [];
  for (let i = 0; i < out.size(); i++) {
    const t = out.get(i);
    const host = tvm.empty(t.shape, t.dtype, tvm.cpu()).copyFrom(t);
    await dev.sync();
    outputs.push(Array.from(host.toArray()));
  }
  tvm.endScope();
  return {outputs, vendor: gpu.adapterInfo.vendor, architecture: gpu.adapterInfo.architecture};
}
run().then(r => { window.__result = r; }, e => { window.__error = String(e && e.stack || e); });
</script>
"""


def _compile(schedule: bool):
    mod = relax.transform.LegalizeOps()(Model)
    if not schedule:
        # tvm.compile's default webgpu pipeline adds dlight schedules itself; the trap is a build
        # whose own pipeline leaves them out: it "succeeds" with every kernel on the wasm host.
        unscheduled = gpu_generic.dataflow_lower_passes(TARGET) + gpu_generic.finalize_passes(TARGET)
        return tvm.compile(mod, TARGET, relax_pipeline=tvm.transform.Sequential(unscheduled))
    with TARGET:
        mod = dl.ApplyDefaultSchedule(*GPU_RULES)(mod)
    return tvm.compile(mod, TARGET)


@pytest.fixture(scope="module")
def runtime():
    out = runtime_dir()
    if not all((out / name).is_file() for name in RUNTIME_OBJECTS):
        build_runtime(out)
    return out


def test_export_refuses_executable_without_webgpu(tmp_path, runtime):
    with pytest.raises(ValueError, match="no webgpu module"):
        export_wasm(_compile(schedule=False), tmp_path / "model.wasm", runtime)
    assert not (tmp_path / "model.wasm").exists()


def test_wasm_runs_in_chromium(tmp_path, runtime, browser):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64), dtype=np.float32)
    w = rng.standard_normal((64, 32), dtype=np.float32) * 0.2
    b = rng.standard_normal(32, dtype=np.float32)
    z = x @ w + b
    softmax = np.exp(z - z.max(axis=-1, keepdims=True))
    softmax /= softmax.sum(axis=-1, keepdims=True)

    stats = export_wasm(_compile(schedule=True), tmp_path / "model.wasm", runtime)
    assert stats["wgsl_kernels"] >= 2 and stats["wgsl_bytes"] > 0

    # getParamsFromCache("param", n) looks up "param_0" .. "param_{n-1}".
    tvmjs.dump_tensor_cache({"param_0": w, "param_1": b}, str(tmp_path / "params"),
                            encode_format="raw", show_progress=False)
    (tmp_path / "input.json").write_text(json.dumps({"shape": list(x.shape), "data": x.ravel().tolist()}))
    shutil.copy(TVMJS, tmp_path / "tvmjs.js")
    (tmp_path / "index.html").write_text(HARNESS)

    with http_server(tmp_path) as url:
        result = run_page(browser, url + "index.html")

    print("wgsl", stats, "adapter", result["vendor"], result["architecture"])
    got_softmax, got_z = (np.array(o, dtype=np.float32).reshape(4, 32) for o in result["outputs"])
    np.testing.assert_allclose(got_z, z, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got_softmax, softmax, atol=1e-5, rtol=1e-5)
