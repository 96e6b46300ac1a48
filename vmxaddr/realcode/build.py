"""Compile extracted C functions with a shim into a shared library, cached by content.

    lib = build_library(parts, includes=("kvm.h",), adapter="kvm_adapter.c")

One translation unit: the shim header(s), each extracted function behind a `#line` directive
(compiler messages and `__LINE__` name the original file and line), then the adapter. Built with
the system C compiler (`$CC`, default `cc`) as `-O2 -shared -fPIC`, with the kernel's own
semantic flags (-fno-strict-aliasing, -fno-strict-overflow) and with implicit declarations and
undefined symbols made errors, so that an identifier the shim lacks is reported, not guessed.
The library lands in `$VMXADDR_CACHE/build/<sha256>.so`, the key covering the unit's text, every
shim file, the compiler's identity and the flags; a second build of the same text is a lookup.

When the compiler fails, `UnresolvedIdentifiers` lists each identifier it could not resolve
(parsed from gcc's and clang's messages), or `BuildError` carries the compiler's first lines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from vmxaddr.realcode.extract import Extracted
from vmxaddr.realcode.sources import cache_dir, unwritable

SHIM_DIR = Path(__file__).with_name("shim")
CFLAGS = ("-O2", "-shared", "-fPIC", "-std=gnu11", "-fno-strict-aliasing", "-fno-strict-overflow",
          "-Werror=implicit-function-declaration", "-Werror=implicit-int", "-Werror=incompatible-pointer-types",
          "-Wl,-z,defs")


class BuildError(RuntimeError):
    """The compiler failed for a reason other than unresolved identifiers (message: its first lines)."""


class CompilerMissing(BuildError):
    """No C compiler on PATH (or it does not run)."""
    pass


class UnresolvedIdentifiers(BuildError):
    """The extracted code uses identifiers the shim does not define; they are listed one per line."""
    def __init__(self, what: str, identifiers: Sequence[str]) -> None:
        self.identifiers = tuple(identifiers)
        lines = "\n".join(f"  {i}" for i in self.identifiers)
        super().__init__(f"cannot build {what}: the shim lacks {len(self.identifiers)} identifier(s):\n{lines}")


def compiler() -> str:
    """The C compiler to use ($CC, else cc); CompilerMissing when it is not on PATH."""
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc)
    if path is None:
        raise CompilerMissing(f"no C compiler: {cc!r} is not on PATH (install gcc, or set CC)")
    return path


_COMPILER_IDS: dict[str, str] = {}


def compiler_id(cc: str) -> str:
    """The compiler's version line (part of a build's cache key)."""
    if cc not in _COMPILER_IDS:
        try:
            out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise CompilerMissing(f"cannot run the C compiler {cc}: {e}") from None
        _COMPILER_IDS[cc] = out.splitlines()[0] if out else cc
    return _COMPILER_IDS[cc]


def translation_unit(parts: Sequence[Extracted], includes: Sequence[str], adapter: str | None,
                     extra: str = "") -> str:
    """The one C file that is compiled: the shim headers, the extracted functions with #line
    markers, the adapter."""
    head = "".join(f'#include "{h}"\n' for h in includes)
    body = "".join(p.with_line_marker() for p in parts)
    tail = f'#line 1 "{adapter}"\n#include "{adapter}"\n' if adapter else ""
    return head + body + extra + tail


def _shim_digest(include_dirs: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for d in include_dirs:
        for f in sorted(d.glob("*")):
            if f.suffix in (".h", ".c"):
                h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def build_source(source: str, what: str, include_dirs: Sequence[Path] = (SHIM_DIR,),
                 extra_files: Sequence[Path] = ()) -> Path:
    """Compile C `source` (plus `extra_files`) into a cached shared library; its path."""
    cc = compiler()
    h = hashlib.sha256()
    for item in (compiler_id(cc), " ".join(CFLAGS), _shim_digest(include_dirs), source):
        h.update(item.encode() + b"\0")
    for f in extra_files:
        h.update(f.read_bytes() + b"\0")
    key = h.hexdigest()
    out_dir = cache_dir() / "build"
    lib = out_dir / f"{key}.so"
    if lib.exists():
        return lib
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            src = Path(tmp) / "unit.c"
            src.write_text(source)
            target = Path(tmp) / "lib.so"
            cmd = [cc, *CFLAGS, *(f"-I{d}" for d in include_dirs), "-o", str(target), str(src), *map(str, extra_files)]
            env = dict(os.environ, LC_ALL="C", LANG="C")
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                raise BuildError(f"cannot build {what}: the compiler did not run: {e}") from None
            if proc.returncode != 0:
                raise compile_error(what, proc.stderr)
            os.replace(target, lib)
    except OSError as e:  # the cache is a file, read-only, full
        raise BuildError(f"cannot build {what}: {unwritable(e)}") from None
    return lib


EXTRACT_VERSION = "1"  # bump when extract.py's output for the same file changes


def cached_parts(kind: str, files: Sequence[Path], compute: Callable[[], list[Extracted]]) -> list[Extracted]:
    """`compute()` (functions extracted from `files`), remembered in `$VMXADDR_CACHE/extract/`
    under the files' paths, sizes and modification times: masking a kernel source file takes
    a quarter of a second, and every process that loads a real-code model needs its functions."""
    h = hashlib.sha256(f"{EXTRACT_VERSION}\0{kind}".encode())
    for f in files:
        try:
            st = f.stat()
        except OSError:
            return compute()  # compute() says what is missing
        h.update(f"\0{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    path = cache_dir() / "extract" / f"{h.hexdigest()}.json"
    try:
        return [Extracted(**{**d, "conditionals": tuple(d["conditionals"])}) for d in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    parts = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([dataclasses.asdict(x) for x in parts]))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: extract every time
    return parts


def build_library(parts: Sequence[Extracted], includes: Sequence[str], adapter: str | None, what: str,
                  extra: str = "") -> Path:
    """Build the extracted functions with the shim and adapter into a shared library (cached by
    content)."""
    return build_source(translation_unit(parts, includes, adapter, extra), what)


# -- compiler messages ---------------------------------------------------------------------------

_PATTERNS = (
    re.compile(r"error: '([A-Za-z_]\w*)' undeclared"),                      # gcc
    re.compile(r"implicit declaration of function '([A-Za-z_]\w*)'"),      # gcc
    re.compile(r"error: unknown type name '([A-Za-z_]\w*)'"),              # gcc, clang
    re.compile(r"use of undeclared identifier '([A-Za-z_]\w*)'"),          # clang
    re.compile(r"call to undeclared function '([A-Za-z_]\w*)'"),           # clang
    re.compile(r"undefined reference to `([A-Za-z_]\w*)'"),                # ld
    re.compile(r"undefined symbol: ([A-Za-z_]\w*)"),                       # lld
    re.compile(r"error: '(struct \w+)' has no member named '(\w+)'"),      # gcc: a field the shim's type lacks
    re.compile(r"error: no member named '(\w+)' in '(struct \w+)'"),       # clang
    re.compile(r"(?:invalid use of undefined type|incomplete type) '(struct \w+)'"),
    re.compile(r"error: storage size of '(\w+)' isn't known"),
)


def unresolved(stderr: str) -> list[str]:
    """The identifiers a compiler's (C locale) messages say it could not resolve, in order, once each."""
    found: list[str] = []
    for line in stderr.splitlines():
        for pat in _PATTERNS:
            m = pat.search(line)
            if not m:
                continue
            if pat.pattern.startswith("error: '(struct"):
                item = f"{m.group(1)}.{m.group(2)}"
            elif "no member named '(\\w+)' in" in pat.pattern:
                item = f"{m.group(2)}.{m.group(1)}"
            elif "storage size" in pat.pattern:
                item = f"{m.group(1)} (its type is not defined)"
            else:
                item = m.group(1)
            if item not in found:
                found.append(item)
            break
    return found


