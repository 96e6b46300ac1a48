"""A real-code model by name (`c:FILE.c:FUNCTION`, `c:LIB.so:FUNCTION`, `kvm-tree:PATH`,
kvm-linux-*, xen-*): above both the KVM builder (vmxaddr.realcode.models) and the Xen one
(vmxaddr.realcode.xen_compiled), which it dispatches to."""

from __future__ import annotations

from typing import Any

from vmxaddr.realcode.extract import ExtractError
from vmxaddr.realcode.models import RealCodeError, c_model, release_model, tree_model
from vmxaddr.realcode.xen_compiled import RELEASES as XEN_RELEASES
from vmxaddr.realcode.xen_compiled import release_model as xen_release_model

__all__ = ["RealCodeError", "resolve"]


def resolve(name: str) -> Any:
    """The real-code model `name` (built and loaded now, so that errors come before any case). The
    release models look their source up on every call (sources.lookup verifies the files), so a
    source corrupted after the model was first built is still refused."""
    try:
        if name.startswith("c:"):
            return c_model(name)
        if name.startswith("kvm-tree:"):
            return tree_model(name[len("kvm-tree:"):])
        if name in XEN_RELEASES:
            m = xen_release_model(name)
        else:
            m = release_model(name)
        m.load()
        return m
    except ExtractError as e:
        raise RealCodeError(str(e)) from None
