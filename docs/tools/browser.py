"""Serve a built site on localhost and drive Debian's headless Chromium over it (chromedriver,
through selenium). Shared by tests/test_site.py and benchmarks/site.py."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, and no background connections: this machine's network is closed, and the page
# must load everything from the local server anyway.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,2400")


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".svg": "image/svg+xml"}

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT serving `directory`, for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium(profile: Path | None = None) -> Iterator[Any]:
    """A selenium driver for Debian's Chromium with a fresh profile (or `profile`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="vmxaddr-chromium-") as tmp:
        opts = Options()
        opts.binary_location = CHROMIUM
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={profile or tmp}")
        # The browser's console (errors, warnings, uncaught exceptions), read with console_errors().
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        # Generous limits: on a loaded machine (2 cores, many jobs) a page or a script can take
        # longer than selenium's 30 s default, which is a slow machine, not a broken page.
        driver.set_script_timeout(180)
        driver.set_page_load_timeout(180)
        try:
            yield driver
        finally:
            driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The console messages at level SEVERE since the last call (the log is drained on read):
    uncaught exceptions, failed loads and console.error()."""
    return [f"{e.get('source', '')}: {e.get('message', '')}" for e in driver.get_log("browser")
            if e.get("level") == "SEVERE"]


# What a narrow screen gets wrong, as a list of problems (empty when none): an element whose
# right edge is past the viewport with no sideways-scrolling box around it (the page itself
# would scroll, or the content is cut off), and text in a picture shown below MIN_TEXT_PX (an
# inline <svg>: font-size times its display scale; an <img> picture: data-min-font, its smallest
# font, set by docs/tools/site_pictures.py, times its scale).
MIN_TEXT_PX = 10
LAYOUT_PROBLEMS_JS = """
const W = document.documentElement.clientWidth, MIN = arguments[0], out = [];
const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
  + (typeof el.className === 'string' && el.className ? '.' + el.className.split(' ')[0] : '');
function scrolls(el) {
  for (let p = el.parentElement; p; p = p.parentElement) {
    const s = getComputedStyle(p);
    if (s.overflowX === 'auto' || s.overflowX === 'scroll') return p.getBoundingClientRect().right <= W + 1;
  }
  return false;
}
for (const el of document.querySelectorAll('body *')) {
  if (el.closest('svg') && el.tagName.toLowerCase() !== 'svg') continue;
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0 || getComputedStyle(el).visibility === 'hidden') continue;
  if (r.right > W + 1 && !scrolls(el)) out.push(`${name(el)} sticks out: right edge ${Math.round(r.right)} > ${W}`);
}
for (const svg of document.querySelectorAll('svg')) {
  const vb = svg.viewBox && svg.viewBox.baseVal, r = svg.getBoundingClientRect();
  if (!vb || !vb.width || !r.width) continue;
  for (const t of svg.querySelectorAll('text[font-size]')) {
    const px = parseFloat(t.getAttribute('font-size')) * r.width / vb.width;
    if (px < MIN - 0.05) { out.push(`text in ${name(svg.parentElement)} shown at ${px.toFixed(1)} px`); break; }
  }
}
for (const img of document.querySelectorAll('img[data-min-font]')) {
  if (!img.naturalWidth || !img.clientWidth) continue;
  const px = parseFloat(img.dataset.minFont) * img.clientWidth / img.naturalWidth;
  if (px < MIN - 0.05) out.push(`picture ${img.getAttribute('src')} text shown at ${px.toFixed(1)} px`);
}
return out;
"""


def layout_problems(driver: Any) -> list[str]:
    return list(driver.execute_script(LAYOUT_PROBLEMS_JS, MIN_TEXT_PX))


def wait_for(driver: Any, script: str, timeout: float) -> Any:
    """Poll `script` (a JavaScript function body) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    status = driver.execute_script("var s = document.getElementById('vx-status'); return s && s.textContent")
    raise TimeoutError(f"timed out after {timeout} s waiting for: {script} (page says: {status})")


def first_answer(driver: Any, url: str, timeout: float = 300) -> dict[str, float]:
    """Open the Try page at `url` and wait for its first answer; the page's timings (ms since
    navigation start: Pyodide loaded, vmxaddr imported, first answer shown)."""
    driver.get(url)
    timings = wait_for(driver, "return window.vmxaddrTimings && (window.vmxaddrTimings.firstAnswer !== undefined"
                               " || window.vmxaddrTimings.error) && window.vmxaddrTimings", timeout)
    if "error" in timings:
        raise RuntimeError(f"the page failed: {timings['error']}")
    return dict(timings)
