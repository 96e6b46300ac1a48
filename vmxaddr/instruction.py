"""The decoded instruction: what `vmxaddr.decode` returns (kept apart so that the decoder's
helpers for REX2, string I/O and the register-only instructions can build one)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from vmxaddr.isa import XMM, InstrSpec, Layout, reg_name


class DecodeErrorKind(StrEnum):
    """Why bytes are not a VMX-family instruction the decoder reads (`DecodeError.kind`)."""

    MODE = "mode"  # a code size other than 16, 32 or 64
    EMPTY = "empty"
    TRUNCATED = "truncated"  # the bytes end inside the instruction
    TOO_LONG = "too-long"  # more than 15 bytes (#GP)
    LOCK = "lock"  # a LOCK prefix (#UD)
    PREFIX = "prefix"  # a prefix that makes it another instruction, or #UD
    NOT_VMX = "not-vmx"
    REGISTER_FORM = "register-form"  # a register operand where only memory is allowed (#UD)
    REX2 = "rex2"  # an APX REX2 prefix where it is #UD
    DECODER_DISAGREEMENT = "decoder-disagreement"  # capstone reads the bytes otherwise (capstone_guard)


class DecodeError(ValueError):
    """Bytes that are not a VMX-family instruction this library can decode.

    `kind` is a DecodeErrorKind value ("mode", "empty", "truncated", "too-long",
    "lock", "prefix", "not-vmx", "register-form", "rex2", "decoder-disagreement"); the raising
    code passes the plain string (tests/test_enums.py holds it to the enum).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class MemoryOperand(NamedTuple):
    """The memory operand of a decoded instruction: segment, base, index, scale, displacement, address size, access."""
    segment: str  # the segment the access uses: the effective override, else the default rule
    segment_prefix: str | None  # the last segment-override prefix present, effective or not
    base: int | None  # register number (0 = rAX … 15 = R15); None: no base (or RIP-relative)
    index: int | None  # type: ignore[assignment]  # shadows tuple.index, which nothing here calls
    scale: int  # 1, 2, 4 or 8
    displacement: int  # the displacement field, sign-extended from its own width
    disp_size: int  # width of the displacement field in bytes (0, 1, 2 or 4)
    disp_offset: int  # where the displacement field starts in the bytes
    address_size: int  # 16, 32 or 64
    rip_relative: bool
    access_size: int  # bytes the instruction reads or writes
    access: str  # "read" or "write"

    @property
    def base_name(self) -> str | None:
        """The base register's name in the address size ("rip"/"eip" when RIP-relative), or None."""
        if self.rip_relative:
            return "rip" if self.address_size == 64 else "eip"
        return None if self.base is None else reg_name(self.base, self.address_size)

    @property
    def index_name(self) -> str | None:
        """The index register's name in the address size, or None."""
        return None if self.index is None else reg_name(self.index, self.address_size)

    def text(self) -> str:
        """The operand in Intel syntax, e.g. "ss:[ebp - 0x28]"."""
        parts = [p for p in (self.base_name, self.index_name and (
            self.index_name + (f"*{self.scale}" if self.scale > 1 else ""))) if p]
        d = self.displacement
        if parts and d:
            parts.append(f"{'-' if d < 0 else '+'} {abs(d):#x}")
            body = " + ".join(parts[:-1]) + " " + parts[-1]
        elif parts:
            body = " + ".join(parts)
        else:
            body = f"{d & ((1 << self.address_size) - 1):#x}"
        return f"{self.segment}:[{body}]"

    def to_json(self) -> dict[str, Any]:
        """The operand as JSON (register names, not numbers)."""
        return {
            "segment": self.segment,
            "segment_prefix": self.segment_prefix,
            "base": self.base_name,
            "index": self.index_name,
            "scale": self.scale,
            "displacement": self.displacement,
            "disp_size": self.disp_size,
            "address_size": self.address_size,
            "rip_relative": self.rip_relative,
            "access_size": self.access_size,
            "access": self.access,
        }


