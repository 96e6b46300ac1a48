"""Compiled C as vmxaddr models: the real KVM code of Debian's kernels, a KVM tree of your own,
and any adapter written against vmxaddr.h.

    kvm-linux-6.1, kvm-linux-6.12   get_vmx_mem_address() from Debian's linux-source packages
                                    (registered when `vmxaddr sources fetch linux-6.1` cached them)
    kvm-tree:PATH                   the same function from a Linux tree (or its nested.c)
    c:FILE.c:FUNCTION               a vmxaddr.h adapter, compiled here
    c:LIB.so:FUNCTION               a vmxaddr.h adapter you built (with VMXADDR_EXPORT_LAYOUT)

Each is a function model(exit, state, access, explain=False) -> Result like the Python models.
What the C answers is the outcome (the vector and error code it would inject, or no fault) and
the addresses it reports. The KVM function reports only its linear address (through *ret) and
the segment it read; its effective address and segment base are not observable, so they are
None. The rule of an outcome (which check fired: type, unusable, limit, canonical) is attributed
from the state by the same conditions the KVM code tests, for the differential engine's
classifier; the vector and the address are always the C's own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from vmxaddr.errors import RealCodeError as RealCodeError  # (defined in the leaf module; importable from here)
from vmxaddr.exitinfo import ExitInfo, operand_bits
from vmxaddr.isa import REG64, SEGMENTS, SPECS
from vmxaddr.models.base import FAULT, OK, Access, InvalidExitInfo, Result, Step, outcome
from vmxaddr.models.guard import describe_case
from vmxaddr.models.kvm import HANDLED, LimitCheck
from vmxaddr.realcode import sources
from vmxaddr.realcode.bridge import (
    HAVE_DISPLACEMENT,
    HAVE_EA,
    HAVE_ERROR_CODE,
    HAVE_LINEAR,
    HAVE_SEGMENT,
    HAVE_SEGMENT_BASE,
    RESULT,
    STATUS_FAULT,
    STATUS_NO_MEMORY,
    Library,
    function_pointer,
    marshaller,
    vector_name,
)
from vmxaddr.realcode.build import SHIM_DIR, BuildError, build_library, build_source, cached_parts
from vmxaddr.realcode.extract import Extracted, ExtractError, find_function, mask
from vmxaddr.realcode.info import RealCodeInfo
from vmxaddr.realcode.kvm_release import KVM_FUNCTION, KVM_LIMIT_CHECK, RELEASES, release_info
from vmxaddr.realcode.worker import Failure, ModelFailure, Worker, isolated
from vmxaddr.state import CpuState

MASK32 = 0xFFFFFFFF
_new = tuple.__new__


def _NO_FAULT() -> str:
    return "the C code reports no fault"


_NO_PLAN: tuple[int, int | None, int | None, int] = (0, None, None, 0)


# -- KVM -----------------------------------------------------------------------------------------

NESTED_C = "arch/x86/kvm/vmx/nested.c"
VMX_C = "arch/x86/kvm/vmx/vmx.c"
# Functions of the tree that get_vmx_mem_address() may call, and the file defining them.
KVM_TREE_HELPERS = {"vmx_get_untagged_addr": VMX_C}


def kvm_parts(nested: Path, vmx: Path | None) -> list[Extracted]:
    """get_vmx_mem_address() from `nested`, preceded by the tree functions it calls."""
    try:
        text = nested.read_text(errors="replace")
    except OSError as e:
        raise RealCodeError(f"cannot read {nested}: {e.strerror}") from None
    main = find_function(text, KVM_FUNCTION, str(nested))
    body = mask(main.text)
    parts: list[Extracted] = []
    for helper, _file in KVM_TREE_HELPERS.items():
        if re.search(rf"\b{helper}\s*\(", body):
            if vmx is None or not vmx.is_file():
                raise RealCodeError(f"{KVM_FUNCTION}() in {nested} calls {helper}(), defined in vmx.c, "
                                    f"which is not beside it ({vmx})")
            parts.append(find_function(vmx.read_text(errors="replace"), helper, str(vmx)))
    return parts + [main]


def build_kvm(nested: Path, vmx: Path | None, what: str) -> Path:
    """Extract KVM's functions from nested.c (and vmx.c) and build them with the KVM shim."""
    parts = cached_parts("kvm", [nested] + ([vmx] if vmx is not None and vmx.is_file() else []),
                         lambda: kvm_parts(nested, vmx))
    return build_library(parts, ("kvm.h",), "kvm_adapter.c", what, extra="VMXADDR_EXPORT_LAYOUT;\n")


