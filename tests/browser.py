"""Browser plumbing for tests that run tvmjs pages in real headless Chromium with WebGPU.

On a machine without a GPU, Chromium's WebGPU adapter is SwiftShader (on the CPU). A page under
test reports back by setting `window.__result` (any JSON value) or `window.__error` (a string).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
