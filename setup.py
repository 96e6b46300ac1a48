"""Optional native build of the hot models (mypyc), on top of pyproject.toml's metadata.

The differential pipeline spends most of its time in the SDM and KVM models. When mypyc (from
mypy, a build requirement) and a C compiler are at hand, `pip install` compiles *copies* of
vmxaddr/models/sdm.py and kvm.py into the package vmxaddr._native; each copy carries the SHA-256
of the source it was made from, and vmxaddr.models uses a native model only while that hash still
matches the source next to it (an edited model is never shadowed by a stale build). Without a
compiler, or with VMXADDR_PURE=1 at build or run time, everything stays pure Python: same answers,
fewer cases per second (benchmarks/bench_diff.py prints which it ran).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
NATIVE = HERE / "vmxaddr" / "_native"
SOURCES = ("sdm", "kvm")


def _native_sources() -> list[str]:
    if NATIVE.exists():
        shutil.rmtree(NATIVE)
    NATIVE.mkdir()
    (NATIVE / "__init__.py").write_text('"""Generated at build time by setup.py: native copies of the hot models."""\n')
    paths = []
    for name in SOURCES:
        src = (HERE / "vmxaddr" / "models" / f"{name}.py").read_bytes()
        digest = hashlib.sha256(src).hexdigest()
        (NATIVE / f"{name}.py").write_bytes(src + f"\n\nSOURCE_SHA256 = {digest!r}\n".encode())
        paths.append(f"vmxaddr/_native/{name}.py")
    return paths


def _ext_modules() -> list:
    if os.environ.get("VMXADDR_PURE"):
        return []
    try:
        from mypyc.build import mypycify

        os.chdir(HERE)  # mypyc names modules by their path relative to here
        exts = mypycify(["--ignore-missing-imports", *_native_sources()], opt_level="3")
    except (Exception, SystemExit) as e:  # no mypyc, or it refuses (type errors exit): stay pure Python
        print(f"vmxaddr: native models not built ({type(e).__name__}: {e}); pure Python", file=sys.stderr)
        shutil.rmtree(NATIVE, ignore_errors=True)
        return []
    for ext in exts:
        ext.optional = True  # no C compiler: a warning, and the pure-Python models
    return exts


setup(ext_modules=_ext_modules())
