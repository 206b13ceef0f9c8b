"""The page itself (dist/index.html) in headless Chromium, as a user runs it (issue 10): on the
GPU machine Debian's chromium-headless-shell on the card's Vulkan driver (chromium_bench.sh),
here on SwiftShader (tests/test_chromium_bench.py).

It serves the bundle on 127.0.0.1 and drives the page through the Chrome DevTools Protocol (over
--remote-debugging-pipe: the Python standard library is enough), timing with the page's own
clock (performance.now()):

- first load, in a fresh profile: from navigation until the page is ready to generate
  (`websd.ready`): every weight shard downloaded, its md5 checked and stored in the Cache API,
  the weights uploaded, every shader compiled;
- reload: the same navigation again, the weights read from the Cache API (shards fetched: 0);
- generation: gpu_bench.py's prompt, negative prompt, seed, steps, scheduler and guidance typed
  into the form, from clicking Generate until the image is drawn; twice by default, the second
  being the figure (gpu_bench's Node rows time a generation after an untimed one too);

and the canvas against PyTorch fp32's image of the same inputs: gpu_bench.py's, when its run
left one made from exactly these inputs in its work folder, else gpu_bench's PyTorch engine
run here (where there is CUDA). The bundle comes without weights (pack_gpu.sh bundle): they are
made from the config's seed as gpu_bench.py makes them (its `prepare`), sharded as the config's
shard_params shards them, so the page downloads what `doit dist` would serve. Writes
chromium.json, chromium.png and the browser's own log into --out; exits 1 if a step failed.

    python3 bench/chromium_bench.py --config C --chromium BINARY --bundle DIR --out DIR [--adapter swiftshader]

`python3 bench/gpu_bench.py merge-chromium chromium.json bench/results` adds its row to
gpu-bench.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import http.server
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

import gpu_bench  # bench/, beside this file (it puts the repository on sys.path)
from websd.config import load_config

# No background traffic (there is no internet), no first-run UI, WebGPU on.
FLAGS = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check"]
# The GPU through Vulkan, as found on the GPU machine (../shared FINDINGS.md): without a window
# system, Vulkan starts only with --disable-vulkan-surface ("vkCreateInstance() failed: -7").
ADAPTER_FLAGS = {
    "gpu": ["--disable-gpu-sandbox", "--ignore-gpu-blocklist", "--enable-features=Vulkan", "--use-angle=vulkan",
            "--disable-vulkan-surface"],
    "swiftshader": [],  # what headless Chromium falls back to without a GPU
}
REFERENCE_ENGINE = "pytorch-fp32-no-tf32"  # gpu_bench.py's engine whose image the others are compared with


class DevTools:
    """A browser driven through the Chrome DevTools Protocol over --remote-debugging-pipe: JSON
    messages, each ended by a NUL byte, written to the browser's fd 3 and read from its fd 4."""

    def __init__(self, binary: Path, flags: list[str], env: dict, log: Path):
        browser_reads, ours_writes = os.pipe()
        ours_reads, browser_writes = os.pipe()
        # bash puts the browser's ends at its fds 3 and 4 (a preexec_fn would be unsafe: we have
        # threads), taken from numbers above those, so that no redirection overwrites the other.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (browser_reads, browser_writes)]
        redirect = f'exec "$@" 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-'
        self.log = log
        with log.open("w") as sink:
            self.process = subprocess.Popen(["bash", "-c", redirect, "chromium", str(binary), *flags, "--remote-debugging-pipe",
                                             "about:blank"], pass_fds=high, env=env, stdout=sink, stderr=subprocess.STDOUT)
        for fd in (browser_reads, browser_writes, *high):
            os.close(fd)
        self.writer = os.fdopen(ours_writes, "wb")
        self.messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []  # received, not yet waited for
        self.console: list[str] = []  # the page's console and uncaught errors
        self.last_id = 0
        threading.Thread(target=self._read, args=(os.fdopen(ours_reads, "rb"),), daemon=True).start()

    def _read(self, pipe) -> None:
        pending = b""
        while chunk := pipe.read1(1 << 20):
            *complete, pending = (pending + chunk).split(b"\0")
            for message in complete:
                self.messages.put(json.loads(message))
        self.messages.put(None)  # the browser closed its end

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        try:
            message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{waiting_for}: nothing within the time allowed") from None
        if message is None:
            raise RuntimeError(f"the browser exited ({self.process.wait()}) during {waiting_for}: " + self.log_tail())
        if message.get("method") == "Runtime.consoleAPICalled":
            args = message["params"]["args"]
            self.console.append(f"{message['params']['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif message.get("method") == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            self.console.append("uncaught: " + details.get("exception", {}).get("description", details["text"]))
        return message

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout_s: float = 60) -> dict:
        self.last_id += 1
        request = {"id": self.last_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        self.writer.write(json.dumps(request).encode() + b"\0")
        self.writer.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']['message']}")
                return message["result"]
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, matches, timeout_s: float) -> dict:
        """The first event `method` whose params `matches`, received already or within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events:
                if event["method"] == method and matches(event["params"]):
                    self.events.remove(event)
                    return event["params"]
            self.events.append(self._receive(deadline, method))

    def log_tail(self, lines: int = 20) -> str:
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout_s=10)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):  # the browser may have gone first
            self.writer.close()


class Page:
    """One tab of the browser, in the browser's (persistent) profile."""

    def __init__(self, browser: DevTools):
        self.browser = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable"):
            self.call(method)
        self.call("Page.setLifecycleEventsEnabled", {"enabled": True})

    def call(self, method: str, params: dict | None = None, timeout_s: float = 60) -> dict:
        return self.browser.call(method, params, self.session, timeout_s)

    def evaluate(self, expression: str, timeout_s: float = 60):
        """The value of a JavaScript expression (a promise's, once settled); a thrown error raises."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, timeout_s)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description", details["text"]))
        return result["result"].get("value")

    def navigate(self, url: str, timeout_s: float) -> None:
        """Until the page at `url` has loaded (its scripts run; the pipeline loads on)."""
        loader = self.call("Page.navigate", {"url": url})["loaderId"]
        self.browser.wait_event("Page.lifecycleEvent", lambda p: p["loaderId"] == loader and p["name"] == "load", timeout_s)

    def ready_ms(self, timeout_s: float) -> float:
        """Milliseconds from the navigation's start until the page's pipeline is ready (the page's
        clock); websd.ready rejects with the error the page shows."""
        return self.evaluate("window.websd.ready.then(() => performance.now(),"
                             " () => { throw new Error(document.getElementById('error').textContent); })", timeout_s)

    def component_reports(self) -> dict:
        """Each loaded component's load times (pipeline.js's loadComponent report: instantiate_ms,
        shader_compile_ms, weights_ms); the rest of a load is the download, md5 and Cache API."""
        return self.evaluate("Object.fromEntries(window.websd.pipeline.components.map("
                             "(c) => [c, window.websd.pipeline.component(c).report]))")

    def weight_steps(self) -> dict:
        """The page's time in each step of its shards' way into the Cache API (web/src/weights.js's
        performance.measure entries), summed over the shards: {step_ms, step_shards}. The shards
        travel a few at a time, so the sums can exceed the load's wall time."""
        return self.evaluate("""(() => {
  const steps = {};
  for (const e of performance.getEntriesByType("measure")) {
    if (!e.name.startsWith("websd weights: ")) continue;
    const step = e.name.slice("websd weights: ".length);
    steps[`${step}_ms`] = Math.round((steps[`${step}_ms`] || 0) + e.duration);
    steps[`${step}_shards`] = (steps[`${step}_shards`] || 0) + 1;
  }
  return steps;
})()""")

    def adapter(self) -> dict | None:
        """The WebGPU adapter this page would get (another request than the page's own)."""
        return self.evaluate("navigator.gpu.requestAdapter().then((a) => a && Object.fromEntries("
                             "['vendor', 'architecture', 'device', 'description'].map((k) => [k, a.info[k]])))")

    def generate(self, fields: dict, timeout_s: float) -> dict:
        """Types `fields` (element id: value) into the form, clicks Generate and waits until the
        page says it is done: the milliseconds from the click, the status and the steps bar."""
        return self.evaluate(f"""(async (fields) => {{
  const $ = (id) => document.getElementById(id);
  for (const [id, value] of Object.entries(fields)) {{
    $(id).value = value;
    $(id).dispatchEvent(new Event("input", {{ bubbles: true }}));  // the page checks its fields on input
  }}
  if ($("generate").disabled) {{
    const problems = [...document.querySelectorAll(".field-error:not([hidden])")].map((e) => e.textContent);
    throw new Error("Generate is disabled: " + (problems.join("; ") || "the page is not ready"));
  }}
  // The page draws the image, then says "Done in ..." (or shows an error).
  const drawn = new Promise((resolve, reject) => {{
    const observer = new MutationObserver(() => {{
      const done = $("status").textContent.startsWith("Done"), failed = !$("error").hidden;
      if (done || failed) observer.disconnect();
      if (done) resolve(performance.now()); else if (failed) reject(new Error($("error").textContent));
    }});
    observer.observe($("status"), {{ childList: true, characterData: true, subtree: true }});
  }});
  const clicked = performance.now();
  $("generate").click();
  const ms = Math.round(((await drawn) - clicked) * 10) / 10;
  return {{ ms, status: $("status").textContent, steps: [$("steps-progress").value, $("steps-progress").max] }};
}})({json.dumps(fields)})""", timeout_s)

    def canvas_rgb(self) -> np.ndarray:
        image = self.evaluate("(() => { const c = document.getElementById('image');"
                              " return {height: c.height, width: c.width,"
                              " rgba: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)}; })()")
        return np.array(image["rgba"], np.uint8).reshape(image["height"], image["width"], 4)[..., :3]