class Instruction(NamedTuple):
    """A decoded VMX-family instruction: mnemonic, code size, length, bytes, prefixes, registers and memory operand."""
    mnemonic: str
    code_size: int
    length: int
    raw: bytes
    prefixes: tuple[int, ...]  # legacy prefixes, in order
    rex: int  # the effective REX byte, 0 when none
    operand: MemoryOperand | None  # None for a register form
    reg1: int | None  # the r/m register of a register form (VMREAD/VMWRITE, LLDT group, RDRAND)
    reg2: int | None  # ModRM.reg: VMREAD/VMWRITE field encoding, INVEPT/INVVPID/INVPCID type
    operand_size: int | None  # LGDT group (16/32; None in 64-bit mode), RDRAND/RDSEED, INS/OUTS (8/16/32)
    spec: InstrSpec
    rex2: int = 0  # the REX2 payload byte (APX, vmxaddr.rex2) with bit 8 set when present; 0 when none
    immediate: int | None = None  # RDMSR/WRMSRNS imm32: the MSR index

    @property
    def uses_rex2(self) -> bool:
        """True when the instruction has an APX REX2 prefix (d5)."""
        return self.rex2 != 0

    @property
    def rep(self) -> bool:
        """INS/OUTS with an F3 or F2 prefix (both repeat these: SDM Vol. 2 "REP/REPE/REPZ/REPNE/REPNZ")."""
        return 0xF3 in self.prefixes or 0xF2 in self.prefixes

    @property
    def reg_size(self) -> int:
        """Width of the general-register operands (reg1/reg2) for naming them."""
        layout = self.spec.layout
        if layout is Layout.RDRAND or layout is Layout.REG:
            return self.operand_size or 32
        if self.mnemonic in ("lldt", "ltr"):
            return 16  # r/m16
        if layout is Layout.LDT:  # SLDT/STR r16/r32/r64 by operand size
            return 64 if (self.rex | self.rex2) & 8 else 16 if (0x66 in self.prefixes) != (self.code_size == 16) else 32
        return 64 if self.code_size == 64 else 32

    def text(self) -> str:
        """The instruction in Intel syntax, e.g. "vmread dword ptr ss:[ebp - 0x28], eax"."""
        size = self.reg_size
        ops: list[str] = []
        layout = self.spec.layout
        if layout is Layout.LOADIWKEY:
            return f"loadiwkey {XMM[self.reg1 or 0]}, {XMM[self.reg2 or 0]}"
        if self.immediate is not None:
            reg = reg_name(self.reg1 or 0, 64)
            return f"rdmsr {reg}, {self.immediate:#x}" if self.mnemonic == "rdmsr" else f"wrmsrns {self.immediate:#x}, {reg}"
        if layout is Layout.IO and self.operand is not None:
            width = {8: "byte", 16: "word", 32: "dword"}[self.operand_size or 8]
            rep = "rep " if self.rep else ""
            if self.mnemonic == "ins":
                return f"{rep}ins {width} {self.operand.text()}, dx"
            return f"{rep}outs dx, {width} {self.operand.text()}"
        r1 = reg_name(self.reg1, size) if self.reg1 is not None else None
        r2 = reg_name(self.reg2, size) if self.reg2 is not None else None
        mem = self.operand.text() if self.operand else r1
        m = self.mnemonic
        if m == "vmread":
            ops = [mem or "?", r2 or "?"]
        elif m == "vmwrite" or m in ("invept", "invvpid", "invpcid"):
            ops = [r2 or "?", mem or "?"]
        elif mem:
            ops = [mem]
        return f"{m} {', '.join(ops)}".strip()

    def to_json(self) -> dict[str, Any]:
        """The instruction as `vmxaddr decode --json` prints it."""
        size = self.reg_size
        return {
            "mnemonic": self.mnemonic,
            "text": self.text(),
            "code_size": self.code_size,
            "length": self.length,
            "bytes": self.raw.hex(),
            "prefixes": [f"{p:02x}" for p in self.prefixes] + ([f"{self.rex:02x}"] if self.rex else [])
            + ([f"d5 {self.rex2 & 0xFF:02x}"] if self.rex2 else []),
            "operand": self.operand.to_json() if self.operand else None,
            "registers": {k: XMM[v] if self.spec.layout is Layout.LOADIWKEY else reg_name(v, size)
                          for k, v in (("reg1", self.reg1), ("reg2", self.reg2)) if v is not None},
            "operand_size": self.operand_size,
            "exit_reason": self.spec.exit_reason,
            "layout": self.spec.layout.value,
        }


SEGMENT_PREFIX = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}


def segment_override(pfx: bytes | list[int] | tuple[int, ...], code_size: int) -> tuple[str | None, str | None]:
    """(the last segment-override prefix, the override that takes effect): in 64-bit mode only FS
    and GS overrides take effect (Vol. 1 §3.3.7.1)."""
    seg_prefix = eff = None
    for p in pfx:
        s = SEGMENT_PREFIX.get(p)
        if s is not None:
            seg_prefix = s
            if code_size != 64 or s in ("fs", "gs"):
                eff = s
    return seg_prefix, eff
