"""Browser plumbing for tests that run tvmjs pages in real headless Chromium with WebGPU.

On a machine without a GPU, Chromium's WebGPU adapter is SwiftShader (on the CPU). A page under
test reports back by setting `window.__result` (any JSON value) or `window.__error` (a string).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


CHROMIUM = Path("/usr/bin/chromium")
# Headless WebGPU (SwiftShader) plus no background traffic: the machine has no internet.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a secure context, as WebGPU needs); yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium():
    """Launch Debian's Chromium through Playwright, which gives it a fresh profile each time."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (install.sh does)")
    with sync_playwright() as playwright:
        # `playwright install` cannot download browsers here, so use the system one.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def run_page(browser, url: str, timeout_s: float = 300) -> Any:
    """Open `url`, wait until it sets window.__result or window.__error; return the result."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
    try:
        page.goto(url)
        try:
            page.wait_for_function(
                "window.__result !== undefined || window.__error !== undefined",
                timeout=timeout_s * 1000,
            )
        except PlaywrightTimeout:
            raise AssertionError(f"{url}: no result in {timeout_s} s\n" + "\n".join(console)) from None
        error = page.evaluate("window.__error")
        if error is not None:
            raise AssertionError(f"{url}: {error}\n" + "\n".join(console))
        return page.evaluate("window.__result")
    finally:
        page.close()


# Runs Relax functions of one or more wasm builds on given inputs and returns their outputs:
# cases.json lists {wasm, name, inputs: [{file, shape}]}; each function returns one tensor.
FUNCTIONS_PAGE = """<!doctype html>
<script src="tvmjs.js"></script>
<script>
async function run() {
  const gpu = await tvmjs.detectGPUDevice();
  if (gpu === undefined) throw new Error("no WebGPU adapter");
  const cases = await (await fetch("cases.json")).json();
  const vms = {};
  const outputs = {};
  for (const c of cases) {
    if (vms[c.wasm] === undefined) {
      const wasm = await (await fetch(c.wasm)).arrayBuffer();
      const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(), console.log);
      tvm.initWebGPU(gpu.device);
      tvm.beginScope();
      const vm = tvm.createVirtualMachine(tvm.webgpu());
      await tvm.asyncLoadWebGPUPipelines(vm.getInternalModule());
      vms[c.wasm] = { tvm, vm };
    }
    const { tvm, vm } = vms[c.wasm];
    const dev = tvm.webgpu();
    const args = [];
    for (const input of c.inputs) {
      const data = new Float32Array(await (await fetch(input.file)).arrayBuffer());
      args.push(tvm.empty(input.shape, "float32", dev).copyFrom(data));
    }
    const out = vm.getFunction(c.name)(...args);
    const host = tvm.empty(out.shape, "float32", tvm.cpu()).copyFrom(out);
    await dev.sync();
    outputs[c.wasm + ":" + c.name] = Array.from(host.toArray());
  }
  return outputs;
}
run().then(r => { window.__result = r; }, e => { window.__error = String(e && e.stack || e); });
</script>
"""


def run_functions(browser, folder: Path, wasms: dict, cases: dict) -> dict:
    """Each case's function in headless Chromium's WebGPU: `wasms` maps a file name to a webgpu
    executable (linked into `folder`), `cases` maps (wasm, function) to its float32 inputs.
    Returns (wasm, function) -> its output, flat."""
    from stages.build_runtime import runtime_dir
    from websd.paths import TVMJS
    from websd.wasm import RUNTIME_OBJECTS, export_wasm

    runtime = runtime_dir()
    if not all((runtime / name).is_file() for name in RUNTIME_OBJECTS):
        raise AssertionError(f"{runtime} lacks the web runtime: build it with `doit build_runtime`")
    for name, executable in wasms.items():
        export_wasm(executable, folder / name, runtime)
    listed = []
    for i, ((wasm, function), arrays) in enumerate(cases.items()):
        files = []
        for j, array in enumerate(arrays):
            files.append({"file": f"input{i}_{j}.bin", "shape": list(array.shape)})
            np.ascontiguousarray(array, np.float32).tofile(folder / files[-1]["file"])
        listed.append({"wasm": wasm, "name": function, "inputs": files})
    (folder / "cases.json").write_text(json.dumps(listed))
    (folder / "index.html").write_text(FUNCTIONS_PAGE)
    shutil.copy(TVMJS, folder / "tvmjs.js")
    with http_server(folder) as url:
        got = run_page(browser, url + "index.html")
    return {key: np.array(got[f"{key[0]}:{key[1]}"], np.float32) for key in cases}
