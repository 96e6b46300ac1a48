"""Model registry: every consumer model (a hypervisor's address computation) by name, and the
encoders (what writes the exit information: vmxaddr.encoders) listed beside them as kind "encoder".

`get("sdm")`, `get("kvm-f9eb4af6")`, or `get("package.module:function")` for a user's own
function with the signature documented in vmxaddr.models.base.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vmxaddr.models import kvm as _kvm_pure
from vmxaddr.models import sdm as _sdm_pure
from vmxaddr.models.base import FAULT, IMPL, OK, Access, Model, Outcome, Result, Step


def _native(name: str) -> ModuleType | None:
    """The mypyc-compiled copy of vmxaddr/models/<name>.py (built by setup.py into
    vmxaddr._native), if it was compiled from the very source beside this file; else None, and
    the pure-Python module serves. VMXADDR_PURE=1 always picks pure Python."""
    if os.environ.get("VMXADDR_PURE"):
        return None
    try:
        mod = importlib.import_module(f"vmxaddr._native.{name}")
    except Exception:  # not built, or built from an older source whose module code fails on today's imports
        return None
    if not str(getattr(mod, "__file__", "")).endswith((".so", ".pyd")):
        return None  # the generated copy was never compiled
    source = Path(__file__).with_name(f"{name}.py").read_bytes()
    if getattr(mod, "SOURCE_SHA256", None) != hashlib.sha256(source).hexdigest():
        return None  # compiled from an older source: never let a stale build answer
    return mod


_sdm_native, _kvm_native = _native("sdm"), _native("kvm")
NATIVE: tuple[str, ...] = tuple(n for n, m in (("sdm", _sdm_native), ("kvm", _kvm_native)) if m is not None)
"""Which model modules run compiled (see setup.py); the others run as pure Python."""
sdm: Model = (_sdm_native or _sdm_pure).sdm  # type: ignore[assignment]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    function: Model
    summary: str
    kind: str = "consumer"


REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, function: Model, summary: str, kind: str = "consumer") -> None:
    # An encoder may share a consumer's name ("sdm" is both), so encoders get their own keys.
    REGISTRY[name if kind == "consumer" else f"{kind}/{name}"] = ModelInfo(name, function, summary, kind)


register("sdm", sdm, "the reference: the Intel SDM's rules (vmxaddr.models.sdm)")
_KVM = (_kvm_native or _kvm_pure).REGISTERED

for _n, (_f, _s) in _KVM.items():
    register(_n, _f, _s)

from vmxaddr.models.xen import xen_c447b730  # noqa: E402

register("xen-c447b730", xen_c447b730, "Xen nested VMX (vvmx.c decode_vmx_inst @ c447b7308b13): no address-size "
         "mask or 32-bit wrap, length from the address size, always #GP")


def _register_encoders() -> None:
    from vmxaddr.encoders import ENCODERS

    for e in ENCODERS.values():
        register(e.name, e.function, e.summary, kind="encoder")  # type: ignore[arg-type]


_register_encoders()


class UnknownModel(LookupError):
    pass


def get(name: str) -> Model:
    if name in REGISTRY:
        return REGISTRY[name].function
    if f"encoder/{name}" in REGISTRY:
        raise UnknownModel(f"{name!r} is an encoder (it writes the exit information); give it as --encoder {name}")
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            f = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise UnknownModel(f"cannot load model {name!r}: {e}") from None
        if not callable(f):
            raise UnknownModel(f"{name!r} is not callable")
        return f  # type: ignore[no-any-return]
    raise UnknownModel(f"unknown model {name!r}; `vmxaddr models` lists them, or give module.path:function")


__all__ = ["FAULT", "IMPL", "OK", "Access", "Model", "Outcome", "Result", "Step", "REGISTRY", "get", "register", "sdm"]
