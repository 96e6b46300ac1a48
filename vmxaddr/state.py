"""The guest CPU state a hypervisor sees on a VM exit (the VMCS guest-state area, SDM Vol. 3C
§25.4 "Guest-State Area") — only the parts the address computation reads.

Segments are held as the VMCS holds them: base, byte-granular limit, access rights (type, S,
DPL, P, D/B, G, L) and the "unusable" bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any

from vmxaddr.isa import REG16, REG32, REG64, SEGMENTS, reg_number

MODES = ("real", "virtual-8086", "protected", "compatibility", "64-bit")
MASK64 = (1 << 64) - 1


class StateError(ValueError):
    """A CPU state (JSON or command-line setting) that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class Segment:
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
        return bool(self.type & 8)

    @property
    def expand_down(self) -> bool:
        # Type bit 2 is "expand-down" for data segments and "conforming" for code (Vol. 3A §3.4.5.1).
        return not self.type & 8 and bool(self.type & 4)

    def to_json(self) -> dict[str, Any]:
        return {f.name: (bool(getattr(self, f.name)) if f.name == "unusable" else getattr(self, f.name))
                for f in fields(self)}


_SEG_FIELDS = {f.name for f in fields(Segment)}


def parse_int(value: Any, what: str) -> int:
    """An integer from JSON or the command line: int, decimal or 0x-hex string, or bool."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""), 0)
        except ValueError:
            pass
    raise StateError(f"{what}: expected an integer (e.g. 4096 or 0x1000), got {value!r}")


@dataclass(frozen=True, slots=True)
class CpuState:
    mode: str = "protected"
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
        if self.mode == "64-bit":
            return 64
        if self.mode in ("real", "virtual-8086"):
            return 32 if self.mode == "real" and self.cs.db else 16
        return 32 if self.cs.db else 16

    def segment(self, name: str) -> Segment:
        return getattr(self, name)

    def reg(self, number: int) -> int:
        return self.regs[number]

    def with_reg(self, name: str, value: int) -> CpuState:
        """Set a register by any of its names; a 32- or 16-bit name sets the low bits only."""
        if name.lower() == "rip":
            return replace(self, rip=value & MASK64)
        try:
            number, size = reg_number(name)
        except KeyError:
            raise StateError(f"unknown register {name!r} (use rax…r31, eax…r31d, ax…r31w or rip)") from None
        mask = (1 << size) - 1
        if value < 0:
            value &= mask
        if value > mask:
            raise StateError(f"{name}={value:#x} does not fit in {size} bits")
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

    def with_segment(self, name: str, **changes: Any) -> CpuState:
        if name not in SEGMENTS:
            raise StateError(f"unknown segment {name!r} (use es, cs, ss, ds, fs or gs)")
        bad = set(changes) - _SEG_FIELDS
        if bad:
            raise StateError(f"unknown segment field {sorted(bad)[0]!r} "
                             f"(fields: {', '.join(sorted(_SEG_FIELDS))})")
        return replace(self, **{name: replace(self.segment(name), **changes)})  # type: ignore[arg-type]

    # -- JSON -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
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
                raise StateError(f"unknown key {k!r} in CPU state (known: {', '.join(sorted(known))})")
        st = cls.for_code_size(parse_int(obj["code_size"], "code_size")) if "code_size" in obj else (base or cls.for_code_size(32))
        d: dict[str, Any] = {f: getattr(st, f) for f in _STATE_FIELDS}
        if "mode" in obj:
            mode = obj["mode"]
            if mode not in MODES:
                raise StateError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
            d["mode"] = mode
            if mode == "64-bit":
                cs = d["cs"]
                d["cs"] = Segment(cs.base, cs.limit, cs.type, cs.s, cs.dpl, cs.p, 0, cs.g, 1, cs.unusable, cs.selector)
        if "cpl" in obj:
            cpl = parse_int(obj["cpl"], "cpl")
            if not 0 <= cpl <= 3:
                raise StateError(f"cpl must be 0…3, not {cpl}")
            d["cpl"] = cpl
        for group, keys in (("cr4", ("la57", "lam_sup")), ("cr3", ("lam_u48", "lam_u57"))):
            part = obj.get(group, {})
            if not isinstance(part, dict):
                raise StateError(f"{group} must be an object")
            for k, v in part.items():
                if k not in keys:
                    raise StateError(f"unknown {group} bit {k!r} (known: {', '.join(keys)})")
                d[k] = bool(parse_int(v, f"{group}.{k}"))
        if "rip" in obj:
            d["rip"] = parse_int(obj["rip"], "rip") & MASK64
        regs = obj.get("registers", {})
        if not isinstance(regs, dict):
            raise StateError("registers must be an object such as {\"rbp\": \"0x1000\"}")
        ordered: list[tuple[str, int]] | None = None
        if regs:
            values = list(d["regs"])
            items = [(name, v if type(v) is int else parse_int(v, f"registers.{name}")) for name, v in regs.items()]
            if all(_REG64_INDEX.get(name, 16) < 16 and 0 <= n <= MASK64 for name, n in items):
                for name, n in items:
                    values[_REG64_INDEX[name]] = n
                d["regs"] = tuple(values)
            else:
                ordered = items  # 32/16-bit names, rip, or an error: CpuState.with_reg, in order
        segs = obj.get("segments", {})
        if not isinstance(segs, dict):
            raise StateError("segments must be an object such as {\"ss\": {\"limit\": \"0xfff\"}}")
        for sname, sv in segs.items():
            if not isinstance(sv, dict):
                raise StateError(f"segments.{sname} must be an object")
            if sname not in SEGMENTS:
                raise StateError(f"unknown segment {sname!r} (use es, cs, ss, ds, fs or gs)")
            vals: dict[str, Any] = {}
            for k, v in sv.items():
                if k not in _SEG_FIELDS:
                    raise StateError(f"unknown segment field {k!r} (fields: {', '.join(sorted(_SEG_FIELDS))})")
                vals[k] = v if type(v) is int else parse_int(v, f"segments.{sname}.{k}")
            if "unusable" in vals:
                vals["unusable"] = bool(vals["unusable"])
            if len(vals) < len(_SEG_FIELDS):  # a partial segment: the rest from the base state
                old = d[sname]
                vals = {f: getattr(old, f) for f in _SEG_FIELDS} | vals
            d[sname] = Segment(**vals)
        out = cls(**d)
        for name, n in ordered or ():
            out = out.with_reg(name, n)
        return out

    @classmethod
    def loads(cls, text: str, base: CpuState | None = None) -> CpuState:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise StateError(f"not valid JSON: {e}") from None
        return cls.from_json(obj, base)


_STATE_FIELDS = tuple(f.name for f in fields(CpuState))
_REG64_INDEX = {n: i for i, n in enumerate(REG64)}


def reg_display(number: int, size: int) -> str:
    return {64: REG64, 32: REG32, 16: REG16}[size][number]
