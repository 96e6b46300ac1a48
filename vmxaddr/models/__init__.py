"""The models: the SDM reference (sdm.py), KVM's history (kvm.py), the Xen port (xen_port.py), what a
model is (base.py), and the registry that names them all (registry.py).

`from vmxaddr.models import get, REGISTRY, ...` reads the registry, which is imported only then
(PEP 562): a module that needs only `vmxaddr.models.base` (the decoder's callers, the real-code
builder) does not load every model, the encoders and the real-code listing with it, and the
real-code modules, which import `vmxaddr.models.base`, do not import the registry back.
"""

from __future__ import annotations

import importlib
from typing import Any

from vmxaddr.models.base import Model
from vmxaddr.models.native import sdm as _sdm_function

# `from vmxaddr.models import sdm` is the reference model (compiled when built), not the module
# vmxaddr/models/sdm.py, whose first import bound the name here; rebound once, after it.
sdm: Model = _sdm_function


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # the import system asks for __path__ and the like
        raise AttributeError(name)
    registry = importlib.import_module("vmxaddr.models.registry")  # not `from . import`: that asks here again
    try:
        return getattr(registry, name)
    except AttributeError:
        raise AttributeError(f"module 'vmxaddr.models' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    registry = importlib.import_module("vmxaddr.models.registry")
    return sorted(set(registry.__all__) | {"registry", "base", "sdm", "kvm", "xen_port", "guard"})
