"""Call a C adapter (vmxaddr.h) from Python as a vmxaddr model, through ctypes.

Why ctypes (not cffi): it is in the standard library, so the real-code models add no dependency
and no build step of their own beyond the one compile of the C; cffi's ABI mode calls at the
same speed, and its API mode would need a second compiler pass per library. What decides the
speed is not the call but building the arguments: the bridge keeps one input buffer per model
and rewrites only what changed since the previous case (the register tuple, each segment and
the mode fields are compared by identity, which the fuzzer's states share), packs with
precompiled `struct` formats into that buffer, and passes it as a ready ctypes array.

The layouts here are checked at load time against the library's `vmxaddr_layout` (vmxaddr.h's
VMXADDR_EXPORT_LAYOUT): a library built against another vmxaddr.h is refused, not misread.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmxaddr.exitinfo import ExitInfo
from vmxaddr.isa import EXIT_REASONS, SEGMENTS
from vmxaddr.state import CpuState, Segment

if TYPE_CHECKING:  # (vmxaddr.models imports this package: no cycle at run time)
    from vmxaddr.models.base import Access

ABI_VERSION = 1
MASK64 = (1 << 64) - 1

EXIT = struct.Struct("<IIQII")  # struct vmxaddr_exit
SEGMENT = struct.Struct("<QIH8B10x")  # struct vmxaddr_segment
STATE_HEAD = struct.Struct("<16Q6Q2I")  # gpr[16], rip, rflags, cr0, cr3, cr4, efer, mode, cpl
STATE = STATE_HEAD.size + 6 * SEGMENT.size
ACCESS = struct.Struct("<II")
RESULT = struct.Struct("<4I4Q2I")
_RIP = struct.Struct("<Q")
_REGS = struct.Struct("<16Q")
SEG_OFFSET = STATE_HEAD.size
MODE_OFFSET = 16 * 8 + 6 * 8
# VMXADDR_EXPORT_LAYOUT's entries, as this module packs the structures
LAYOUT = (ABI_VERSION, EXIT.size, SEGMENT.size, STATE, ACCESS.size, RESULT.size, SEG_OFFSET, MODE_OFFSET,
          14, 21, 24, 48)

STATUS_OK, STATUS_FAULT, STATUS_NO_MEMORY = 0, 1, 2
HAVE_EA, HAVE_LINEAR, HAVE_SEGMENT, HAVE_SEGMENT_BASE, HAVE_DISPLACEMENT, HAVE_ERROR_CODE = (1 << i for i in range(6))
VECTORS = {0: "DE", 1: "DB", 3: "BP", 6: "UD", 8: "DF", 10: "TS", 11: "NP", 12: "SS", 13: "GP", 14: "PF", 17: "AC"}
MODES = {"real": 0, "virtual-8086": 1, "protected": 2, "compatibility": 3, "64-bit": 4}

CR0_PE, CR0_PG = 1, 1 << 31
CR3_LAM_U57, CR3_LAM_U48 = 1 << 61, 1 << 62
CR4_PAE, CR4_LA57, CR4_LAM_SUP = 1 << 5, 1 << 12, 1 << 28
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
RFLAGS_VM = 1 << 17


class BridgeError(RuntimeError):
    """A library that cannot serve as a model (missing symbol, other layout)."""


def control_registers(state: CpuState) -> tuple[int, int, int, int, int, int, int]:
    """(rflags, cr0, cr3, cr4, efer, mode number, cpl) as the VMCS holds them for `state`: the
    mode decides CR0.PE, RFLAGS.VM and EFER.LMA/LME (and CS.L, see pack_segment); CPL is 0 in
    real mode and 3 in virtual-8086 mode whatever `state.cpl` says (SDM Vol. 3A §20.2, §20.3)."""
    mode = state.mode
    long_mode = mode == "64-bit" or mode == "compatibility"
    cr0 = 0 if mode == "real" else CR0_PE | (CR0_PG if long_mode else 0)
    cr3 = (CR3_LAM_U48 if state.lam_u48 else 0) | (CR3_LAM_U57 if state.lam_u57 else 0)
    cr4 = (CR4_LA57 if state.la57 else 0) | (CR4_LAM_SUP if state.lam_sup else 0) | (CR4_PAE if long_mode else 0)
    efer = EFER_LME | EFER_LMA if long_mode else 0
    cpl = 0 if mode == "real" else 3 if mode == "virtual-8086" else state.cpl
    return (RFLAGS_VM if mode == "virtual-8086" else 0), cr0, cr3, cr4, efer, MODES[mode], cpl


def pack_segment(s: Segment, cs_l: int | None = None) -> tuple[int, ...]:
    """A segment as the adapter's struct holds it (`cs_l`: CS.L given apart)."""
    return (s.base & MASK64, s.limit & 0xFFFFFFFF, s.selector & 0xFFFF, s.type & 0xF, s.s & 1, s.dpl & 3, s.p & 1,
            s.db & 1, s.g & 1, (s.l if cs_l is None else cs_l) & 1, 1 if s.unusable else 0)