def _kvm_rule(state: CpuState, seg: str | None, access: Access, fault: bool) -> str:
    """Which of get_vmx_mem_address()'s checks decided, by the conditions it tests: in long mode
    (EFER.LMA) the canonical check; else type, then usability, then the limit (skipped on flat
    segments)."""
    mode = state.mode
    if mode == "64-bit" or mode == "compatibility":
        return "canonical"
    if seg is None:
        return "register-operand"
    s = getattr(state, seg)
    t = s.type
    if fault:
        if (access.write and (t & 0xA == 0 or t & 8)) or (not access.write and t & 0xA == 8):
            return "type"
        if s.unusable:
            return "unusable"
        return "limit"
    if s.base == 0 and s.limit == MASK32 and (t & 8 or not t & 4):
        return "flat"
    return "limit"


def _generic_rule(state: CpuState, seg: str | None, access: Access, fault: bool) -> str:
    return "c-adapter"


def _plan(plans: dict[int, tuple[int, int | None, int | None, int]], info: int) -> tuple[int, int | None, int | None, int]:
    """(segment number, base register, index register, mask of the registers it names) of an
    instruction-information value, memoised."""
    if len(plans) >= 1 << 16:
        plans.clear()
    _sc, _asz, seg_no, index, base = operand_bits(info)
    allowed = (0 if base is None else 1 << base) | (0 if index is None else 1 << index)
    plan = plans[info] = (seg_no, base, index, allowed)
    return plan


def _call_ctypes(lib: Library, exit: ExitInfo, state: CpuState, access: Access, operand_only: bool,
                 plan: tuple[int, int | None, int | None, int]) -> tuple[int, ...]:
    """The pure-ctypes path (bridge._Buffers): used when the marshaller cannot be built."""
    b = lib.main if threading.get_ident() == lib.owner else lib.buffers()
    if operand_only:
        b.load_operand(exit, state, access, plan[0], plan[1], plan[2])
    else:
        b.load(exit, state, access)
    lib.fn(b.c_exit, b.c_state, b.c_access, b.c_out)
    return RESULT.unpack_from(b.out)


def open_library(path: Path, function: str, what: str) -> Any:
    """The library as a model runs it: in a worker process (vmxaddr.realcode.worker), started now
    so that a library that cannot load is reported before any case; or, with VMXADDR_IN_PROCESS=1,
    loaded into this process."""
    if not isolated():
        return Library(path, function)
    w = Worker(path, function, what)
    w.start()
    return w


def _invalid(name: str, raw: tuple[int, ...], exit: ExitInfo, state: CpuState) -> ModelFailure | None:
    """A result vmxaddr.h does not allow: a status other than OK, FAULT and NO_MEMORY, or a fault
    whose vector is not an exception vector (0…31, SDM Vol. 3A §6.3.1)."""
    status, vector = raw[0], raw[1]
    if status > STATUS_NO_MEMORY:
        detail = f"status {status}, not 0 (OK), 1 (FAULT) or 2 (NO_MEMORY)"
    elif status == STATUS_FAULT and vector > 31:
        detail = f"vector {vector}, not an exception vector 0…31"
    else:
        return None
    return ModelFailure(name, INVALID, detail, describe_case(exit, state))


INVALID = "returned an invalid result"


