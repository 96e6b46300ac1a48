"""The guest CPU state a hypervisor sees on a VM exit (the VMCS guest-state area, SDM Vol. 3C
§25.4 "Guest-State Area") — only the parts the address computation reads.

Segments are held as the VMCS holds them: base, byte-granular limit, access rights (type, S,
DPL, P, D/B, G, L) and the "unusable" bit.
"""

from __future__ import annotations

import json
import operator
import os
import re
import stat
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from vmxaddr.isa import REG16, REG32, REG64, SEGMENTS, reg_number


class Mode(StrEnum):
    """The processor modes a model distinguishes (SDM Vol. 3A §2.2 "Modes of Operation"; IA-32e
    mode is 64-bit mode with CS.L = 1 and compatibility mode with CS.L = 0)."""

    REAL = "real"
    VIRTUAL_8086 = "virtual-8086"
    PROTECTED = "protected"
    COMPATIBILITY = "compatibility"
    LONG = "64-bit"


# The modes as plain strings: a state holds these, not the Mode members, because a str subclass
# is slower where a state is used per case (hashing a CpuState +11%, a dict lookup by its mode
# +30%, measured with timeit).
MODES: tuple[str, ...] = tuple(m.value for m in Mode)
MASK64 = (1 << 64) - 1


class StateError(ValueError):
    """A CPU state (JSON or command-line setting) that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment register as the VMCS guest-state area holds it: base, byte-granular limit, access
    rights, selector."""
    base: int = 0
    limit: int = 0xFFFFFFFF  # byte-granular effective limit, as the VMCS holds it
    type: int = 3  # read/write data, accessed
    s: int = 1  # 1 = code or data segment
    dpl: int = 0
    p: int = 1
    db: int = 1
    g: int = 1
    l: int = 0  # noqa: E741 - the SDM's name for the flag
    unusable: bool = False
    selector: int = 0

    @property
    def is_code(self) -> bool:
        """True for a code segment (type bit 3)."""
        return bool(self.type & 8)

    @property
    def expand_down(self) -> bool:
        # Type bit 2 is "expand-down" for data segments and "conforming" for code (Vol. 3A §3.4.5.1).
        """True for an expand-down data segment (type bit 2 of a data segment)."""
        return not self.type & 8 and bool(self.type & 4)

    def to_json(self) -> dict[str, Any]:
        """The segment as JSON (docs/state-format.md)."""
        return {f.name: (bool(getattr(self, f.name)) if f.name == "unusable" else getattr(self, f.name))
                for f in fields(self)}

    def __reduce__(self) -> tuple[Any, ...]:
        # by position: a frozen slots dataclass pickles field by field through copyreg, 5x slower,
        # and check-trace --jobs sends thousands of states to every worker
        return (Segment, (self.base, self.limit, self.type, self.s, self.dpl, self.p, self.db, self.g, self.l,
                          self.unusable, self.selector))


_SEG_FIELDS = {f.name for f in fields(Segment)}


# -- the validator ------------------------------------------------------------------------------
# One set of ranges for every surface (--reg, --seg, --rip, --cpl, --state files, trace records):
# the widths of the VMCS guest-state fields (SDM Vol. 3C §25.4.1 "Guest Register State": selector
# 16 bits, base address 64 bits, segment limit 32 bits, access rights with the type in bits 3:0,
# S bit 4, DPL bits 6:5, P bit 7, L bit 13, D/B bit 14, G bit 15, "segment unusable" bit 16; RIP
# and the general-purpose registers 64 bits) and the CPL, 0…3 (Vol. 3A §5.5 "Privilege Levels").
SEGMENT_RANGES: dict[str, tuple[int, int]] = {
    "base": (0, MASK64), "limit": (0, 0xFFFFFFFF), "type": (0, 15), "s": (0, 1), "dpl": (0, 3),
    "p": (0, 1), "db": (0, 1), "g": (0, 1), "l": (0, 1), "unusable": (0, 1), "selector": (0, 0xFFFF),
}
FLAG_RANGE = (0, 1)  # one-bit fields and the CR4/CR3 flags: 0/1 or false/true
RIP_RANGE = (0, MASK64)
CPL_RANGE = (0, 3)
MAX_NUMBER_CHARS = 64
"""Longest integer string accepted ("0x" and 16 hex digits, with room for underscores): a longer
one is refused before it is converted (a million-digit value is not parsed, let alone kept)."""
MAX_STATE_BYTES = 1 << 20
"""Largest --state file read (1 MiB; a state is a few hundred bytes)."""

