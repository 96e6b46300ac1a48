#!/usr/bin/env python3
"""Build the teaching reference as a static site: `python docs/tools/build_site.py`.

1. mkdocs builds docs/ (mkdocs.yml; the navigation is docs/index.md's reading order, from the
   hook docs/tools/site_nav.py; strict: a broken link or anchor fails the build). The pictures
   are the committed docs/pictures/*.svg (docs/tools/pictures.py, kept fresh by a test).
2. The in-browser page (docs/try.md, docs/try/) gets what it loads, all served by the site:
   the Pyodide runtime from the npm registry's `pyodide` package (fetched once with `npm pack`
   into the user cache directory and checked against the registry's sha512; never committed),
   vmxaddr's own Python source as try/vmxaddr.zip, and try/rules.json (rule id -> page, from
   docs/index.md's rule table).
3. Every page is checked: internal links and anchors resolve, every picture exists and is
   well-formed SVG, and nothing (script, style sheet, picture) is loaded from another host.

Usage: python docs/tools/build_site.py [--out DIR] [--no-check]
  DIR defaults to site/ (git-ignored). It must be empty, missing, or a previous build of the site
  (marked by the file .vmxaddr-site): a build replaces DIR's contents, so any other directory is
  refused rather than emptied. Prints the build time, the number of pages and the site's size;
  exits 1 if a check fails, 2 on a usage or environment error (one line on stderr). Needs
  mkdocs (`pip install -e '.[test]'`) and npm (for the first fetch of Pyodide only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

PYODIDE_VERSION = "314.0.7"
# dist.integrity of pyodide@314.0.7 in the npm registry (`npm view pyodide@314.0.7 dist.integrity`).
PYODIDE_INTEGRITY = "sha512-0YvXxEhfEdpLfb/XkM2BFAeMROq0iMUX2bzzH9pOttyMcWkwq+HbE5uyuGD82LN7y2q+SNvi/6V5JEsOlD2R1A=="
# What loadPyodide() fetches for a pure-Python program (no packages), and the licence notice.
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json",
                 "package.json", "README.md")


class BuildError(Exception):
    pass


# A build leaves this file in its directory: the mark that the directory may be replaced.
MARK = ".vmxaddr-site"


def check_out(out: Path) -> None:
    """Refuse an output path a build would damage: a file, or a non-empty directory that is not
    a previous build (mkdocs empties the directory it builds into)."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        try:
            entries = [p.name for p in out.iterdir()]
        except OSError as e:
            raise BuildError(f"--out {out}: cannot read it: {e.strerror}") from None
        # Builds made before the mark existed: mkdocs's sitemap and the Try page's rule map.
        earlier = (out / "sitemap.xml").is_file() and (out / "try" / "rules.json").is_file()
        if entries and MARK not in entries and not earlier:
            raise BuildError(f"--out {out}: a non-empty directory that is not a previous build of the site "
                             f"(no {MARK} in it); a build would delete its {len(entries)} entries. "
                             "Name an empty or new directory")


