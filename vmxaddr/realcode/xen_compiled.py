"""Xen's real decode_vmx_inst() as a vmxaddr model: `xen-4.17`.

    vmxaddr sources fetch xen-4.17       # Debian's xen source package (apt-get source, private config)
    vmxaddr fuzz --model xen-4.17 --against sdm

decode_vmx_inst() and the static helpers of vvmx.c it calls (found by name in its body, e.g.
reg_read()) are extracted from Debian's Xen 4.17 tree and compiled in one translation unit with
shim/xen.h (the fake vCPU and VMCS, Xen's helpers over them) and shim/xen_adapter.c (the #UD and
CPL checks of nvmx_handle_vmx_insn() and the handler's call). What the model answers is the real
code's: the linear address it stores in decode->mem, or the exception it injects.

The divergence classes of `xen-4.17` against another model are named by the pure-Python port
`xen-c447b730` (vmxaddr.models.xen_port.classify: the Xen step whose correction alone removes the
divergence) where the port gives the real code's answer for that case; where it does not, the
class says so ("real code differs from the port"), so that a port bug cannot hide behind it.

Importing this module is light (no ctypes, no compiler): the library is built and loaded at the
model's first call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmxaddr.errors import RealCodeError
from vmxaddr.isa import REG64, SEGMENTS
from vmxaddr.models.base import FAULT, Step
from vmxaddr.models.xen_port import classify as port_classify
from vmxaddr.models.xen_port import xen_c447b730
from vmxaddr.realcode import sources
from vmxaddr.realcode.info import RealCodeInfo

if TYPE_CHECKING:  # (vmxaddr.models imports this module to register the model: nothing of it at run time here)
    from vmxaddr.exitinfo import ExitInfo
    from vmxaddr.models.base import Access, Result, Step
    from vmxaddr.state import CpuState

# The instructions nvmx_handle_vmx_insn() sends through decode_vmx_inst() (vmxaddr.models.xen_port.MNEMONICS,
# repeated here so that registering the model imports nothing; a test checks the two agree).
MNEMONICS = ("vmptrld", "vmclear", "vmxon", "vmptrst", "vmread", "vmwrite", "invept", "invvpid")
VVMX_C = "xen/arch/x86/hvm/vmx/vvmx.c"
XEN_FUNCTION = "decode_vmx_inst"
RELEASES = {"xen-4.17": "xen-4.17"}  # model name -> the source (vmxaddr.realcode.sources) holding it
PORT_DIFFERS = "Xen real code differs from the xen-c447b730 port"


# -- extraction and build --------------------------------------------------------------------------

def xen_parts(vvmx: Path) -> list[Any]:
    """decode_vmx_inst() from `vvmx`, preceded by each function of the same file it calls
    (transitively, callees first). A called name the file does not define is the shim's."""
    from vmxaddr.realcode.extract import ExtractError, find_function, mask

    try:
        text = vvmx.read_text(errors="replace")
    except OSError as e:
        raise sources.SourceError(f"cannot read {vvmx}: {e.strerror}") from None
    done: dict[str, Any] = {}
    order: list[Any] = []

    def visit(name: str) -> None:
        try:
            fn = find_function(text, name, str(vvmx))
        except ExtractError as e:
            if name != XEN_FUNCTION and ("not defined here" in str(e) or "no function named" in str(e)):
                return  # a helper of Xen's headers: the shim provides it
            raise
        done[name] = fn
        body = mask(fn.text)
        for callee in dict.fromkeys(re.findall(r"\b([A-Za-z_]\w*)\s*\(", body[body.index("{"):])):
            # a definition starts a line (Xen's style); a name without such a line is not looked
            # for (find_function masks the whole file: about 0.2 s a name)
            if callee not in done and callee not in _KEYWORDS and \
                    re.search(rf"^(?:[A-Za-z_][^;(]*?[\s*])?{re.escape(callee)}\s*\(", text, re.M):
                done[callee] = None
                visit(callee)
        order.append(fn)

    visit(XEN_FUNCTION)
    return order


_KEYWORDS = frozenset({"if", "while", "for", "switch", "return", "sizeof", "do", "else", "case"})


def build_xen(vvmx: Path, what: str) -> Path:
    """Extract decode_vmx_inst() and its helpers from vvmx.c and build them with the Xen shim."""
    from vmxaddr.realcode.build import build_library, cached_parts

    parts = cached_parts("xen", [vvmx], lambda: xen_parts(vvmx))
    return build_library(parts, ("xen.h",), "xen_adapter.c", what, extra="VMXADDR_EXPORT_LAYOUT;\n")


# -- explain -----------------------------------------------------------------------------------------

