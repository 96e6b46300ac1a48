"""Instruction forms: the discrete part of a proof (instruction, processor mode, code and address
size, operand kind, reported segment), each with a template encoding, and the symbolic rest.

A form is proved for every value of what stays symbolic: the 16 general registers (64 bits),
the displacement (its field's width), RIP (RIP-relative forms), each segment's base, limit,
type, D/B and unusable bit, CPL, CR4.LA57, CR4.LAM_SUP, CR3.LAM_U48 and CR3.LAM_U57. What is
fixed: the instruction bytes but for the displacement (so the instruction-information field),
the processor mode, the encoder policy (`vmxaddr diff`'s default unless given).
Forms are found by encoding candidate ModRM/SIB shapes with each segment prefix and keeping the
first template per (operand kind, reported segment): the reachable ones, by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import z3

from vmxaddr.decode import Instruction, decode
from vmxaddr.exitinfo import DEFAULT_POLICY, Policy, reported_segment
from vmxaddr.gen import NO_REX2, OPCODES
from vmxaddr.isa import SEGMENTS
from vmxaddr.prove.sym import Sym, var
from vmxaddr.state import CpuState, Segment

# processor modes by code size (CpuState.code_size): what `--mode` 16/32/64 covers
MODES_BY_CODE_SIZE: dict[int, tuple[str, ...]] = {
    16: ("protected", "real", "virtual-8086", "compatibility"),
    32: ("protected", "real", "compatibility"),
    64: ("64-bit",),
}
SEG_PREFIX = {"es": 0x26, "cs": 0x2E, "ss": 0x36, "ds": 0x3E, "fs": 0x64, "gs": 0x65}

# ModRM/SIB shapes: kind -> (bytes after the opcode as a function of the ModRM.reg field and the
# scale code). 32/64-bit addressing: EBX/EBP base, ESI index; 16-bit addressing: its fixed pairs.
_SHAPES_32: tuple[tuple[str, Any], ...] = (
    ("[base]", lambda r, s: bytes([r << 3 | 3])),
    ("[base+disp8]", lambda r, s: bytes([0x40 | r << 3 | 5, 0])),  # EBP: SS by default
    ("[base+disp32]", lambda r, s: bytes([0x80 | r << 3 | 3]) + bytes(4)),
    ("[base+index*S+disp32]", lambda r, s: bytes([0x84 | r << 3, s << 6 | 6 << 3 | 3]) + bytes(4)),
    ("[base+base*S+disp32]", lambda r, s: bytes([0x84 | r << 3, s << 6 | 3 << 3 | 3]) + bytes(4)),
    ("[index*S+disp32]", lambda r, s: bytes([0x04 | r << 3, s << 6 | 6 << 3 | 5]) + bytes(4)),
    ("[disp32]", lambda r, s: bytes([0x04 | r << 3, 0x25]) + bytes(4)),  # SIB: no base, no index
    ("[rip+disp32]", lambda r, s: bytes([0x05 | r << 3]) + bytes(4)),  # 64-bit code; [disp32] in 32-bit
)
_SHAPES_16: tuple[tuple[str, Any], ...] = (
    ("[bx+si]", lambda r, s: bytes([r << 3 | 0])),
    ("[bx+si+disp16]", lambda r, s: bytes([0x80 | r << 3 | 0]) + bytes(2)),
    ("[bp+di+disp8]", lambda r, s: bytes([0x40 | r << 3 | 3, 0])),
    ("[si+disp16]", lambda r, s: bytes([0x80 | r << 3 | 4]) + bytes(2)),
    ("[bp+disp16]", lambda r, s: bytes([0x80 | r << 3 | 6]) + bytes(2)),
    ("[disp16]", lambda r, s: bytes([r << 3 | 6]) + bytes(2)),
)


@dataclass(frozen=True)
class Form:
    """One instruction form the prover explores: instruction, processor mode, code and address size,
    operand kind, segment, bytes."""
    mnemonic: str
    mode: str  # processor mode (CpuState.mode)
    code_size: int
    address_size: int
    kind: str  # operand kind, "[base+index*S+disp32]" with the scale filled in, or "register"
    segment: str | None  # the segment bits 17:15 report (None for a register operand)
    raw: bytes  # template encoding (displacement 0)

    @property
    def name(self) -> str:
        """The form for a person, e.g. "VMREAD mem DS a32 (protected, 32-bit code)"."""
        seg = f" {self.segment.upper()}" if self.segment else ""
        return f"{self.mnemonic.upper()} {self.kind}{seg} a{self.address_size} ({self.mode}, {self.code_size}-bit code)"

    @property
    def key(self) -> str:
        """A short, stable identifier (for --form)."""
        seg = self.segment or "reg"
        return f"{self.mnemonic}/{self.mode}{self.code_size}/a{self.address_size}/{self.kind}/{seg}"

    def instruction(self) -> Instruction:
        """The form's bytes decoded."""
        return decode(self.raw, self.code_size)