_INT_TEXT = re.compile(r"-?(?:0[xX](?=_*[0-9a-fA-F])[0-9a-fA-F_]+|0|[1-9][0-9_]*)")


class BigNumber:
    """A JSON number with more digits than any field can hold, kept unconverted (`json_loads`)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a {self.digits}-digit number"


def _show(value: Any) -> str:
    """`value` for an error message: its repr, at most about 40 characters (a hostile key or value
    must not turn one line into a megabyte)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 80:
        return f"a {len(str(abs(value)))}-digit number"
    r = repr(value)
    if len(r) <= 40:
        return r
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(r)} characters as JSON"
    return f"{r[:30]}… ({size})"


def _name(key: str) -> str:
    """A key from the input as part of a field's name: itself if short and plain, else _show."""
    return key if len(key) <= 16 and key.isascii() and key.isprintable() else _show(key)


def _range_text(lo: int, hi: int) -> str:
    if (lo, hi) == (0, 1):
        return "0 or 1 (or false/true)"
    return f"{lo if lo >= 0 else hex(lo)}…{hi:#x}" if hi >= 0xFFFF else f"{lo}…{hi}"


def parse_int(value: Any, what: str) -> int:
    """An integer from JSON or the command line: an int, a bool (1/0), or a string in decimal or
    0x hexadecimal, underscores allowed ("0xffff_8000_0000_0000"). Other forms (0o, 0b, floats,
    signs other than a leading "-", leading zeros) and strings over MAX_NUMBER_CHARS are refused."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, BigNumber):
        raise StateError(f"{what}: {value!r} is out of range (allowed at most 64 bits)")
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS:
            raise StateError(f"{what}: {_show(value)} is too long for a 64-bit value")
        if _INT_TEXT.fullmatch(value):
            return int(value.replace("_", ""), 0)
    raise StateError(f"{what}: expected an integer in decimal or 0x hexadecimal (e.g. 4096 or 0x1000), "
                     f"got {_show(value)}")


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    """`value` (as parse_int reads it) if lo <= value <= hi; else StateError naming `what` and the
    allowed range. The one range check behind every surface; trace records use it too."""
    if isinstance(value, BigNumber):
        raise StateError(f"{what}: {value!r} is out of range (allowed {_range_text(lo, hi)})")
    if (lo, hi) == FLAG_RANGE and isinstance(value, str) and value.lower() in ("true", "false"):
        return int(value.lower() == "true")  # a one-bit field: --seg ds.unusable=true
    n = value if type(value) is int else parse_int(value, what)
    if lo <= n <= hi:
        return n
    raise StateError(f"{what}: {_show(value)} is out of range (allowed {_range_text(lo, hi)})")


def _json_int(text: str) -> int | BigNumber:
    return int(text) if len(text) <= MAX_NUMBER_CHARS else BigNumber(len(text.lstrip("-")))


def json_loads(text: str | bytes, what: str = "state") -> Any:
    """JSON text as `json.loads` reads it, bounded: numbers longer than MAX_NUMBER_CHARS become
    BigNumber (refused by the validator, naming the field) instead of being converted, and
    nesting too deep for the parser, bytes that are not UTF-8, or invalid JSON give StateError."""
    if isinstance(text, bytes | bytearray):
        text = decode_utf8(bytes(text), what)
    try:
        return json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as e:
        raise StateError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise StateError(f"{what} is nested too deeply to be a CPU state") from None
    except ValueError as e:  # e.g. a float the parser cannot take
        raise StateError(f"{what} is not valid JSON: {e}") from None


def decode_utf8(data: bytes, what: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); StateError, saying what was found, if not."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and (data[0] == 0) != (data[1] == 0)):
        raise StateError(f"{what} is UTF-16 (or other non-UTF-8) text: save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise StateError(f"{what} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def read_state_file(path: str, limit: int = MAX_STATE_BYTES) -> str:
    """The text of a --state file, read without blocking on a FIFO with no writer and without
    reading more than `limit` bytes (/dev/zero, a huge file): StateError on any problem."""
    what = f"state file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise StateError(f"cannot read {what}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise StateError(f"cannot read {what}: it is a directory")
        os.set_blocking(fd, True)  # a FIFO opened without a writer now reads as empty, not forever
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise StateError(f"cannot read {what}: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise StateError(f"{what} is larger than {limit // 1024} KiB: not a CPU state")
    data = b"".join(chunks)
    if not data.strip():
        raise StateError(f"{what} is empty" + ("" if stat.S_ISREG(mode) else " (nothing was written to it)"))
    return decode_utf8(data, what)


@dataclass(frozen=True, slots=True)
class CpuState:
    """The CPU state a model reads: mode, CPL, CR4/CR3 bits, RIP, the general registers and the six
    segments."""
    mode: str = "protected"  # a Mode value, as a plain string (MODES)
    cpl: int = 0
    la57: bool = False  # CR4.LA57
    lam_sup: bool = False  # CR4.LAM_SUP (linear-address masking for supervisor pointers)
    lam_u48: bool = False  # CR3.LAM_U48
    lam_u57: bool = False  # CR3.LAM_U57
    regs: tuple[int, ...] = (0,) * 16  # RAX … R15, by instruction-information numbering
    egprs: tuple[int, ...] = (0,) * 16  # APX's R16 … R31 (register numbers 16 … 31)
    rip: int = 0
    es: Segment = Segment()
    cs: Segment = Segment(type=0xB)
    ss: Segment = Segment()
    ds: Segment = Segment()
    fs: Segment = Segment()
    gs: Segment = Segment()

    def __reduce__(self) -> tuple[Any, ...]:
        return (CpuState, (self.mode, self.cpl, self.la57, self.lam_sup, self.lam_u48, self.lam_u57, self.regs,
                           self.egprs, self.rip, self.es, self.cs, self.ss, self.ds, self.fs, self.gs))  # as Segment's

    # -- construction -------------------------------------------------------------------
    @classmethod
    def for_code_size(cls, code_size: int, **kw: Any) -> CpuState:
        """The default state for 16-, 32- or 64-bit code (protected mode, or 64-bit mode)."""
        if code_size == 64:
            return cls(mode="64-bit", cs=Segment(type=0xB, db=0, l=1), **kw)
        if code_size in (16, 32):
            return cls(mode="protected", cs=Segment(type=0xB, db=int(code_size == 32)), **kw)
        raise StateError(f"code size must be 16, 32 or 64, not {code_size}")

    @property
    def code_size(self) -> int:
        """The code size the mode and CS.D/B give: 64 in 64-bit mode, else 32 or 16."""
        if self.mode == "64-bit":
            return 64
        if self.mode in ("real", "virtual-8086"):
            return 32 if self.mode == "real" and self.cs.db else 16
        return 32 if self.cs.db else 16

    def segment(self, name: str) -> Segment:
        """The segment register `name` ("es", "cs", ...)."""
        return getattr(self, name)

    def reg(self, number: int) -> int:
        """The value of general register `number` (0 = RAX ... 15 = R15)."""
        return self.regs[number]

    def with_reg(self, name: str, value: Any, what: str | None = None) -> CpuState:
        """Set a register by any of its names; a 32- or 16-bit name sets the low bits only.
        `what` names the setting in an error (default: the register's name)."""
        if name.lower() == "rip":
            return replace(self, rip=check_int(value, what or name, *RIP_RANGE))
        try:
            number, size = reg_number(name)
        except KeyError:
            raise StateError(f"unknown register {_show(name)} (use rax…r31, eax…r31d, ax…r31w or rip)") from None
        mask = (1 << size) - 1
        # A negative value is taken in two's complement of the register's width (docs/state-format.md).
        value = check_int(value, what or name, -(1 << (size - 1)), mask) & mask
        if number >= 16:  # APX extended GPRs
            egprs = list(self.egprs)
            egprs[number - 16] = (egprs[number - 16] & ~mask & MASK64) | value
            return replace(self, egprs=tuple(egprs))
        regs = list(self.regs)
        regs[number] = (regs[number] & ~mask & MASK64) | value
        return replace(self, regs=tuple(regs))

    def reg_value(self, number: int) -> int:
        """Register `number` 0…31 (16…31: APX's R16…R31)."""
        return self.regs[number] if number < 16 else self.egprs[number - 16]

    def with_segment(self, name: str, what: str | None = None, **changes: Any) -> CpuState:
        """Change fields of one segment; each value is checked against SEGMENT_RANGES. `what`
        names the segment in an error (default: its name)."""
        if name not in SEGMENTS:
            raise StateError(f"unknown segment {_show(name)} (use es, cs, ss, ds, fs or gs)")
        bad = set(changes) - _SEG_FIELDS
        if bad:
            raise StateError(f"unknown segment field {_show(sorted(bad)[0])} "
                             f"(fields: {', '.join(sorted(_SEG_FIELDS))})")
        checked = {k: check_int(v, f"{what or name}.{k}", *SEGMENT_RANGES[k]) for k, v in changes.items()}
        if "unusable" in checked:
            checked["unusable"] = bool(checked["unusable"])
        return replace(self, **{name: replace(self.segment(name), **checked)})  # type: ignore[arg-type]

    # -- JSON -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The state as JSON (docs/state-format.md); R16-R31 only when one is set."""
        return {
            "mode": self.mode,
            "cpl": self.cpl,
            "cr4": {"la57": self.la57, "lam_sup": self.lam_sup},
            "cr3": {"lam_u48": self.lam_u48, "lam_u57": self.lam_u57},
            "rip": self.rip,
            "registers": {REG64[i]: v for i, v in enumerate(self.regs + (self.egprs if any(self.egprs) else ()))},
            "segments": {s: self.segment(s).to_json() for s in SEGMENTS},
        }

    def dumps(self) -> str:
        """The state as indented JSON text."""
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, obj: Any, base: CpuState | None = None) -> CpuState:
        """Read a state; missing keys keep the values of `base` (default: 32-bit protected mode).
        Built in one step (traces may carry a state on every record)."""
        if not isinstance(obj, dict):
            raise StateError("a CPU state must be a JSON object")
        known = {"mode", "cpl", "cr4", "cr3", "rip", "registers", "segments", "code_size"}
        for k in obj:
            if k not in known:
                raise StateError(f"unknown key {_show(k)} in CPU state (known: {', '.join(sorted(known))})")
        st = cls.for_code_size(check_int(obj["code_size"], "code_size", 16, 64)) if "code_size" in obj else (base or cls.for_code_size(32))
        d: dict[str, Any] = {f: getattr(st, f) for f in _STATE_FIELDS}
        if "mode" in obj:
            mode = obj["mode"]
            if not isinstance(mode, str) or mode not in MODES:
                raise StateError(f"mode must be one of {', '.join(MODES)}, not {_show(mode)}")
            d["mode"] = mode
            cs = d["cs"]
            if mode == "64-bit":
                d["cs"] = Segment(cs.base, cs.limit, cs.type, cs.s, cs.dpl, cs.p, 0, cs.g, 1, cs.unusable, cs.selector)
            elif mode == "compatibility" and cs.l:  # compatibility mode is IA-32e mode with CS.L = 0
                d["cs"] = Segment(cs.base, cs.limit, cs.type, cs.s, cs.dpl, cs.p, cs.db, cs.g, 0, cs.unusable, cs.selector)
        if "cpl" in obj:
            d["cpl"] = check_int(obj["cpl"], "cpl", *CPL_RANGE)
        for group, keys in (("cr4", ("la57", "lam_sup")), ("cr3", ("lam_u48", "lam_u57"))):
            part = obj.get(group, {})
            if not isinstance(part, dict):
                raise StateError(f"{group} must be an object")
            for k, v in part.items():
                if k not in keys:
                    raise StateError(f"unknown {group} bit {_show(k)} (known: {', '.join(keys)})")
                d[k] = bool(check_int(v, f"{group}.{k}", *FLAG_RANGE))
        if "rip" in obj:
            d["rip"] = check_int(obj["rip"], "rip", *RIP_RANGE)
        regs = obj.get("registers", {})
        if not isinstance(regs, dict):
            raise StateError("registers must be an object such as {\"rbp\": \"0x1000\"}")
        ordered: list[tuple[str, int]] | None = None
        if regs:
            values = list(d["regs"])
            items = [(name, v if type(v) is int else check_int(v, f"registers.{_name(name)}", -(1 << 63), MASK64))
                     for name, v in regs.items()]
            if all(_REG64_INDEX.get(name, 16) < 16 and 0 <= n <= MASK64 for name, n in items):  # the common case
                for name, n in items:
                    values[_REG64_INDEX[name]] = n
                d["regs"] = tuple(values)
            else:
                ordered = items  # 32/16-bit names, rip, or an error: CpuState.with_reg, in order
        segs = obj.get("segments", {})
        if not isinstance(segs, dict):
            raise StateError("segments must be an object such as {\"ss\": {\"limit\": \"0xfff\"}}")
        for sname, sv in segs.items():
            if sname not in SEGMENTS:
                raise StateError(f"unknown segment {_show(sname)} (use es, cs, ss, ds, fs or gs)")
            if not isinstance(sv, dict):
                raise StateError(f"segments.{sname} must be an object")
            whole = _whole_segment(sv)
            if whole is not None:  # every field, plain and in range (to_json's form): no more to check
                d[sname] = whole
                continue
            vals: dict[str, Any] = {}
            for k, v in sv.items():
                if k not in _SEG_FIELDS:
                    raise StateError(f"unknown segment field {_show(k)} (fields: {', '.join(sorted(_SEG_FIELDS))})")
                lo, hi = SEGMENT_RANGES[k]
                vals[k] = v if type(v) is int and lo <= v <= hi else check_int(v, f"segments.{sname}.{k}", lo, hi)
            if "unusable" in vals:
                vals["unusable"] = bool(vals["unusable"])
            if len(vals) < len(_SEG_FIELDS):  # a partial segment: the rest from the base state
                old = d[sname]
                vals = {f: getattr(old, f) for f in _SEG_FIELDS} | vals
            d[sname] = Segment(**vals)
        if "cs" in segs or "mode" in obj:
            _check_cs(d["mode"], d["cs"])
        out = cls(**d)
        for name, n in ordered or ():
            out = out.with_reg(name, n, f"registers.{_name(name)}")
        return out

    @classmethod
    def loads(cls, text: str | bytes, base: CpuState | None = None, what: str = "state") -> CpuState:
        """A state from JSON text: bounded (json_loads) and validated (from_json)."""
        return cls.from_json(json_loads(text, what), base)


