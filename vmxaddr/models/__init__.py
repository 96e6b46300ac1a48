"""Model registry: every consumer model (a hypervisor's address computation) by name.

`get("sdm")`, `get("kvm-f9eb4af6")`, or `get("package.module:function")` for a user's own
function with the signature documented in vmxaddr.models.base.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from vmxaddr.models.base import FAULT, IMPL, OK, Access, Model, Outcome, Result, Step
from vmxaddr.models.sdm import sdm


@dataclass(frozen=True)
class ModelInfo:
    name: str
    function: Model
    summary: str
    kind: str = "consumer"


REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, function: Model, summary: str, kind: str = "consumer") -> None:
    REGISTRY[name] = ModelInfo(name, function, summary, kind)


register("sdm", sdm, "the reference: the Intel SDM's rules (vmxaddr.models.sdm)")
from vmxaddr.models.kvm import REGISTERED as _KVM  # noqa: E402

for _n, (_f, _s) in _KVM.items():
    register(_n, _f, _s)


class UnknownModel(LookupError):
    pass


def get(name: str) -> Model:
    if name in REGISTRY:
        return REGISTRY[name].function
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
