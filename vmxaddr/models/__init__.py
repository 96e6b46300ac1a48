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
    real_code: dict[str, str] | None = None  # compiled C (vmxaddr.realcode): what, package, version


REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, function: Model, summary: str, kind: str = "consumer") -> None:
    # An encoder may share a consumer's name ("sdm" is both), so encoders get their own keys.
    REGISTRY[name if kind == "consumer" else f"{kind}/{name}"] = ModelInfo(name, function, summary, kind)


register("sdm", sdm, "the reference: the Intel SDM's rules (vmxaddr.models.sdm)")
_KVM = (_kvm_native or _kvm_pure).REGISTERED

for _n, (_f, _s) in _KVM.items():
    register(_n, _f, _s)
for _n, (_target, _why) in (_kvm_native or _kvm_pure).ALIASES.items():
    register(_n, REGISTRY[_target].function, f"alias of {_target} ({_why})", kind="alias")

from vmxaddr.models.xen import xen_c447b730  # noqa: E402

register("xen-c447b730", xen_c447b730, "Xen nested VMX (vvmx.c decode_vmx_inst @ c447b7308b13): no address-size "
         "mask or 32-bit wrap, length from the address size, always #GP")


def _register_encoders() -> None:
    from vmxaddr.encoders import ENCODERS

    for e in ENCODERS.values():
        register(e.name, e.function, e.summary, kind="encoder")  # type: ignore[arg-type]


_register_encoders()


def _register_real_code() -> None:
    """kvm-linux-6.1 etc., for each release whose Debian source is cached (vmxaddr.realcode)."""
    from vmxaddr.realcode.registry import registered

    for name, fn, summary, info in registered():
        REGISTRY[name] = ModelInfo(name, fn, summary, "consumer", info.to_json())


_register_real_code()


def _register_xen_real_code() -> None:
    """xen-4.17 when its Debian source is cached (vmxaddr.realcode.xen)."""
    from vmxaddr.realcode.xen import registered

    for name, fn, summary, info in registered():
        REGISTRY[name] = ModelInfo(name, fn, summary, "consumer", info.to_json())


_register_xen_real_code()


class UnknownModel(LookupError):
    pass


def covers(model: Model, instruction: str) -> bool:
    """Does `model` answer for `instruction`? A model lists what it covers in a `mnemonics`
    attribute (the KVM and Xen models: what their hypervisor emulated); without one, everything."""
    listed = getattr(model, "mnemonics", None)
    return listed is None or instruction in listed


def not_covered(name: str, model: Model, instruction: str) -> str:
    """The one line that says so (for a command that was asked about it)."""
    listed = ", ".join(getattr(model, "mnemonics", ()))
    return f"{name} does not cover {instruction.upper()} (it covers {listed}; `vmxaddr models` says why)"


_REAL_CODE_NAMES = ("kvm-linux-6.1", "kvm-linux-6.12", "xen-4.17")  # vmxaddr.realcode.models.RELEASES, .xen.RELEASES


def get(name: str) -> Model:
    if name.startswith(("c:", "kvm-tree:")) or name in _REAL_CODE_NAMES:
        from vmxaddr.realcode.models import RealCodeError, resolve

        try:
            return resolve(name)  # type: ignore[no-any-return]
        except RealCodeError as e:
            raise UnknownModel(str(e)) from None
    if name.startswith("kvm-live:"):  # Debian's KVM running under Bochs (vmxaddr/live/model.py)
        from vmxaddr.live.model import resolve as live_model
        return live_model(name)
    if name in REGISTRY:
        return REGISTRY[name].function
    if f"alias/{name}" in REGISTRY:  # an old name (see its summary for why it moved)
        return REGISTRY[f"alias/{name}"].function
    if f"encoder/{name}" in REGISTRY:
        raise UnknownModel(f"{name!r} is an encoder (it writes the exit information); give it as --encoder {name}")
    if ":" in name:
        return _load_user_model(name)
    raise UnknownModel(f"unknown model {name!r}; `vmxaddr models` lists them, or give module.path:function")


def _load_user_model(name: str) -> Model:
    """`package.module:function`, imported and guarded (vmxaddr.models.guard): whatever the
    import or the function does becomes a one-line UnknownModel or ModelError."""
    from vmxaddr.models.guard import ModelError, describe_exception, guarded, one_line

    mod, _, fn = (part.strip() for part in name.partition(":"))
    if not mod or not fn:
        raise UnknownModel(f"model {name!r}: give package.module:function, both parts non-empty")
    try:
        module = importlib.import_module(mod)
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as e:
        raise UnknownModel(f"cannot load model {name!r}: no module named {e.name!r}") from None
    except BaseException as e:  # noqa: BLE001 - a user's module may raise anything, SystemExit too
        raise UnknownModel(f"cannot load model {name!r}: importing {mod} {describe_exception(e)}") from e
    try:
        f = getattr(module, fn)
    except AttributeError:
        raise UnknownModel(f"cannot load model {name!r}: module {mod} has no {fn!r}") from None
    if not callable(f):
        raise UnknownModel(f"cannot load model {name!r}: it is a {type(f).__name__}, not a function") from None
    try:
        return guarded(f, name)  # type: ignore[return-value]
    except ModelError as e:
        raise UnknownModel(one_line(str(e), 300)) from None


__all__ = ["FAULT", "IMPL", "OK", "Access", "Model", "Outcome", "Result", "Step", "REGISTRY", "covers", "get",
           "not_covered", "register", "sdm"]