_STATE_FIELDS = tuple(f.name for f in fields(CpuState))
_SEG_ORDER = tuple(f.name for f in fields(Segment))
_SEG_VALUES = operator.itemgetter(*_SEG_ORDER)
_SEG_BOUNDS = tuple(SEGMENT_RANGES[f] for f in _SEG_ORDER if f != "unusable")
_UNUSABLE = _SEG_ORDER.index("unusable")


def _whole_segment(sv: dict[str, Any]) -> Segment | None:
    """A segment object with exactly the fields, every one an in-range int (unusable: a bool or
    0/1) — the form to_json writes, and what from_json's loop would make of it; else None (the
    loop then reads it, and says what is wrong)."""
    if len(sv) != len(_SEG_ORDER) or sv.keys() != _SEG_FIELDS:
        return None
    vals = list(_SEG_VALUES(sv))
    unusable = vals.pop(_UNUSABLE)
    if not (unusable is True or unusable is False or (type(unusable) is int and 0 <= unusable <= 1)):
        return None
    for v, (lo, hi) in zip(vals, _SEG_BOUNDS, strict=True):
        if type(v) is not int or not lo <= v <= hi:
            return None
    vals.insert(_UNUSABLE, bool(unusable))
    return Segment(*vals)


def _check_cs(mode: str, cs: Segment) -> None:
    """In IA-32e mode CS.L selects 64-bit mode (L = 1) or compatibility mode (L = 0), and L = 1
    with D = 1 is reserved (SDM Vol. 3A §5.2.1 "Code-Segment Descriptor in 64-bit Mode"; VM entry
    refuses it, Vol. 3C §27.3.1.2): a state that says otherwise is refused, not reinterpreted."""
    if mode == "64-bit" and (not cs.l or cs.db):
        raise StateError(f"mode 64-bit needs segments.cs.l = 1 and segments.cs.db = 0, "
                         f"not l = {int(cs.l)}, db = {int(cs.db)} (64-bit mode is IA-32e mode with CS.L = 1)")
    if mode == "compatibility" and cs.l:
        raise StateError("mode compatibility needs segments.cs.l = 0 (with CS.L = 1 it would be 64-bit mode)")


