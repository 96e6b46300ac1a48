"""The real-code models `vmxaddr.models` registers: one per KVM release whose Debian source is
in the cache. Kept light (no ctypes, no compiler): importing vmxaddr.models reads the cache's
manifests only, and a model is built and loaded at its first call (vmxaddr.realcode.models)."""

from __future__ import annotations

from typing import Any

from vmxaddr.models.kvm import HANDLED, LimitCheck
from vmxaddr.realcode import sources
from vmxaddr.realcode.info import RealCodeInfo

# model name -> the source (vmxaddr.realcode.sources) holding its function
RELEASES = {"kvm-linux-6.1": "linux-6.1", "kvm-linux-6.12": "linux-6.12"}
KVM_FUNCTION = "get_vmx_mem_address"
# What reading the code of both releases shows about the limit check (for the classifier):
# flat segments skipped, last byte = off + len - 1, the real length, expand-down unknown.
KVM_LIMIT_CHECK = LimitCheck(fixed_length=None, off_by_one=False, flat_skip=True, expand_down=False)


def release_info(name: str, f: sources.Fetched) -> RealCodeInfo:
    return RealCodeInfo(f"{KVM_FUNCTION}() of Debian {f.package} {f.version}", RELEASES[name], f.package, f.version)


def _lazy(name: str, info: RealCodeInfo) -> Any:
    def model(exit: Any, state: Any, access: Any, explain: bool = False) -> Any:
        from vmxaddr.realcode.models import release_model

        return release_model(name)(exit, state, access, explain)

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
        out.append((name, _lazy(name, info), f"real code: {info.what}, compiled with vmxaddr's shim", info))
    return out
