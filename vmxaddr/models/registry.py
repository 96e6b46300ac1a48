"""Model registry (`vmxaddr.models` forwards to it): every consumer model (a hypervisor's address computation) by name, and the
encoders (what writes the exit information: vmxaddr.encoders) listed beside them as kind "encoder".

`get("sdm")`, `get("kvm-f9eb4af6")`, or `get("package.module:function")` for a user's own
function with the signature documented in vmxaddr.models.base.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vmxaddr.errors import UnknownModel as UnknownModel  # (defined in the leaf module; importable from here)
from vmxaddr.models import kvm as _kvm_pure
from vmxaddr.models.base import FAULT, IMPL, OK, Access, Model, Outcome, Result, Step
from vmxaddr.models.native import _sdm_native, compiled, native, sdm  # noqa: F401  (compiled, sdm: re-exported)

_kvm_native = native("kvm")
NATIVE: tuple[str, ...] = tuple(n for n, m in (("sdm", _sdm_native), ("kvm", _kvm_native)) if m is not None)
"""Which model modules run compiled (see setup.py); the others run as pure Python."""


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: its name, function, one-line summary, kind (consumer, encoder, alias) and
    real-code facts."""
    name: str
    function: Model
    summary: str
    kind: str = "consumer"
    real_code: dict[str, str] | None = None  # compiled C (vmxaddr.realcode): what, package, version


_REAL_CODE_NAMES = ("kvm-linux-6.1", "kvm-linux-6.12", "xen-4.17")  # vmxaddr.realcode.models.RELEASES, .xen_compiled.RELEASES


def _real_code_state() -> tuple[object, ...]:
    """What the real-code entries depend on: the cache directory and each source's manifest."""
    from vmxaddr.realcode import sources

    root = sources.cache_dir() / "sources"
    out: list[object] = [str(root)]
    for name in sources.SOURCES:
        try:
            st = (root / name / "manifest.json").stat()
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


def _register_real_code(registry: dict[str, ModelInfo]) -> None:
    """kvm-linux-6.1, kvm-linux-6.12 and xen-4.17: one entry for each release whose Debian source
    is cached now (vmxaddr.realcode.registry, vmxaddr.realcode.xen_compiled); none for the others."""
    from vmxaddr.realcode import registry as kvm_real
    from vmxaddr.realcode import xen_compiled

    for name in _REAL_CODE_NAMES:
        dict.pop(registry, name, None)
    for name, fn, summary, info in [*kvm_real.registered(), *xen_compiled.registered()]:
        dict.__setitem__(registry, name, ModelInfo(name, fn, summary, "consumer", info.to_json()))


class _Registry(dict[str, ModelInfo]):
    """The registry, whose real-code entries follow the cache (vmxaddr.realcode.sources): a model
    whose source is fetched later in the same process is listed at once (issue 21). Every read
    first compares the cache's manifests (their stat) with what was last registered; only a change
    re-registers the real-code models (last, in a fixed order, as a fresh import lists them: a
    Dask worker's registry must list the models in the order the parent does), so a test's own
    clear()/update() is left alone."""

    _seen: object = None

    def _sync(self) -> None:
        state = _real_code_state()
        if state != self._seen:
            self._seen = state
            _register_real_code(self)

    def __getitem__(self, key: str) -> ModelInfo:
        self._sync()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._sync()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._sync()
        return super().__iter__()

    def __len__(self) -> int:
        self._sync()
        return super().__len__()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._sync()
        return super().get(key, default)

    def keys(self) -> Any:
        self._sync()
        return super().keys()

    def values(self) -> Any:
        self._sync()
        return super().values()

    def items(self) -> Any:
        self._sync()
        return super().items()


REGISTRY: dict[str, ModelInfo] = _Registry()


def register(name: str, function: Model, summary: str, kind: str = "consumer") -> None:
    # An encoder may share a consumer's name ("sdm" is both), so encoders get their own keys.
    """Add a model to REGISTRY; an encoder gets a key of its own ("encoder/sdm") beside the consumer
    of that name."""
    REGISTRY[name if kind == "consumer" else f"{kind}/{name}"] = ModelInfo(name, function, summary, kind)


register("sdm", sdm, "the reference: the Intel SDM's rules (vmxaddr.models.sdm)")
_KVM = (_kvm_native or _kvm_pure).REGISTERED

for _n, (_f, _s) in _KVM.items():
    register(_n, _f, _s)
for _n, (_target, _why) in (_kvm_native or _kvm_pure).ALIASES.items():
    # (read past the sync: the real-code entries come last, after every model registered here)
    register(_n, dict.__getitem__(REGISTRY, _target).function, f"alias of {_target} ({_why})", kind="alias")

from vmxaddr.models.xen_port import xen_c447b730  # noqa: E402

register("xen-c447b730", xen_c447b730, "Xen nested VMX (vvmx.c decode_vmx_inst @ c447b7308b13): no address-size "
         "mask or 32-bit wrap, length from the address size, always #GP")


def _register_encoders() -> None:
    from vmxaddr.encoders import ENCODERS

    for e in ENCODERS.values():
        register(e.name, e.function, e.summary, kind="encoder")  # type: ignore[arg-type]


_register_encoders()


def covers(model: Model, instruction: str) -> bool:
    """Does `model` answer for `instruction`? A model lists what it covers in a `mnemonics`
    attribute (the KVM and Xen models: what their hypervisor emulated); without one, everything."""
    listed = getattr(model, "mnemonics", None)
    return listed is None or instruction in listed


def not_covered(name: str, model: Model, instruction: str) -> str:
    """The one line that says so (for a command that was asked about it)."""
    listed = ", ".join(getattr(model, "mnemonics", ()))
    return f"{name} does not cover {instruction.upper()} (it covers {listed}; `vmxaddr models` says why)"


def get(name: str) -> Model:
    """The model `name` names: a registered one, a real-code name, kvm-live:RELEASE or
    module.path:function; UnknownModel otherwise."""
    if name.startswith(("c:", "kvm-tree:")) or name in _REAL_CODE_NAMES:
        from vmxaddr.realcode.resolve import RealCodeError, resolve

        try:
            return resolve(name)  # type: ignore[no-any-return]
        except RealCodeError as e:
            raise UnknownModel(str(e)) from None
    if name.startswith("kvm-live:"):  # Debian's KVM running under Bochs (vmxaddr/live/model.py)
        from vmxaddr.live.model import resolve as live_model

        return live_model(name)  # type: ignore[no-any-return]
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