class _BundleHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the bundle quietly, counting the weight shards asked for (server.shard_requests)."""

    def do_GET(self):
        if "params_shard_" in self.path:
            self.server.shard_requests += 1
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(bundle: Path):
    """The bundle on 127.0.0.1 (a secure context, as WebGPU needs), as `doit serve` serves it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_BundleHandler, directory=str(bundle)))
    server.shard_requests = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def pytorch_fp32_image(inputs: dict, work: Path) -> tuple[np.ndarray | None, str]:
    """PyTorch fp32's image of `inputs` and where it comes from: gpu_bench.py's run, if it left
    one made from exactly these inputs (its model folder aside: made the same way from the same
    config); else gpu_bench's PyTorch engine, run here where there is CUDA."""
    import torch

    request, image = (gpu_bench.WORK / f"{REFERENCE_ENGINE}.{suffix}" for suffix in ("request.json", "image.npy"))
    if request.is_file() and image.is_file():
        theirs = json.loads(request.read_text())["inputs"]
        ours = json.loads(json.dumps(inputs))  # as a request file holds them
        if {k: v for k, v in theirs.items() if k != "model"} == {k: v for k, v in ours.items() if k != "model"}:
            return np.load(image), f"{image} (gpu_bench.py's run)"
    if not torch.cuda.is_available():
        return None, "none: no PyTorch fp32 image of these inputs, and no CUDA here to make one"
    _, image = gpu_bench.child(REFERENCE_ENGINE, {"inputs": inputs}, work)
    return image, "gpu_bench.py's PyTorch engine, run after the page"


