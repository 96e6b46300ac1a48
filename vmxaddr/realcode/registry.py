"""The real-code models `vmxaddr.models` registers: one per KVM release whose Debian source is
in the cache. Kept light (no ctypes, no compiler): importing vmxaddr.models reads the cache's
manifests only, and a model is built and loaded at its first call (vmxaddr.realcode.models)."""

from __future__ import annotations

from typing import Any

from vmxaddr.models.kvm import HANDLED
from vmxaddr.realcode import sources
from vmxaddr.realcode.info import RealCodeInfo
from vmxaddr.realcode.kvm_release import KVM_FUNCTION, KVM_LIMIT_CHECK, RELEASES, release_info


def _lazy(name: str, info: RealCodeInfo, f: sources.Fetched) -> Any:
    built: list[Any] = []  # the model of these files, found at the first call

    def model(exit: Any, state: Any, access: Any, explain: bool = False) -> Any:
        if not built:
            from vmxaddr.realcode.models import release_model_for  # models is above this module

            built.append(release_model_for(name, f))
        return built[0](exit, state, access, explain)

    model.__name__ = model.__qualname__ = name.replace("-", "_").replace(".", "_")
    model.__doc__ = f"Real code: {info.what} (vmxaddr.realcode; built at the first call)."
    model.real_code = info  # type: ignore[attr-defined]
    model.mnemonics = HANDLED  # type: ignore[attr-defined]
    model.limit_check = KVM_LIMIT_CHECK  # type: ignore[attr-defined]
    return model


def registered() -> list[tuple[str, Any, str, RealCodeInfo]]:
    """(name, model, summary, info) for each release whose source is cached."""
    out = []
    for name, source in RELEASES.items():
        f = sources.lookup(source)
        if f is None:
            continue
        info = release_info(name, f)
        out.append((name, _lazy(name, info, f), f"real code: {info.what}, compiled with vmxaddr's shim", info))
    return out


__all__ = ["KVM_FUNCTION", "KVM_LIMIT_CHECK", "RELEASES", "RealCodeInfo", "registered", "release_info"]