class Library:
    """A loaded adapter library: `call(exit, state, access)` -> the raw result tuple
    (status, vector, error_code, valid, effective_address, linear_address, segment_base,
    displacement, segment, reserved). One instance per thread (`for_thread`)."""

    def __init__(self, path: Path, function: str) -> None:
        self.path, self.function = path, function
        try:
            self.dll = ctypes.CDLL(str(path))
        except OSError as e:
            raise BridgeError(f"cannot load {path}: {e}") from None
        try:
            self.fn = getattr(self.dll, function)
        except AttributeError:
            raise BridgeError(f"{path.name} has no function {function!r}") from None
        self.fn.restype = ctypes.c_int
        check_layout(self.dll, path)
        self._local = threading.local()
        self.owner = threading.get_ident()
        self.main = _Buffers()  # the loading thread's; other threads get their own

    def buffers(self) -> _Buffers:
        """This thread's ctypes buffers for the call (the loading thread's own, others made on first
        use)."""
        if threading.get_ident() == self.owner:
            return self.main
        b: _Buffers | None = getattr(self._local, "b", None)
        if b is None:
            b = self._local.b = _Buffers()
        return b

    def call(self, exit: ExitInfo, state: CpuState, access: Access) -> tuple[int, ...]:
        """Call the adapter on one case; the raw result tuple of bridge.RESULT."""
        b = self.buffers()
        b.load(exit, state, access)
        self.fn(b.c_exit, b.c_state, b.c_access, b.c_out)
        return RESULT.unpack_from(b.out)


    # explain's instrumented calls, as vmxaddr.realcode.worker.Worker offers them
    def call_symbol(self, symbol: str, exit: ExitInfo, state: CpuState, access: Access) -> tuple[int, list[bytes]]:
        """symbol(exit, state, access, p0, p1, p2, p3) over four zeroed areas: (return, the areas)."""
        fn = getattr(self.dll, symbol, None)
        if fn is None:
            return -1, [bytes(SCRATCH)] * 4
        b = _Buffers()
        b.load(exit, state, access)
        areas = [ctypes.create_string_buffer(SCRATCH) for _ in range(4)]
        fn.restype = ctypes.c_int
        ret = fn(b.c_exit, b.c_state, b.c_access, *areas)
        return int(ret), [a.raw for a in areas]

    def string_at(self, address: int) -> str:
        """The C string at `address` ("" for NULL), e.g. the file name a trace points at."""
        return ctypes.string_at(address).decode(errors="replace") if address else ""

    def symbol_bytes(self, symbol: str, size: int) -> bytes | None:
        """`size` bytes of the library's exported `symbol`, or None when it exports none."""
        try:
            return bytes((ctypes.c_char * size).in_dll(self.dll, symbol))
        except ValueError:
            return None


SCRATCH = 1024  # bytes of each area call_symbol passes (worker.c's SCRATCH)


def check_layout(dll: Any, path: Path) -> None:
    """Refuse a library built against another vmxaddr.h (its exported struct layout differs from
    ours)."""
    try:
        arr = (ctypes.c_uint32 * len(LAYOUT)).in_dll(dll, "vmxaddr_layout")
    except ValueError:
        raise BridgeError(f"{path.name} does not export vmxaddr_layout: write VMXADDR_EXPORT_LAYOUT; in one "
                          "of its files (vmxaddr.h)") from None
    got = tuple(arr)
    if got[0] != ABI_VERSION:
        raise BridgeError(f"{path.name} was built against vmxaddr.h ABI {got[0]}, this vmxaddr speaks {ABI_VERSION}")
    if got != LAYOUT:
        raise BridgeError(f"{path.name}: the structures' sizes/offsets {got} differ from vmxaddr's {LAYOUT} "
                          "(a modified vmxaddr.h, or a compiler with other alignment rules)")


_EXIT_REASON = dict(EXIT_REASONS)
_ZERO_OUT = bytes(RESULT.size)


_SEG_OF = tuple(attrgetter(n) for n in SEGMENTS)
_CS_L = SEG_OFFSET + SEGMENT.size + 20  # struct vmxaddr_segment: base 8, limit 4, selector 2, type .. g 6, then l
_MODE = struct.Struct("<5Q2I")  # rflags, cr0, cr3, cr4, efer, mode, cpl (after rip)
_CONTROL: dict[tuple[Any, ...], tuple[int, ...]] = {}