# -- Pyodide, from the npm registry -------------------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmxaddr" / "site"


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def pyodide_tarball() -> Path:
    """The npm package's tarball, from the cache or fetched with `npm pack` (checked either way)."""
    cached = cache_dir() / f"pyodide-{PYODIDE_VERSION}.tgz"
    if cached.exists() and _integrity(cached) == PYODIDE_INTEGRITY:
        return cached
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm not found: it fetches Pyodide for the in-browser page from the npm registry "
                         "(install Node.js/npm, e.g. bash scripts/system-deps.sh)")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = tempfile.TemporaryDirectory(dir=cached.parent)
    except OSError as e:
        raise BuildError(f"cannot use the cache directory {cached.parent}: {e.strerror} "
                         "(it holds the Pyodide download; set XDG_CACHE_HOME to a writable directory)") from None
    with tmp_dir as tmp:
        print(f"build_site: npm pack pyodide@{PYODIDE_VERSION} (once; cached in {cached.parent})", file=sys.stderr)
        cmd = [npm, "pack", f"pyodide@{PYODIDE_VERSION}", "--pack-destination", tmp, "--loglevel", "error"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise BuildError(f"npm pack pyodide@{PYODIDE_VERSION} did not finish in 600 s "
                             "(is the npm registry reachable? see `npm config get registry`)") from None
        except OSError as e:
            raise BuildError(f"cannot run npm ({npm}): {e.strerror}") from None
        got = Path(tmp) / f"pyodide-{PYODIDE_VERSION}.tgz"
        if proc.returncode or not got.exists():
            why = _tail(proc.stderr) or _tail(proc.stdout) or "it printed nothing"
            raise BuildError(f"npm pack pyodide@{PYODIDE_VERSION} failed (exit status {proc.returncode}): {why}")
        if _integrity(got) != PYODIDE_INTEGRITY:
            raise BuildError(f"pyodide@{PYODIDE_VERSION} from npm does not match its pinned sha512")
        try:
            got.replace(cached)
        except OSError as e:
            raise BuildError(f"cannot store the Pyodide download in {cached.parent}: {e.strerror}") from None
    return cached


def stage_pyodide(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pyodide_tarball()) as tar:
        for name in PYODIDE_FILES:
            member = tar.getmember(f"package/{name}")
            src = tar.extractfile(member)
            if src is None:
                raise BuildError(f"pyodide tarball: {name} is not a file")
            (dest / name).write_bytes(src.read())


# -- vmxaddr itself ---------------------------------------------------------------------------

def vmxaddr_zip(dest: Path) -> None:
    """vmxaddr's Python source as a zip Pyodide unpacks onto sys.path (the compiled models and
    caches left out: the browser runs pure Python). Fixed timestamps: the same source gives the
    same bytes."""
    pkg = ROOT / "vmxaddr"
    files = sorted(p for p in pkg.rglob("*") if p.is_file() and p.suffix in (".py", ".typed", ".json")
                   and "__pycache__" not in p.parts and "_native" not in p.parts)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            info = zipfile.ZipInfo(str(p.relative_to(ROOT)), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, p.read_bytes())


def rule_pages() -> dict[str, str]:
    """rule id -> the page that teaches it (docs/index.md's table of rule ids)."""
    out = {}
    for ids, page in re.findall(r"^\|\s*(`[^|]+`)\s*\|\s*\[[^\]]*\]\(([^)#]+\.md)[^)]*\)\s*\|", (DOCS / "index.md").read_text(), re.M):
        for rule in re.findall(r"`([^`]+)`", ids):
            out[rule] = page[:-3] + ".html"
    return out


# -- build ------------------------------------------------------------------------------------

def build(out: Path, with_pyodide: bool = True) -> dict[str, float]:
    """Build the site into `out` (see check_out); returns the seconds each part took. A write
    that fails (read-only, full, not a directory) is a BuildError naming the path."""
    check_out(out)
    try:
        return _build(out, with_pyodide)
    except OSError as e:
        where = e.filename or out
        raise BuildError(f"cannot write the site to {out}: {where}: {e.strerror or e}") from None


def _build(out: Path, with_pyodide: bool) -> dict[str, float]:
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    from mkdocs.exceptions import MkDocsException

    times = {}
    t = time.perf_counter()
    cfg = load_config(config_file=str(ROOT / "mkdocs.yml"), site_dir=str(out))
    try:
        mkdocs_build(cfg)
    except (MkDocsException, SystemExit) as e:
        raise BuildError(f"mkdocs build failed: {e}") from None
    (out / MARK).write_text("A build of vmxaddr's site (docs/tools/build_site.py); the next build replaces this directory.\n")
    relative_404(out / "404.html")
    times["mkdocs"] = time.perf_counter() - t
    t = time.perf_counter()
    vmxaddr_zip(out / "try" / "vmxaddr.zip")
    (out / "try" / "rules.json").write_text(json.dumps(rule_pages(), indent=1, sort_keys=True))
    if with_pyodide:
        stage_pyodide(out / "try" / "pyodide")
    times["browser page"] = time.perf_counter() - t
    return times


def relative_404(page: Path) -> None:
    """mkdocs writes 404.html with root-absolute links ("/css/base.css"), which reach nothing when
    the site is opened from disk or served below a server's root; the page sits at the site's
    root, so its links are made relative to it."""
    if page.exists():
        text = page.read_text()
        page.write_text(re.sub(r'((?:href|src)=")/(?!/)', r"\1", text))


def size(out: Path) -> tuple[int, int]:
    files = [p for p in out.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


# -- checks -----------------------------------------------------------------------------------

class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, url)
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"] or "")
        for attr in ("href", "src"):
            if a.get(attr) is not None and not (tag == "link" and a.get("rel") in ("canonical",)):
                self.refs.append((tag, attr, a[attr] or ""))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(errors="replace"))
    return p


def check(out: Path) -> list[str]:
    """Problems with the built site: internal links and anchors that do not resolve, pictures
    that are missing or not SVG, resources loaded from another host."""
    problems = []
    pages = {p: parse_page(p) for p in sorted(out.rglob("*.html"))}
    for page, parsed in pages.items():
        rel = page.relative_to(out)
        for tag, attr, url in parsed.refs:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if tag != "a":
                    problems.append(f"{rel}: <{tag} {attr}> loads {url} from another host")
                continue
            if parts.scheme in ("mailto", "data", "javascript"):
                continue
            target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{rel}: <{tag} {attr}={url!r}>: no such file")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse_page(target).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{rel}: <{tag} {attr}={url!r}>: no anchor #{parts.fragment}")
            if tag == "img" and target.suffix == ".svg":
                try:
                    root = ET.parse(target).getroot()
                except ET.ParseError as e:
                    problems.append(f"{rel}: picture {url}: not well-formed: {e}")
                    continue
                if root.tag != "{http://www.w3.org/2000/svg}svg":
                    problems.append(f"{rel}: picture {url}: not an SVG document")
    return problems


USAGE = "usage: python docs/tools/build_site.py [--out DIR] [--no-check]"


def parse_args(argv: list[str]) -> tuple[Path, bool]:
    """(output directory, run the checks); BuildError with the usage on a bad command line."""
    out = ROOT / "site"
    checks = True
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            raise SystemExit(print(__doc__) or 0)
        if a == "--no-check":
            checks = False
        elif a == "--out" or a.startswith("--out="):
            value = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 0 if "=" in a else 1
            if not value or value.startswith("--"):
                raise BuildError(f"--out needs a directory ({USAGE})")
            out = Path(value).expanduser().resolve()
        else:
            raise BuildError(f"unknown argument {a!r} ({USAGE})")
        i += 1
    return out, checks


def main(argv: list[str]) -> int:
    t = time.perf_counter()
    try:
        out, checks = parse_args(argv)
        times = build(out)
    except BuildError as e:
        print(f"build_site: error: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - t
    n, nbytes = size(out)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    pages = sum(1 for _ in out.rglob("*.html"))
    print(f"built {out} in {total:.1f} s ({parts}): {pages} pages, {n} files, {nbytes / 1e6:.1f} MB")
    if not checks:
        return 0
    problems = check(out)
    for p in problems:
        print(f"check: {p}")
    print(f"checked {sum(1 for _ in out.rglob('*.html'))} pages: {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
