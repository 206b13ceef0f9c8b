"""The browser bundle (dist/) end to end in headless Chromium (WebGPU on SwiftShader here).

The page is served by `doit serve` as a user would run it, with WEBSD_DIST naming the bundle:
the default model's images match diffusers, the weights are cached for reloads, the
text-encoder-only bundle offers its JS API, and failures (no WebGPU, a corrupt or missing shard,
too small GPU limits) are reported on the page. Slow: shader compilation on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from browser import CHROMIUM, CHROMIUM_ARGS
from conftest import DEFAULT_CONFIG, SCRATCH, doit, layout_of
from test_native import NEGATIVE, PROMPT, diffusers_image
from websd.config import load_config
from websd.paths import ROOT, Layout, model_folder

LOAD_TIMEOUT_MS = 600_000  # downloads plus compiling every WGSL kernel on SwiftShader
GENERATE_TIMEOUT_MS = 600_000
CACHE_SCOPE = "websd"  # web/src/browser.js


@pytest.fixture(scope="session")
def default_dist(default_build: Path) -> Path:
    return Path(os.environ["WEBSD_DIST"])  # default_build ran `doit dist` into it


@pytest.fixture(scope="session")
def text_encoder_dist(default_build: Path) -> Path:
    path = SCRATCH / "dist-text-encoder"
    doit(f"config={DEFAULT_CONFIG}", "text_encoder_only", env={"WEBSD_DIST": str(path)})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(dist: Path):
    """`doit serve --port N` on `dist`; yields the base URL. Its request log goes to a file."""
    port = free_port()
    log = (dist.parent / f"serve-{dist.name}.log").open("w")
    env = {**os.environ, "WEBSD_DIST": str(dist)}
    server = subprocess.Popen([sys.executable, "-m", "doit", "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "manifest.json", timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"doit serve did not start:\n{Path(log.name).read_text()}") from None
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def copy_dist(src: Path, dst: Path) -> Path:
    """A real copy (the bundle hard-links the build's shards: never edit those in place)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    return dst


class Page:
    """A page in its own browser context (its own Cache API), logging console and shard requests."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.log: list[str] = []
        self.shard_requests: list[str] = []
        self.page.on("console", lambda m: self.log.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.log.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: "params_shard" in r.url and self.shard_requests.append(r.url))
        self.page.goto(url)

    def wait_ready(self) -> None:
        """Until the pipeline loaded (or failed: then with the page's error)."""
        self.page.wait_for_function("window.websd && (window.websd.pipeline || !document.getElementById('error').hidden)", timeout=LOAD_TIMEOUT_MS)
        assert self.error() is None, f"{self.error()}\n" + "\n".join(self.log)

    def error(self) -> str | None:
        return self.page.evaluate("document.getElementById('error').hidden ? null : document.getElementById('error').textContent")

    def wait_error(self) -> str:
        self.page.wait_for_function("!document.getElementById('error').hidden", timeout=LOAD_TIMEOUT_MS)
        return self.error()

    def progress(self, name: str) -> tuple[float, float]:
        return tuple(self.page.evaluate(f"[document.getElementById('{name}').value, document.getElementById('{name}').max]"))

    def canvas(self) -> np.ndarray:
        rgba = self.page.evaluate(
            "(() => { const c = document.getElementById('image');"
            " return [c.height, c.width, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; })()"
        )
        return np.array(rgba[2], dtype=np.uint8).reshape(rgba[0], rgba[1], 4)

    def cached_urls(self) -> list[str]:
        return self.page.evaluate(f"(async () => (await (await caches.open('{CACHE_SCOPE}')).keys()).map(r => r.url))()")

    def fill(self, seed: str = "42", steps: str = "20", scheduler: str = "dpm-solver", guidance: str = "7.5") -> None:
        p = self.page
        p.fill("#prompt", PROMPT)
        p.fill("#negative-prompt", NEGATIVE)
        p.select_option("#scheduler", scheduler)
        p.fill("#seed", seed)
        p.fill("#steps", steps)
        p.fill("#guidance", guidance)

    def generate(self, scheduler: str, seed: int | str, steps: int = 20, guidance: str = "7.5") -> np.ndarray:
        p = self.page
        self.fill(str(seed), str(steps), scheduler, guidance)
        p.click("#generate")
        assert p.is_disabled("#generate")  # no second generation while one runs
        p.wait_for_function("!document.getElementById('generate').disabled", timeout=GENERATE_TIMEOUT_MS)
        assert self.error() is None, f"{self.error()}\n" + "\n".join(self.log)
        assert self.progress("steps-progress") == (steps, steps)
        return self.canvas()[..., :3]

    def field_error(self, field: str) -> str | None:
        return self.page.evaluate(f"(e => e.hidden ? null : e.textContent)(document.getElementById('{field}-error'))")

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def default_page(browser, default_dist: Path):
    with serve(default_dist) as url:
        start = time.perf_counter()
        page = Page(browser, url)
        page.wait_ready()
        print(f"\ndefault page ready in {time.perf_counter() - start:.1f} s")
        try:
            yield page
        finally:
            page.close()


@pytest.fixture(scope="module")
def reference():
    """diffusers' image for the default model, per scheduler."""
    config = load_config(DEFAULT_CONFIG)
    model = model_folder(Layout(config.build_key).model)
    return lambda scheduler, seed, guidance=7.5: diffusers_image(model, scheduler, seed, config.height, config.width, guidance)


def test_requests_no_limits_beyond_the_defaults(default_page: Page) -> None:
    """The default build fits WebGPU's default limits: the page asks the adapter for nothing more."""
    assert default_page.page.evaluate("window.websd.pipeline.requestedLimits") == {}


def test_weights_progress_complete(default_page: Page) -> None:
    value, maximum = default_page.progress("weights-progress")
    assert maximum > 1 and value == maximum
    assert default_page.shard_requests  # downloaded by the page itself


@pytest.mark.parametrize("scheduler", ["dpm-solver", "pndm"])
def test_generate_matches_diffusers(default_page: Page, reference, scheduler: str) -> None:
    start = time.perf_counter()
    ours = default_page.generate(scheduler, seed=42)
    seconds = time.perf_counter() - start
    expected = reference(scheduler, 42)
    assert ours.shape == expected.shape
    assert expected.std() > 10  # a real image
    diff = np.abs(ours.astype(int) - expected).max()
    print(f"\n{scheduler}: 20 steps in the browser in {seconds:.1f} s; max pixel difference to diffusers {diff}")
    assert diff <= 3


def test_second_generation_without_reload(default_page: Page, reference) -> None:
    ours = default_page.generate("dpm-solver", seed=7)
    assert np.abs(ours.astype(int) - reference("dpm-solver", 7)).max() <= 3


@pytest.mark.parametrize("seed, guidance", [
    (7, "0"),  # no guidance: the prompt alone through the UNet's batch-1 function
    (7, "1"),
    (7, "7.3"),  # any finite guidance, not only multiples of the field's old step of 0.5
    (str(2**64 - 1), "7.5"),  # seeds are exact up to 2^64 - 1 (a JS number is not above 2^53)
    ("-1", "7.5"),  # torch seeds -1 as 2^64 - 1
])
def test_inputs_mean_what_they_mean_to_diffusers(default_page: Page, reference, seed, guidance: str) -> None:
    ours = default_page.generate("dpm-solver", seed=seed, guidance=guidance)
    expected = reference("dpm-solver", int(seed), guidance=float(guidance))
    assert np.abs(ours.astype(int) - expected).max() <= 3


@pytest.mark.parametrize("field, value, message", [
    ("seed", "", "Seed must be an integer from -9223372036854775808 to 18446744073709551615"),
    ("seed", "12abc", "Seed must be an integer"),
    ("seed", str(2**64), f"got {2**64}"),
    ("seed", "1.5", "Seed must be an integer"),
    ("guidance", "", "Guidance must be a finite number"),
    ("guidance", "abc", "Guidance must be a finite number"),
    ("guidance", "Infinity", "Guidance must be a finite number"),
    ("steps", "0", "Steps must be a whole number from 1 to 50 for dpm-solver"),
    ("steps", "51", "from 1 to 50"),
    ("steps", "", "Steps must be a whole number"),
])
def test_bad_input_is_named_and_never_runs(default_page: Page, field: str, value: str, message: str) -> None:
    page = default_page.page
    default_page.fill()
    assert not page.is_disabled("#generate") and default_page.field_error(field) is None
    page.evaluate("() => { window.__generateCalls = 0; const u = window.websd.pipeline; window.__generate ??= u.generate;"
                  " u.generate = (...a) => { window.__generateCalls++; return window.__generate(...a); }; }")
    page.fill(f"#{field}", value)
    assert message in default_page.field_error(field)
    assert page.is_disabled("#generate")
    page.press(f"#{field}", "Enter")  # submitting by keyboard does not start a run either
    page.wait_for_timeout(200)
    assert page.evaluate("window.__generateCalls") == 0
    default_page.fill()  # a good value clears the message
    assert default_page.field_error(field) is None and not page.is_disabled("#generate")


def test_pndm_counts_the_steps_asked_for(default_page: Page) -> None:
    """PNDM evaluates the UNet once more than the steps asked for (its warm-up); the page counts
    steps as diffusers' progress bar does: "Step k of 7" for 7 steps, never "of 8"."""
    page = default_page.page
    page.evaluate("window.__statuses = []; new MutationObserver(() => window.__statuses.push("
                  "document.getElementById('status').textContent)).observe(document.getElementById('status'),"
                  " {childList: true, characterData: true, subtree: true})")
    default_page.generate("pndm", seed=3, steps=7)
    steps = [t for t in page.evaluate("window.__statuses") if t.startswith("Step")]
    assert steps == [f"Step {k} of 7…" for k in range(1, 8)]


def test_reload_uses_cached_weights(default_page: Page) -> None:
    default_page.shard_requests.clear()
    default_page.page.reload()
    default_page.wait_ready()
    assert default_page.shard_requests == []
    value, maximum = default_page.progress("weights-progress")
    assert maximum > 1 and value == maximum


def test_text_encoder_only(browser, text_encoder_dist: Path) -> None:
    import torch
    from transformers import CLIPTokenizer

    from websd.components import load_component
    from websd.tokenizer import token_ids

    manifest = json.loads((text_encoder_dist / "manifest.json").read_text())
    assert list(manifest["components"]) == ["text_encoder"]
    model = model_folder(layout_of(DEFAULT_CONFIG).model)
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    encoder = load_component("text_encoder", model)
    with serve(text_encoder_dist) as url:
        page = Page(browser, url)
        try:
            page.wait_ready()
            assert page.page.is_hidden("#controls")  # no generation offered
            for prompt in (PROMPT, NEGATIVE, ""):
                got = np.array(page.page.evaluate("async p => Array.from(await window.websd.pipeline.encode(p))", prompt), np.float32)
                with torch.no_grad():
                    expected = encoder(torch.from_numpy(token_ids(tokenizer, prompt))).numpy()
                assert got.shape == (expected.size,)
                assert np.abs(got - expected.ravel()).max() <= 1e-4 * np.abs(expected).max(), prompt
        finally:
            page.close()


def test_without_webgpu_flag(browser, default_dist: Path) -> None:
    args = [a for a in CHROMIUM_ARGS if a != "--enable-unsafe-webgpu"]
    plain = browser.browser_type.launch(executable_path=str(CHROMIUM), args=args)
    try:
        with serve(default_dist) as url:
            page = Page(plain, url)
            error = page.wait_error()
            assert "WebGPU is unavailable" in error
            assert "--enable-unsafe-webgpu" in error  # says what to do
            assert page.shard_requests == []
    finally:
        plain.close()


def test_corrupt_shard(browser, default_dist: Path) -> None:
    dist = copy_dist(default_dist, SCRATCH / "dist-corrupt")
    shard = dist / "params" / "unet" / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with serve(dist) as url:
        page = Page(browser, url)
        try:
            assert "checksum mismatch in params/unet/params_shard_0.bin" in page.wait_error()
            assert not page.canvas().any()  # nothing drawn
            assert not [u for u in page.cached_urls() if "/params/unet/" in u]
            assert page.page.is_disabled("#generate")
        finally:
            page.close()


def test_missing_shard(browser, default_dist: Path) -> None:
    dist = copy_dist(default_dist, SCRATCH / "dist-missing")
    (dist / "params" / "vae_decoder" / "params_shard_0.bin").unlink()
    with serve(dist) as url:
        page = Page(browser, url)
        try:
            assert "missing params/vae_decoder/params_shard_0.bin (HTTP 404)" in page.wait_error()
            assert not [u for u in page.cached_urls() if "/params/vae_decoder/" in u]
        finally:
            page.close()


def test_scheduler_js_matches_numpy(default_build: Path, tmp_path: Path) -> None:
    """web/src/scheduler.js runs a plan and guides bit for bit as websd/generate.py does with
    numpy (fake UNet outputs)."""
    from websd import schedulers
    from websd.generate import scheduler_config

    config = scheduler_config(model_folder(layout_of(DEFAULT_CONFIG).model))
    rng = np.random.default_rng(0)
    shape, guidance = (1, 4, 8, 8), 7.5
    cases = []
    for name in ("dpm-solver", "pndm"):
        for steps in (1, 2, 5, 20):
            plan = schedulers.plan(name, config, steps)
            latents = rng.standard_normal(shape, dtype=np.float32)
            fake = list(rng.standard_normal((len(plan), 2, *shape[1:]), dtype=np.float32))
            unet = iter(fake)

            def predict_noise(x, timestep):  # websd/generate.py's guidance, the UNet replaced
                uncond, cond = np.split(next(unet), 2)
                return uncond + guidance * (cond - uncond)

            final = schedulers.denoise(plan, latents, predict_noise)
            cases.append({
                "plan": [s.to_json() for s in plan], "latents": latents.ravel().tolist(),
                "noise": [n.ravel().tolist() for n in fake], "expected": final.ravel().tolist(),
            })
    (tmp_path / "cases.json").write_text(json.dumps({"guidance": guidance, "cases": cases}))
    script = tmp_path / "run.mjs"
    script.write_text(f"""
import {{ readFileSync }} from "node:fs";
import {{ denoise, guide }} from "{(ROOT / 'web' / 'src' / 'scheduler.js').as_uri()}";
const {{ guidance, cases }} = JSON.parse(readFileSync("{tmp_path / 'cases.json'}", "utf8"));
const mismatches = [];
for (const [i, c] of cases.entries()) {{
  let k = 0;
  const predictNoise = async (x) => {{
    const noise = Float32Array.from(c.noise[k++]);
    return guide(noise.subarray(0, x.length), noise.subarray(x.length), guidance);
  }};
  const out = await denoise({{ plan: c.plan, latents: Float32Array.from(c.latents), predictNoise }});
  const expected = Float32Array.from(c.expected);
  if (out.some((v, j) => !Object.is(v, expected[j]))) mismatches.push(i);
}}
console.log(JSON.stringify(mismatches));
""")
    result = subprocess.run(["node", str(script)], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def test_gpu_limits_too_small(browser, default_dist: Path) -> None:
    dist = copy_dist(default_dist, SCRATCH / "dist-limits")
    manifest = json.loads((dist / "manifest.json").read_text())
    manifest["required_limits"]["maxStorageBufferBindingSize"] = 1 << 45
    (dist / "manifest.json").write_text(json.dumps(manifest))
    with serve(dist) as url:
        page = Page(browser, url)
        try:
            assert "maxStorageBufferBindingSize" in page.wait_error()
        finally:
            page.close()