def card() -> str | None:
    """The GPU's name and driver, where there is an NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader", "--id=0"]
    return subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()


def run(args) -> dict:
    config = load_config(args.config)
    args.work.mkdir(parents=True, exist_ok=True)
    inputs = gpu_bench.prepare(config, args.bundle, args.work, **config.stage("shard_params"))
    fields = {"prompt": gpu_bench.PROMPT, "negative-prompt": gpu_bench.NEGATIVE_PROMPT, "seed": str(inputs["seed"]),
              "steps": str(gpu_bench.STEPS), "scheduler": gpu_bench.SCHEDULER, "guidance": str(gpu_bench.GUIDANCE)}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "card": card(), "config": str(args.config),
              "adapter_flags": args.adapter, "form": fields, "errors": {}}
    save = lambda: (args.out / "chromium.json").write_text(json.dumps(result, indent=1) + "\n")  # noqa: E731  (after each step)
    profile = args.work / "profile"
    shutil.rmtree(profile, ignore_errors=True)  # the first load finds an empty Cache API
    env = {**os.environ, **({"LD_LIBRARY_PATH": str(args.library_path)} if args.library_path else {})}
    flags = [*FLAGS, *ADAPTER_FLAGS[args.adapter], f"--user-data-dir={profile}"]
    image = None
    with serve(args.bundle) as server:
        browser = DevTools(args.chromium, flags, env, args.out / "chromium-browser.log")
        step = "start"
        try:
            result["chromium"] = browser.call("Browser.getVersion")["product"]
            page = Page(browser)
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            for step in ("first_load", "reload"):
                requested, deadline = server.shard_requests, time.monotonic() + args.load_timeout
                page.navigate(url, args.load_timeout)
                if step == "first_load":  # before waiting minutes for a load on the CPU
                    result["adapter"] = page.adapter()
                    if args.adapter == "gpu" and (result["adapter"] or {}).get("architecture") in (None, "swiftshader"):
                        raise RuntimeError(f"WebGPU's adapter is not the GPU: {result['adapter']}")
                result[f"{step}_s"] = round(page.ready_ms(deadline - time.monotonic()) / 1000, 2)
                result[f"{step}_shard_requests"] = server.shard_requests - requested
                result[f"{step}_components"] = page.component_reports()
                result[f"{step}_weight_steps"] = page.weight_steps()
                print(f"chromium_bench: {step}: {result[f'{step}_s']} s, {result[f'{step}_shard_requests']} shards fetched;"
                      f" per component: {result[f'{step}_components']}; weights: {result[f'{step}_weight_steps']}", flush=True)
                save()
            result["generations"] = []
            for number in range(1, args.generations + 1):
                step = f"generation {number}"
                result["generations"].append(page.generate(fields, args.generate_timeout))
                print(f"chromium_bench: {step}: {result['generations'][-1]}", flush=True)
            result["generation_ms"] = result["generations"][-1]["ms"]
            image = page.canvas_rgb()
            result["image"] = list(image.shape)
        except Exception as error:  # what was measured stays; the error says where it stopped
            result["errors"][step] = f"{type(error).__name__}: {error}"
            print(f"chromium_bench: {step} failed: {result['errors'][step]}\n  page console: " + " | ".join(browser.console[-20:])
                  + f"\n  browser log: {browser.log_tail()}", flush=True)
        finally:
            browser.close()
    save()
    if image is not None:
        from PIL import Image

        Image.fromarray(image).save(args.out / "chromium.png")
        reference, result["reference_image"] = pytorch_fp32_image(inputs, args.work)
        if reference is not None:
            result["max_pixel_diff_vs_pytorch_fp32"] = int(np.abs(image.astype(int) - reference.astype(int)).max())
        save()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--chromium", type=Path, required=True, help="the browser's binary")
    parser.add_argument("--bundle", type=Path, required=True, help="dist/ without weights (they are written into its params/)")
    parser.add_argument("--adapter", choices=ADAPTER_FLAGS, default="gpu", help="the GPU through Vulkan, or SwiftShader (no GPU)")
    parser.add_argument("--library-path", help="LD_LIBRARY_PATH for the browser (the libraries this machine lacks)")
    parser.add_argument("--load-timeout", type=float, default=360, help="seconds allowed for each load")
    parser.add_argument("--generations", type=int, default=2, help="generations in a row; the last one is the figure")
    parser.add_argument("--generate-timeout", type=float, default=120, help="seconds allowed for each generation")
    parser.add_argument("--work", type=Path, default=Path("/tmp/websd-chromium"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "generations"}, indent=1))
    raise SystemExit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