def compile_error(what: str, stderr: str) -> BuildError:
    """The BuildError for a failed compile: the unresolved identifiers when that is the cause, else
    the first error lines."""
    ids = unresolved(stderr)
    if ids:
        return UnresolvedIdentifiers(what, ids)
    errors = [ln for ln in stderr.splitlines() if "error" in ln][:8] or stderr.splitlines()[:8]
    return BuildError(f"cannot build {what}: the compiler failed:\n" + "\n".join(f"  {ln}" for ln in errors))


# -- the bridge's compiled marshaller (shim/marshal.c) -------------------------------------------

def build_marshaller() -> Path:
    """Compile shim/marshal.c as a CPython extension for this interpreter (cached like the rest)."""
    import sysconfig

    cc = compiler()
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise BuildError(f"no Python.h in {include} (install the Python development headers)")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    source = (SHIM_DIR / "marshal.c").read_text()
    h = hashlib.sha256()
    for item in (compiler_id(cc), " ".join(CFLAGS), include, suffix, (SHIM_DIR / "vmxaddr.h").read_text(), source):
        h.update(item.encode() + b"\0")
    out_dir = cache_dir() / "build"
    lib = out_dir / f"marshal-{h.hexdigest()[:32]}{suffix}"
    if lib.exists():
        return lib
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot build the marshaller: {unwritable(e)}") from None
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        target = Path(tmp) / f"m{suffix}"
        flags = [f for f in CFLAGS if f != "-Wl,-z,defs"]  # the interpreter provides the Python symbols
        cmd = [cc, *flags, f"-I{SHIM_DIR}", f"-I{include}", "-o", str(target), str(SHIM_DIR / "marshal.c")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"), timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError(f"cannot build the marshaller: {e}") from None
        if proc.returncode != 0:
            raise compile_error("the marshaller (shim/marshal.c)", proc.stderr)
        os.replace(target, lib)
    return lib


# -- the worker process's program (shim/worker.c) ------------------------------------------------

def build_worker(defines: Sequence[tuple[str, int]]) -> Path:
    """Compile shim/worker.c (vmxaddr.realcode.worker) into a cached executable; `defines` are the
    layout worker.py expects, which the program asserts at compile time."""
    cc = compiler()
    flags = ["-O2", "-std=gnu11", "-pthread", *(f"-D{k}={v}" for k, v in defines)]
    source = (SHIM_DIR / "worker.c").read_text()
    h = hashlib.sha256()
    for item in (compiler_id(cc), " ".join(flags), (SHIM_DIR / "vmxaddr.h").read_text(), source):
        h.update(item.encode() + b"\0")
    out_dir = cache_dir() / "build"
    exe = out_dir / f"worker-{h.hexdigest()[:32]}"
    if exe.exists():
        return exe
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        target = Path(tmp) / "worker"
        cmd = [cc, *flags, f"-I{SHIM_DIR}", "-o", str(target), str(SHIM_DIR / "worker.c"), "-ldl"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"), timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError(f"cannot build the model worker: {e}") from None
        if proc.returncode != 0:
            raise compile_error("the model worker (shim/worker.c)", proc.stderr)
        os.replace(target, exe)
    return exe