def _trace_type() -> Any:
    import ctypes

    class Trace(ctypes.Structure):
        _fields_ = [("stage", ctypes.c_int32), ("returned", ctypes.c_int32), ("queued", ctypes.c_int32),
                    ("vector", ctypes.c_uint32), ("error_code", ctypes.c_int32), ("line", ctypes.c_int32),
                    ("file", ctypes.c_uint64),  # a pointer, in the process that ran the call
                    ("registers_read", ctypes.c_uint32), ("segment_read", ctypes.c_int32),
                    ("decoded_type", ctypes.c_int32), ("decoded_len", ctypes.c_uint32), ("decoded_mem", ctypes.c_uint64),
                    ("fetch_address", ctypes.c_uint64), ("fetch_asked", ctypes.c_uint32), ("fetch_copied", ctypes.c_uint32),
                    ("unknown_vmcs_field", ctypes.c_uint64), ("x86_mode", ctypes.c_int32),
                    ("exit_qualification_read", ctypes.c_int32)]

    return Trace


def trace(lib: Any, exit: ExitInfo, state: CpuState, access: Access) -> Any:
    """What one call of the library (a Worker, or a Library in process) did: shim/xen_adapter.c's
    struct vmxaddr_xen_trace; its `file` is an address in that process (lib.string_at reads it)."""
    import ctypes

    from vmxaddr.realcode.models import explain_call

    Trace = _trace_type()
    raw = lib.symbol_bytes("vmxaddr_xen_trace_size", 4)
    size = int.from_bytes(raw, "little") if raw else 0
    if size != ctypes.sizeof(Trace):
        raise RuntimeError(f"{lib.path.name}: struct vmxaddr_xen_trace is {size} bytes, vmxaddr reads {ctypes.sizeof(Trace)}")
    _, areas = explain_call(lib, "vmxaddr_xen_explain", exit, state, access, str(getattr(lib, "model", lib.path)))
    return Trace.from_buffer_copy(areas[0][:ctypes.sizeof(Trace)])


_RETURNS = {0: "X86EMUL_OKAY", 1: "X86EMUL_UNHANDLEABLE", 2: "X86EMUL_EXCEPTION"}
_VECTORS = {6: "UD", 13: "GP", 14: "PF", 12: "SS"}


def explain_steps(lib: Any, exit: ExitInfo, state: CpuState, access: Access) -> list[Step]:
    """The steps of one call of the compiled Xen code, from the trace its shim records (where it
    stopped, what it injected)."""
    t = trace(lib, exit, state, access)
    file = lib.string_at(t.file) if t.file else ""
    where = f"{Path(file).name}:{t.line}" if file else "?"
    inj = (f"#{_VECTORS.get(t.vector, t.vector)}" + ("" if t.error_code < 0 else f"({t.error_code})") + f" at {where}"
           if t.queued else "no exception")
    if t.stage == 1:
        lma = bool(state.mode in ("64-bit", "compatibility"))
        return [Step("real-code", "mode", f"nvmx_handle_vmx_insn() (the adapter): vmx_guest_x86_mode() = {t.x86_mode} "
                     f"< {8 if lma else 2} {'under EFER.LMA' if lma else 'outside long mode'}: it injects {inj}; "
                     f"decode_vmx_inst() is not called")]
    if t.stage == 2:
        return [Step("real-code", "cpl", f"nvmx_handle_vmx_insn() (the adapter): vmx_get_cpl() = {state.cpl} > 0: it "
                     f"injects {inj}; decode_vmx_inst() is not called")]
    read = [REG64[i] for i in range(16) if t.registers_read >> i & 1]
    text = (f"{XEN_FUNCTION}() returned {_RETURNS.get(t.returned, t.returned)} ({t.returned}) and injected {inj}; "
            f"vmx_guest_x86_mode() = {t.x86_mode}; it read {', '.join(read) if read else 'no register'}")
    if t.segment_read >= 0:
        text += f" and segment {SEGMENTS[t.segment_read] if t.segment_read < 6 else t.segment_read}"
    if t.decoded_type == 1:
        text += "; register operand (decode->type = VMX_INST_MEMREG_TYPE_REG)"
    elif t.returned == 0:
        text += f"; decode->mem = {t.decoded_mem:#x}, decode->len = {t.decoded_len}"
    steps = [Step("real-code", "real-code", text, t.decoded_mem if t.returned == 0 and t.decoded_type == 0 else None)]
    if t.fetch_asked:
        note = (f"hvm_copy_from_guest_linear({t.fetch_address:#x}, {t.fetch_asked} bytes) fetches the operand")
        if t.fetch_asked > t.fetch_copied:
            note += (f": {t.fetch_asked} bytes into the handler's 8-byte unsigned long (a reserved address-size "
                     f"value); the shim wrote {t.fetch_copied}")
        steps.append(Step("real-code", "real-code", note, t.fetch_asked))
    if t.unknown_vmcs_field:
        steps.append(Step("real-code", "real-code", f"shim error: __vmread of VMCS field {t.unknown_vmcs_field:#x}, "
                          "which xen.h does not hold"))
    return steps


# -- classification ----------------------------------------------------------------------------------