def check_state(st: CpuState) -> CpuState:
    """`st` if every field is in the validator's range (for a state built in Python rather than
    read by `CpuState.from_json`, which checks as it reads); else StateError naming the field."""
    if st.mode not in MODES:
        raise StateError(f"mode must be one of {', '.join(MODES)}, not {_show(st.mode)}")
    check_int(st.cpl, "cpl", *CPL_RANGE)
    check_int(st.rip, "rip", *RIP_RANGE)
    for flag in ("la57", "lam_sup", "lam_u48", "lam_u57"):
        check_int(getattr(st, flag), flag, *FLAG_RANGE)
    if len(st.regs) != 16:
        raise StateError(f"registers: expected 16 values, got {len(st.regs)}")
    if len(st.egprs) != 16:
        raise StateError(f"R16-R31: expected 16 values, got {len(st.egprs)}")
    for name, v in zip(REG64, st.regs + st.egprs, strict=True):
        check_int(v, name, 0, MASK64)
    for sname in SEGMENTS:
        seg = st.segment(sname)
        for k, (lo, hi) in SEGMENT_RANGES.items():
            check_int(getattr(seg, k), f"segments.{sname}.{k}", lo, hi)
    _check_cs(st.mode, st.cs)
    return st
_REG64_INDEX = {n: i for i, n in enumerate(REG64)}


def reg_display(number: int, size: int) -> str:
    """The name of register `number` at `size` bits, for messages."""
    return {64: REG64, 32: REG32, 16: REG16}[size][number]