class _Buffers:
    """One thread's argument buffers, and what they hold (compared by identity)."""

    __slots__ = ("exit", "state", "access", "out", "c_exit", "c_state", "c_access", "c_out",
                 "last_state", "last_regs", "last_segs", "last_access", "last_mode")

    def __init__(self) -> None:
        self.exit = bytearray(EXIT.size)
        self.state = bytearray(STATE)
        self.access = bytearray(ACCESS.size)
        self.out = bytearray(RESULT.size)
        self.c_exit = (ctypes.c_char * EXIT.size).from_buffer(self.exit)
        self.c_state = (ctypes.c_char * STATE).from_buffer(self.state)
        self.c_access = (ctypes.c_char * ACCESS.size).from_buffer(self.access)
        self.c_out = (ctypes.c_char * RESULT.size).from_buffer(self.out)
        self.last_state: object = None
        self.last_regs: object = None
        self.last_segs: list[object] = [None] * 6
        self.last_access: object = None
        self.last_mode: tuple[Any, ...] = ()

    def _head(self, exit: ExitInfo, state: CpuState, access: Access) -> None:
        """The exit, the access, the mode-derived registers (and CS.L); *out zeroed."""
        try:
            EXIT.pack_into(self.exit, 0, _EXIT_REASON[exit.instruction], exit.instruction_info,
                           exit.exit_qualification, exit.length, 0)
        except struct.error:  # out-of-range values: as the hardware field would hold them
            EXIT.pack_into(self.exit, 0, _EXIT_REASON[exit.instruction], exit.instruction_info & 0xFFFFFFFF,
                           exit.exit_qualification & MASK64, exit.length & 0xFFFFFFFF, 0)
        if access is not self.last_access:
            ACCESS.pack_into(self.access, 0, access.size, 1 if access.write else 0)
            self.last_access = access
        self.out[:] = _ZERO_OUT
        key = (state.mode, state.cpl, state.la57, state.lam_sup, state.lam_u48, state.lam_u57)
        if key != self.last_mode:
            ctrl = _CONTROL.get(key)
            if ctrl is None:
                ctrl = _CONTROL[key] = control_registers(state)
            _MODE.pack_into(self.state, 136, *ctrl)
            self.state[_CS_L] = 1 if state.mode == "64-bit" else 0
            self.last_mode = key

    def load(self, exit: ExitInfo, state: CpuState, access: Access) -> None:
        """Everything an adapter may read: all registers and segments (what changed)."""
        self._head(exit, state, access)
        if state is self.last_state:
            return
        self.last_state = state
        buf = self.state
        regs = state.regs
        if regs is not self.last_regs:
            _REGS.pack_into(buf, 0, *(r & MASK64 for r in regs))
            self.last_regs = regs
        _RIP.pack_into(buf, 128, state.rip & MASK64)
        last = self.last_segs
        cs_l = 1 if state.mode == "64-bit" else 0
        for i in range(6):
            s = _SEG_OF[i](state)
            if s is not last[i] or i == 1:
                SEGMENT.pack_into(buf, SEG_OFFSET + 32 * i, *pack_segment(s, cs_l if i == 1 else None))
                last[i] = s

    def load_operand(self, exit: ExitInfo, state: CpuState, access: Access, seg_no: int, base: int | None,
                     index: int | None) -> None:
        """Only what the operand names — its base and index registers and its segment — for an
        adapter whose shim reports every register and segment it reads (kvm.h): the caller
        checks that report against these."""
        self._head(exit, state, access)
        buf = self.state
        regs = state.regs
        if base is not None:
            _RIP.pack_into(buf, base << 3, regs[base])
        if index is not None:
            _RIP.pack_into(buf, index << 3, regs[index])
        if seg_no < 6:
            s = _SEG_OF[seg_no](state)
            if s is not self.last_segs[seg_no] or seg_no == 1:
                try:
                    SEGMENT.pack_into(buf, SEG_OFFSET + 32 * seg_no, s.base, s.limit, s.selector, s.type, s.s, s.dpl,
                                      s.p, s.db, s.g, buf[_CS_L] if seg_no == 1 else s.l, s.unusable)
                except struct.error:
                    SEGMENT.pack_into(buf, SEG_OFFSET + 32 * seg_no,
                                      *pack_segment(s, buf[_CS_L] if seg_no == 1 else None))
                self.last_segs[seg_no] = s
        self.last_state = None  # the full view is stale now


def vector_name(n: int) -> str:
    """The exception name of vector number `n` ("GP" for 13), else the number."""
    return VECTORS.get(n, str(n))




_MARSHAL: list[Any] = []


def marshaller() -> Any:
    """The compiled marshaller's `call` (shim/marshal.c), or None: no compiler or no Python.h,
    or VMXADDR_NO_MARSHAL=1. Without it the pure-ctypes path above serves, more slowly."""
    import os

    if os.environ.get("VMXADDR_NO_MARSHAL"):
        return None
    if not _MARSHAL:
        try:
            import importlib.machinery
            import importlib.util

            from vmxaddr.realcode.build import build_marshaller

            path = build_marshaller()
            loader = importlib.machinery.ExtensionFileLoader("_vmxaddr_marshal", str(path))
            spec = importlib.util.spec_from_file_location("_vmxaddr_marshal", path, loader=loader)
            assert spec is not None
            mod = importlib.util.module_from_spec(spec)
            loader.exec_module(mod)
            mod.init(dict(EXIT_REASONS))
            _MARSHAL.append(mod.call)
        except Exception:  # any failure: the ctypes path
            _MARSHAL.append(None)
    return _MARSHAL[0]


def function_pointer(fn: Any) -> int:
    """The address of a ctypes function, as an integer."""
    return int(ctypes.cast(fn, ctypes.c_void_p).value or 0)