def _opcode(mnemonic: str) -> tuple[bytes, int | None]:
    mp, opcode, regfield, _forms = OPCODES[mnemonic]
    return (bytes([mp]) if mp is not None else b"") + opcode, regfield


def forms(mnemonics: tuple[str, ...], code_sizes: tuple[int, ...] = (16, 32, 64),
          modes: tuple[str, ...] | None = None, policy: Policy = DEFAULT_POLICY) -> Iterator[Form]:
    """Every form of `mnemonics` in the given code sizes (and processor modes), in a stable order."""
    for m in mnemonics:
        pre_op, regfield = _opcode(m)
        mand = pre_op[:1] if pre_op[:1] in (b"\x66", b"\xf2", b"\xf3") else b""
        opcode = pre_op[len(mand):]
        reg = regfield if regfield is not None else 0
        for cs in code_sizes:
            for mode in MODES_BY_CODE_SIZE[cs]:
                if modes is not None and mode not in modes:
                    continue
                seen: set[tuple[str, int, str]] = set()
                for a67 in (False, True):
                    asz = ({16: 32, 32: 16, 64: 32}[cs]) if a67 else cs
                    shapes = _SHAPES_16 if asz == 16 else _SHAPES_32
                    for kind, make in shapes:
                        if kind == "[rip+disp32]" and cs != 64:
                            continue
                        for scale in (range(4) if "*S" in kind else (0,)):
                            k = kind.replace("*S", f"*{1 << scale}")
                            for seg in (None, *SEGMENTS):
                                prefixes = (bytes([SEG_PREFIX[seg]]) if seg else b"") + (b"\x67" if a67 else b"")
                                raw = prefixes + mand + opcode + make(reg, scale)
                                try:
                                    ins = decode(raw, cs)
                                except Exception:  # noqa: BLE001 - a shape this mode cannot encode
                                    continue
                                op = ins.operand
                                if op is None or ins.mnemonic != m or op.address_size != asz:
                                    continue
                                rseg = reported_segment(ins, policy)
                                if (k, asz, rseg) in seen:
                                    continue
                                seen.add((k, asz, rseg))
                                yield Form(m, mode, cs, asz, k, rseg, raw)
                if cs == 64 and (policy.apx) and m not in NO_REX2:
                    yield from _rex2_forms(m, mode, mand, opcode, reg, policy)


def _rex2_forms(m: str, mode: str, mand: bytes, opcode: bytes, reg: int, policy: Policy) -> Iterator[Form]:
    """APX: REX2 (D5, payload M0 R4 X4 B4 W R3 X3 B3) in place of the 0F escape, base R19 and index
    R22 (R16-R31 need the extended instruction-information field), each scale, DS/FS/GS."""
    for scale in range(4):
        for seg in (None, "fs", "gs"):
            raw = ((bytes([SEG_PREFIX[seg]]) if seg else b"") + mand + b"\xd5\xb0" + opcode[1:]
                   + bytes([0x84 | reg << 3, scale << 6 | 6 << 3 | 3]) + bytes(4))
            ins = decode(raw, 64)
            if ins.mnemonic != m or ins.operand is None:
                continue
            yield Form(m, mode, 64, 64, f"[r19+r22*{1 << scale}+disp32]", reported_segment(ins, policy), raw)


# -- the symbolic inputs -------------------------------------------------------------------------

REG_NAMES64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEG_FIELDS = (("base", 64), ("limit", 32), ("type", 4), ("db", 1), ("unusable", 1))
FLAGS = ("cpl", "la57", "lam_sup", "lam_u48", "lam_u57")


@dataclass
class Inputs:
    """The symbolic case of a form: its instruction (displacement symbolic), state, and the z3
    variables by name."""

    instruction: Instruction
    state: CpuState
    variables: dict[str, z3.BitVecRef]


