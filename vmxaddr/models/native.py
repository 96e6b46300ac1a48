"""Which copy of the hot models runs: the mypyc-compiled one (built by setup.py into
vmxaddr._native) when it was compiled from the very source beside it, else pure Python."""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType

from vmxaddr.models import sdm as _sdm_pure
from vmxaddr.models.base import Model


def native(name: str) -> ModuleType | None:
    """The mypyc-compiled copy of vmxaddr/models/<name>.py (built by setup.py into
    vmxaddr._native), if it was compiled from the very source beside this file; else None, and
    the pure-Python module serves. VMXADDR_PURE=1 always picks pure Python."""
    if os.environ.get("VMXADDR_PURE"):
        return None
    mod, problem = compiled(name)
    return None if problem else mod


def compiled(name: str) -> tuple[ModuleType | None, str | None]:
    """The compiled copy of vmxaddr/models/<name>.py whatever VMXADDR_PURE says, and why it cannot
    serve (None when it can): not built, or built from another source (then: reinstall)."""
    try:
        mod = importlib.import_module(f"vmxaddr._native.{name}")
    except ImportError:
        return None, f"models/{name}.py was not compiled (no mypyc or C compiler at install; see setup.py)"
    except Exception as e:  # built from an older source whose module code fails on today's imports
        return None, (f"models/{name}.py's compiled copy fails to import ({type(e).__name__}): reinstall "
                      "(pip install -e '.[test,oracles]') or rebuild in place (python setup.py build_ext --inplace)")
    if not str(getattr(mod, "__file__", "")).endswith((".so", ".pyd")):
        return None, f"models/{name}.py: the generated copy in vmxaddr/_native was never compiled"
    source = Path(__file__).with_name(f"{name}.py").read_bytes()
    if getattr(mod, "SOURCE_SHA256", None) != hashlib.sha256(source).hexdigest():
        # never let a stale build answer
        return mod, (f"vmxaddr/models/{name}.py changed since its compiled copy was built, so the pure-Python model "
                     f"runs: reinstall (pip install -e '.[test,oracles]') or rebuild in place "
                     f"(python setup.py build_ext --inplace)")
    return mod, None


_sdm_native = native("sdm")  # the KVM models' copy is chosen by the registry, which alone needs them
sdm: Model = (_sdm_native or _sdm_pure).sdm  # type: ignore[assignment]