def _same(a: Result, b: Result) -> bool:
    oa, ob = a.outcome, b.outcome
    if (oa.kind, oa.vector, oa.error_code) != (ob.kind, ob.vector, ob.error_code):
        return False
    return oa.kind == FAULT or a.linear_address is None or b.linear_address is None or a.linear_address == b.linear_address


def classify(exit: ExitInfo, state: CpuState, access: Access, reference: Result, own: Result) -> str:
    """The port's class for this case if the port answers what the real code answered; else
    PORT_DIFFERS (vmxaddr.diff.classify calls this for a divergence of xen-4.17)."""
    if not _same(xen_c447b730(exit, state, access), own):
        return PORT_DIFFERS
    return port_classify(exit, state, access, reference, own)


def _rule(state: CpuState, seg: str | None, access: Access, fault: bool) -> str:
    """Which of decode_vmx_inst()'s checks decided: in 64-bit mode the canonical check (or the
    2^64 wrap), elsewhere the limit check (or the wrap). Rules only; the answer is the C's."""
    return "canonical" if state.mode == "64-bit" else "limit"


# -- the models ---------------------------------------------------------------------------------------

def _load(vvmx: Path, what: str) -> Any:
    from vmxaddr.realcode.build import BuildError
    from vmxaddr.realcode.extract import ExtractError
    from vmxaddr.realcode.models import RealCodeError, open_library

    try:
        return open_library(build_xen(vvmx, what), "vmxaddr_xen", what)
    except (BuildError, ExtractError, sources.SourceError, RuntimeError) as e:
        raise RealCodeError(str(e)) from None


def info_for(name: str, f: sources.Fetched) -> RealCodeInfo:
    """What the model of Xen release `name` runs, from the fetched source package."""
    return RealCodeInfo(f"{XEN_FUNCTION}() of Debian {f.package} {f.version}", RELEASES[name], f.package, f.version)


def _model(name: str, info: Any, make_inner: Any) -> Any:
    """The model function, the library built at the first call (`make_inner()`:
    vmxaddr.realcode.models.make_model over it). It covers the instructions of `MNEMONICS`
    (vmxaddr.models.covers); given another, it answers as the handlers that fetch an operand
    would, as the port does — the engines do not compare those."""
    cell: list[Any] = []

    def load() -> Any:
        if not cell:
            inner = make_inner()
            inner.load()
            cell.append(inner)
        return cell[0]

    def model(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
        return (cell[0] if cell else load())(exit, state, access, explain)  # type: ignore[no-any-return]

    model.__name__ = model.__qualname__ = name.replace("-", "_").replace(".", "_")
    model.__doc__ = f"Real code: {info.what} (vmxaddr.realcode.xen_compiled; built at the first call)."
    model.real_code = info  # type: ignore[attr-defined]
    model.load = load  # type: ignore[attr-defined]
    model.mnemonics = MNEMONICS  # type: ignore[attr-defined]
    model.classify = classify  # type: ignore[attr-defined]
    # fuzz's batches (vmxaddr.realcode.models.make_model), passed on
    model.submit = lambda items: load().submit(items)  # type: ignore[attr-defined]
    model.collect = lambda items, deadline=None: load().collect(items, deadline)  # type: ignore[attr-defined]
    model.prefetch = lambda items, deadline=None: load().prefetch(items, deadline)  # type: ignore[attr-defined]
    model.cancel = lambda: load().cancel()  # type: ignore[attr-defined]
    return model


def release_model(name: str) -> Any:
    """xen-4.17 from the cache as it is now (built and loaded at the first call, or by `.load()`)."""
    source = RELEASES[name]
    f = sources.lookup(source)
    if f is None:
        raise RealCodeError(f"{name} runs Debian's {sources.SOURCES[source].package}: "
                            f"{sources.unusable(source)}")
    key = (name, str(f.path(VVMX_C)), f.version)  # once per files and version, as kvm-linux-*
    m = _BUILT.get(key)
    if m is None:
        m = _BUILT[key] = _release_model_for(name, f)
    return m


_BUILT: dict[tuple[str, str, str], Any] = {}


def _release_model_for(name: str, f: sources.Fetched) -> Any:
    info = info_for(name, f)
    what = f"{name} ({f.package} {f.version})"

    def make_inner() -> Any:
        from vmxaddr.realcode.models import make_model

        # operand_only: the adapter reports the registers and segment it read (xen_adapter.c)
        return make_model(name, lambda: _load(f.path(VVMX_C), what), info, _rule, explain_steps,  # type: ignore[arg-type]
                          MNEMONICS, operand_only=True)

    return _model(name, info, make_inner)


def registered() -> list[tuple[str, Any, str, Any]]:
    """(name, model, summary, info) for each Xen release whose source is cached (the model is
    built at its first call)."""
    out = []
    for name, source in RELEASES.items():
        f = sources.lookup(source)
        if f is None:
            continue
        m = release_model(name)
        info = m.real_code
        out.append((name, m, f"real code: {info.what}, compiled with vmxaddr's shim (xen.h)", info))
    return out