def symbolic(form: Form, rename: dict[str, str] | None = None) -> Inputs:
    """The form's inputs as solver variables: registers, displacement, segment fields, CPL, LA57,
    LAM. `rename` maps an input to the z3 variable that stands for it (vmxaddr.prove.groups: a form
    through ES built with the variables of the one through DS)."""
    ins = form.instruction()
    op = ins.operand
    vs: dict[str, z3.BitVecRef] = {}
    rn = rename or {}

    def v(name: str, bits: int, signed: bool = False) -> Sym:
        s = var(rn.get(name, name), bits, signed)
        vs[name] = z3.BitVec(rn.get(name, name), bits)
        return s

    base = CpuState.for_code_size(form.code_size)
    regs = tuple(v(n, 64) for n in REG_NAMES64)
    egprs = tuple(v(f"r{n}", 64) for n in range(16, 32)) if ins.rex2 else base.egprs
    segs: dict[str, Segment] = {}
    for sname in SEGMENTS:
        d = {f: v(f"{sname}.{f}", bits) for f, bits in SEG_FIELDS}
        old = base.segment(sname)
        if sname == "cs":  # D/B (and L) say which mode this is: fixed with the mode
            d["db"] = old.db
        segs[sname] = replace(old, **d)
    st = replace(base, mode=form.mode, cpl=v("cpl", 2), la57=v("la57", 1), lam_sup=v("lam_sup", 1),
                 lam_u48=v("lam_u48", 1), lam_u57=v("lam_u57", 1), regs=regs, egprs=egprs, **segs)
    if op is not None and op.rip_relative:
        st = replace(st, rip=v("rip", 64))
    if op is not None and op.disp_size:
        ins = ins._replace(operand=op._replace(displacement=v("disp", op.disp_size * 8, signed=True)))
    return Inputs(ins, st, vs)


DEFAULTS: dict[str, int] = {"cpl": 0, "la57": 0, "lam_sup": 0, "lam_u48": 0, "lam_u57": 0, "rip": 0, "disp": 0,
                            **{n: 0 for n in REG_NAMES64}, **{f"r{n}": 0 for n in range(16, 32)}}
for _s in SEGMENTS:
    _d = CpuState().segment(_s)
    DEFAULTS.update({f"{_s}.base": _d.base, f"{_s}.limit": _d.limit, f"{_s}.type": _d.type,
                     f"{_s}.db": _d.db, f"{_s}.unusable": int(_d.unusable)})


def concrete(form: Form, values: dict[str, int]) -> tuple[bytes, CpuState]:
    """The witness a model of the solver gives: the instruction bytes and the CPU state."""
    ins = form.instruction()
    op = ins.operand
    raw = bytearray(form.raw)
    if op is not None and op.disp_size:
        raw[op.disp_offset:op.disp_offset + op.disp_size] = (values.get("disp", 0) & ((1 << (8 * op.disp_size)) - 1)
                                                              ).to_bytes(op.disp_size, "little")
    base = CpuState.for_code_size(form.code_size)
    segs = {}
    for sname in SEGMENTS:
        d: dict[str, Any] = {f: values.get(f"{sname}.{f}", DEFAULTS[f"{sname}.{f}"]) for f, _ in SEG_FIELDS}
        d["unusable"] = bool(d["unusable"])
        if sname == "cs":
            d["db"] = base.cs.db
        segs[sname] = replace(base.segment(sname), **d)
    st = replace(base, mode=form.mode, cpl=values.get("cpl", 0), la57=bool(values.get("la57", 0)),
                 lam_sup=bool(values.get("lam_sup", 0)), lam_u48=bool(values.get("lam_u48", 0)),
                 lam_u57=bool(values.get("lam_u57", 0)), regs=tuple(values.get(n, 0) for n in REG_NAMES64),
                 egprs=tuple(values.get(f"r{n}", 0) for n in range(16, 32)),
                 rip=values.get("rip", base.rip), **segs)
    return bytes(raw), st


def form_of(instruction: Instruction, mode: str, policy: Policy = DEFAULT_POLICY) -> Form:
    """The form of one concrete instruction (e.g. a fuzzer's witness): its exact bytes, with the
    displacement, registers and the rest symbolic as in every form."""
    op = instruction.operand
    return Form(instruction.mnemonic, mode, instruction.code_size, op.address_size if op else 0,
                "as encoded" if op else "register", reported_segment(instruction, policy) if op else None,
                instruction.raw)