def make_model(name: str, load: Callable[[], Any], info: RealCodeInfo,
               rule: Callable[[CpuState, str | None, Access, bool], str] = _generic_rule,
               explain_steps: Callable[[Library, ExitInfo, CpuState, Access], list[Step]] | None = None,
               mnemonics: tuple[str, ...] | None = None, limit_check: LimitCheck | None = None,
               operand_only: bool = False) -> Any:
    """A model function over the library `load()` returns (loaded at the first call).

    `operand_only`: the library's shim reports, in the result's reserved word, each register it
    read (bits 15:0) and, in `segment`, the segment it read (kvm.h does); the bridge then passes
    only the operand's base, index and segment, and any other read is an error, not a silent
    use of stale values."""
    cell: list[Any] = []  # the Worker (or, in process, the Library)
    fast: list[Any] = []  # (marshaller call, function pointer) once loaded in process, with the marshaller
    plans: dict[int, tuple[int, int | None, int | None, int]] = {}
    ahead: dict[tuple[int, int, int], Any] = {}  # prefetched results, by the ids of (exit, state, access)
    held: list[Any] = [None]  # the prefetched cases (their ids stay theirs while held)
    failed: dict[tuple[Any, ...], Failure] = {}  # cases that made the worker fail, by value

    def load_now() -> Any:
        if not cell:
            lib = load()
            if isinstance(lib, Library):
                m = marshaller()
                if m is not None:
                    fast[:] = [m, function_pointer(lib.fn)]
            cell.append(lib)
        return cell[0]

    def plan_of(exit: ExitInfo) -> tuple[int, int | None, int | None, int]:
        return plans.get(exit.instruction_info) or _plan(plans, exit.instruction_info)

    def remember(items: list[tuple[ExitInfo, CpuState, Access]], raws: list[Any]) -> None:
        for item, raw in zip(items, raws, strict=True):
            if type(raw) is Failure:
                if len(failed) >= 256:
                    failed.clear()
                try:
                    failed[item] = raw
                except TypeError:  # an unhashable state: not remembered
                    pass

    def submit(items: list[tuple[ExitInfo, CpuState, Access]]) -> bool:
        """Start the model's worker on these cases (at most worker.BATCH) and return at once;
        `collect(items)` takes the results. False if the model does not run in a worker."""
        lib = cell[0] if cell else load_now()
        if not isinstance(lib, Worker):
            return False
        lib.submit(items, operand_only,  # each case's plan only for the ctypes packing (no marshaller)
                   [plan_of(e) for e, _, _ in items] if operand_only and not lib.packs else None)
        return True

    def collect(items: list[tuple[ExitInfo, CpuState, Access]], deadline: float | None = None) -> int:
        """The results of the cases `submit` sent (the same list): the calls that follow on these
        very objects take them. How many cases have one: all, unless cases failed (hung, say)
        past `deadline` (time.time())."""
        lib = cell[0]
        ahead.clear()
        held[0] = None
        if not isinstance(lib, Worker) or not items:
            return len(items)
        raws = lib.collect(deadline)
        remember(items[:len(raws)], raws)
        held[0] = items
        ahead.update(zip([(id(e), id(s), id(a)) for e, s, a in items[:len(raws)]], raws, strict=True))
        return len(raws)

    def cancel() -> None:
        """Drop what submit() sent and nobody collected (fuzz's block ended early)."""
        ahead.clear()
        held[0] = None
        if cell and isinstance(cell[0], Worker):
            cell[0].cancel()

    def prefetch(items: list[tuple[ExitInfo, CpuState, Access]], deadline: float | None = None) -> int:
        """submit() and collect() in one: many cases in one round trip to the worker."""
        if not submit(items):
            ahead.clear()
            return len(items)
        return collect(items, deadline)

    def model(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
        lib = cell[0] if cell else load_now()
        plan = _NO_PLAN
        if operand_only:
            plan = plans.get(exit.instruction_info) or _plan(plans, exit.instruction_info)
        if fast:
            raw = fast[0](fast[1], exit, state, access, operand_only)
        elif type(lib) is Worker:
            raw = ahead.pop((id(exit), id(state), id(access)), None) if ahead else None
            if raw is None:
                raw = failed.get((exit, state, access)) if failed else None
                if raw is None:
                    raw = lib.run([(exit, state, access)], operand_only, [plan])[0]
                    remember([(exit, state, access)], [raw])
            if type(raw) is Failure:
                raise raw.error(name, describe_case(exit, state))
        else:
            raw = _call_ctypes(lib, exit, state, access, operand_only, plan)
        if raw[0] > STATUS_NO_MEMORY or (raw[0] == STATUS_FAULT and raw[1] > 31):
            bad = _invalid(name, raw, exit, state)
            if bad is not None:
                raise bad
        status, vector, err, valid, ea, la, sbase, disp, segno, reads = raw
        if valid & HAVE_SEGMENT:
            if segno > 5:
                raise InvalidExitInfo(f"{info.what} read segment register {segno} (TR/LDTR), which vmxaddr's "
                                      "state does not hold: the segment field (bits 17:15) is 0...5 on hardware")
            seg: str | None = SEGMENTS[segno]
        else:
            seg = None
        if operand_only and (reads & ~plan[3] or (seg is not None and segno != plan[0])):
            raise RealCodeError(f"{info.what} read state outside the operand (registers {reads & ~plan[3]:#x}, "
                                f"segment {segno}): the bridge did not pass it")
        if status == STATUS_FAULT:
            v = vector_name(vector)
            code = err if valid & HAVE_ERROR_CODE else None
            if seg is None:  # before any address: the CPL check (#GP) or a register operand (#UD)
                r = "cpl" if v == "GP" else "register-operand" if v == "UD" else "c-adapter"
            else:
                r = rule(state, seg, access, True)
            out = outcome(explain, FAULT, v, code, r, lambda: f"the C code injects #{v}" + ("" if code is None else f"({code})")
                          + ("" if r in ("cpl", "register-operand", "c-adapter") else
                             f"; which check fired is attributed from the state: {r}"))
        elif status == STATUS_NO_MEMORY:
            out = outcome(explain, OK, None, None, "register-operand", lambda: "register operand: no memory access")
        else:  # which check passed: the classifier reads it (e.g. "canonical" in compatibility mode)
            out = outcome(explain, OK, None, None, rule(state, seg, access, False), _NO_FAULT)
        steps: tuple[Step, ...] = ()
        if explain:
            extra = explain_steps(cell[0], exit, state, access) if explain_steps else []
            text = f"{info.what} answers " + (out.short() if status != STATUS_NO_MEMORY else "register operand")
            if valid & HAVE_LINEAR:
                text += f", linear address {la:#x}"
            if seg is not None:
                text += f", segment {seg}"
            steps = (Step("real-code", "real-code", text, la if valid & HAVE_LINEAR else None), *extra)
        return _new(Result, (out, ea if valid & HAVE_EA else None, la if valid & HAVE_LINEAR else None, seg,
                             disp if valid & HAVE_DISPLACEMENT else None, sbase if valid & HAVE_SEGMENT_BASE else None,
                             steps))

    model.__name__ = model.__qualname__ = name.replace("-", "_").replace(":", "_").replace("/", "_").replace(".", "_")
    model.__doc__ = f"Real code: {info.what} (vmxaddr.realcode)."
    model.real_code = info  # type: ignore[attr-defined]
    if mnemonics is not None:
        model.mnemonics = mnemonics  # type: ignore[attr-defined]
    if limit_check is not None:
        model.limit_check = limit_check  # type: ignore[attr-defined]
    model.load = load_now  # type: ignore[attr-defined]
    model.prefetch = prefetch  # type: ignore[attr-defined]
    model.submit = submit  # type: ignore[attr-defined]
    model.collect = collect  # type: ignore[attr-defined]
    model.cancel = cancel  # type: ignore[attr-defined]
    model.marshalled = lambda: bool(fast)  # type: ignore[attr-defined]
    return model


def explain_call(lib: Any, symbol: str, exit: ExitInfo, state: CpuState, access: Access, model: str
                 ) -> tuple[int, list[bytes]]:
    """symbol(exit, state, access, p0…p3) in the model's worker (or in process): (return, areas)."""
    got = lib.call_symbol(symbol, exit, state, access)
    if type(got) is Failure:
        raise got.error(model, describe_case(exit, state))
    return got  # type: ignore[no-any-return]


def _kvm_explain(lib: Any, exit: ExitInfo, state: CpuState, access: Access) -> list[Step]:
    ret, areas = explain_call(lib, "vmxaddr_kvm_explain", exit, state, access, str(getattr(lib, "model", lib.path)))
    if ret <= 0:  # not exported (-1), or no call made (0)
        return []
    line, queued, regs = (int.from_bytes(a[:4], "little", signed=True) for a in areas[1:])
    read = [REG64[i] for i in range(16) if regs >> i & 1]
    text = f"{KVM_FUNCTION}() read {', '.join(read) if read else 'no register'} (kvm_register_read)"
    if queued:
        text += f"; it queued the exception at line {line} of nested.c ({queued} call)"
    else:
        text += "; it queued no exception"
    return [Step("real-code", "real-code", text)]


def _kvm_model(name: str, load: Callable[[], Library], info: RealCodeInfo) -> Any:
    return make_model(name, load, info, _kvm_rule, _kvm_explain, HANDLED, KVM_LIMIT_CHECK, operand_only=True)


def _load_kvm(nested: Path, vmx: Path | None, what: str) -> Any:
    try:
        return open_library(build_kvm(nested, vmx, what), "vmxaddr_kvm", what)
    except (BuildError, ExtractError, RuntimeError) as e:
        raise RealCodeError(str(e)) from None


def release_model(name: str) -> Any:
    """kvm-linux-6.1 / kvm-linux-6.12 from the cache as it is now (not built until first called or
    `.load()`)."""
    source = RELEASES[name]
    f = sources.lookup(source)
    if f is None:
        raise RealCodeError(f"{name} runs Debian's {sources.SOURCES[source].package}: "
                            f"{sources.unusable(source)}")
    return release_model_for(name, f)


_BUILT: dict[tuple[str, str, str], Any] = {}


def release_model_for(name: str, f: sources.Fetched) -> Any:
    """The model of `name` built from the fetched files `f`, once per files and version: a cache
    fetched anew (another VMXADDR_CACHE, a repaired copy) gets a model of its own, not the first
    one this process built."""
    key = (name, str(f.path(NESTED_C)), f.version)
    m = _BUILT.get(key)
    if m is None:
        info = release_info(name, f)
        m = _BUILT[key] = _kvm_model(
            name, lambda: _load_kvm(f.path(NESTED_C), f.path(VMX_C), f"{name} ({f.package} {f.version})"), info)
    return m


def user_path(text: str, spec: str) -> Path:
    """`text` with a leading ~ or ~user expanded, or RealCodeError naming a user that does not exist."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user of no such user (or no home directory to expand ~ to)
        user = text.split("/", 1)[0]
        raise RealCodeError(f"{spec}: cannot expand {user}: no user {user[1:]!r} on this system"
                            if len(user) > 1 else f"{spec}: cannot expand ~: no home directory") from None


@cache
def tree_model(path: str) -> Any:
    """The model `kvm-tree:PATH`: the KVM code of a Linux tree (or its nested.c) of your own."""
    p = user_path(path, f"kvm-tree:{path}")
    if p.is_dir():
        nested, vmx = p / NESTED_C, p / VMX_C
    else:
        nested, vmx = p, p.with_name("vmx.c")
    if not nested.is_file():
        raise RealCodeError(f"kvm-tree:{path}: no {nested} (give a Linux tree or its arch/x86/kvm/vmx/nested.c)")
    info = RealCodeInfo(f"{KVM_FUNCTION}() of {nested}")
    m = _kvm_model(f"kvm-tree:{path}", lambda: _load_kvm(nested, vmx if vmx.is_file() else None, f"kvm-tree:{path}"), info)
    m.load()
    return m


# -- user adapters -------------------------------------------------------------------------------

def build_adapter(c_file: Path) -> Path:
    """Compile a vmxaddr.h adapter, with the layout export added (a weak symbol: the adapter may
    export it too)."""
    try:
        text = c_file.read_text(errors="replace")
    except OSError as e:
        raise RealCodeError(f"cannot read {c_file}: {e.strerror}") from None
    del text  # (read to fail early; the compiler reads it again)
    source = '#include "vmxaddr.h"\nVMXADDR_EXPORT_LAYOUT;  /* weak: the adapter may have its own */\n'
    try:
        return build_source(source, str(c_file), (SHIM_DIR, c_file.resolve().parent), (c_file.resolve(),))
    except BuildError as e:
        raise RealCodeError(str(e)) from None


@cache
def c_model(spec: str) -> Any:
    """`c:FILE.c:FUNCTION` or `c:LIB.so:FUNCTION`."""
    body = spec[2:]
    file, sep, function = body.rpartition(":")
    if not sep or not file or not re.fullmatch(r"[A-Za-z_]\w*", function):
        raise RealCodeError(f"{spec!r}: expected c:FILE.c:FUNCTION or c:LIB.so:FUNCTION")
    path = user_path(file, spec)
    if not path.is_file():
        raise RealCodeError(f"{spec}: no file {path}")
    lib_path = path if path.suffix == ".so" or ".so." in path.name else build_adapter(path)
    info = RealCodeInfo(f"{function}() of {path}")
    try:
        lib = open_library(lib_path, function, spec)
    except RuntimeError as e:
        raise RealCodeError(f"{spec}: {e}") from None
    return make_model(spec, lambda: lib, info, mnemonics=adapter_mnemonics(lib, spec))


def adapter_mnemonics(lib: Any, spec: str) -> tuple[str, ...] | None:
    """The adapter's `vmxaddr_mnemonics` (vmxaddr.h), if it exports one."""
    if isinstance(lib, Worker):
        text = lib.mnemonics  # read by the worker when it loaded the library
        if text is None:
            return None
    else:
        import ctypes

        try:
            raw = ctypes.c_char_p.in_dll(lib.dll, "vmxaddr_mnemonics")
        except ValueError:
            return None
        # a `const char name[]` is the bytes at the symbol's address, not a pointer to them
        text = ctypes.string_at(ctypes.addressof(raw)).decode(errors="replace")
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in SPECS]
    if bad or not names:
        raise RealCodeError(f"{spec}: vmxaddr_mnemonics names unknown instructions {bad} (known: {', '.join(SPECS)})")
    return names


