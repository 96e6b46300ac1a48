"""The site (issue 17): its build time, its size, and the Try page's load-to-first-answer time
in Debian's headless Chromium, cold (a fresh browser profile: nothing cached) and warm (the same
profile reloading: the browser's HTTP and compiled-WebAssembly caches filled).

    python benchmarks/site.py [--builds 3] [--loads 3]

Needs what tests/test_site.py needs (mkdocs, npm once, chromium, chromium-driver, selenium).
Prints each sample, then min / median / max, and the load average, since other work on the
machine slows the page's start-up (CPython compiled to WebAssembly) most of all.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _summary(name: str, xs: list[float], unit: str) -> str:
    return f"{name}: min {min(xs):.2f} {unit}, median {statistics.median(xs):.2f} {unit}, max {max(xs):.2f} {unit} (n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=3)
    ap.add_argument("--loads", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    build_site = _load("docs_build_site", ROOT / "docs" / "tools" / "build_site.py")
    browser = _load("docs_browser", ROOT / "docs" / "tools" / "browser.py")
    build_site.pyodide_tarball()  # the one-time npm fetch is not part of a build's time
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="vmxaddr-site-bench-") as tmp:
        builds = []
        out = Path(tmp) / "site"
        for i in range(args.builds):
            out = Path(tmp) / f"site{i}"
            t = time.perf_counter()
            build_site.build(out)
            builds.append(time.perf_counter() - t)
            print(f"build {i + 1}: {builds[-1]:.2f} s", flush=True)
        n, nbytes = build_site.size(out)
        pages = sum(1 for _ in out.rglob("*.html"))
        pyodide = sum(p.stat().st_size for p in (out / "try" / "pyodide").iterdir())
        cold, warm = [], []
        with browser.serve(out) as url:
            for i in range(args.loads):
                with browser.chromium() as d:
                    cold.append(browser.first_answer(d, f"{url}/try.html")["firstAnswer"] / 1000)
                    d.get("about:blank")
                    warm.append(browser.first_answer(d, f"{url}/try.html")["firstAnswer"] / 1000)
                print(f"load {i + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s", flush=True)
    print(_summary("build", builds, "s"))
    print(f"size: {pages} pages, {n} files, {nbytes / 1e6:.1f} MB ({pyodide / 1e6:.1f} MB of it the Pyodide runtime)")
    print(_summary("load to first answer, cold", cold, "s"))
    print(_summary("load to first answer, warm", warm, "s"))
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
