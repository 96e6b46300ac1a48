"""The VM-exit information a processor reports for a VMX-family instruction, and its inverse.

Encoding follows SDM Vol. 3C §28.2.5 (instruction-information layouts, one table per layout)
and §28.2.1 (exit qualification: the displacement, sign-extended to 64 bits, or displacement +
next RIP for RIP-relative operands; "in all cases, bits of this field beyond the instruction's
address size are undefined").  What the SDM leaves open is a named policy (`Policy`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, NamedTuple

from vmxaddr.decode import Instruction
from vmxaddr.isa import EXIT_REASONS, SEGMENTS, SPECS, Layout

MASK64 = (1 << 64) - 1
ASZ_CODE = {16: 0, 32: 1, 64: 2}
ASZ_BITS = {0: 16, 1: 32, 2: 64}

EXIT_QUAL_POLICIES = ("sign-extend", "zero-extend", "random-upper")
UNDEFINED_BITS_POLICIES = ("zero", "random")
IGNORED_SEGMENT_POLICIES = ("default", "prefix")
SI_DI_POLICIES = ("base", "index")

# Bit ranges of the common memory-operand fields.
F_SCALING = 0x3
F_ASZ = 0x7 << 7
F_MEMREG = 1 << 10
F_SEG = 0x7 << 15
F_INDEX = 0xF << 18
F_INDEX_INV = 1 << 22
F_BASE = 0xF << 23
F_BASE_INV = 1 << 27
F_REG1 = 0xF << 3
F_REG2 = 0xF << 28
F_IDENTITY = 0x3 << 28
F_DT_OPSIZE = 1 << 11
F_RDRAND_OPSIZE = 0x3 << 11


@dataclass(frozen=True, slots=True)
class Policy:
    """How a processor fills what the SDM leaves open.

    exit_qual: bits of the exit qualification above the address size — "sign-extend" (the SDM's
      words), "zero-extend" (observed on hardware: -0x28 reported as 0xffffffd8 for a 32-bit
      address size, KVM 946c522b), "random-upper" (fuzzing).
    undefined_bits: undefined instruction-information bits — "zero" or "random".
    ignored_segment: the segment field for a 64-bit-mode CS/DS/ES/SS override, which has no
      effect — "default" (report the default segment, as Bochs does) or "prefix" (report the
      prefix's segment, as iced-x86's decoding suggests).
    si_di: 16-bit [SI]/[DI] operands reported as "base" (Bochs) or "index" (VirtualBox).
    seed: for the random policies; the randomness is a function of (seed, instruction bytes).
    apx: the processor enumerates APX (CPUID.(EAX=07H,ECX=1):EDX[21]) and so writes the extended
      64-bit instruction-information field (VMCS 0x2406, vmxaddr.apx) besides the 32-bit one.
      A REX2-encoded instruction implies it (REX2 is #UD without APX enabled).
    """

    exit_qual: str = "zero-extend"
    undefined_bits: str = "zero"
    ignored_segment: str = "default"
    si_di: str = "base"
    seed: int = 0
    apx: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("exit_qual", EXIT_QUAL_POLICIES), ("undefined_bits", UNDEFINED_BITS_POLICIES),
                              ("ignored_segment", IGNORED_SEGMENT_POLICIES), ("si_di", SI_DI_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} policy must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")


DEFAULT_POLICY = Policy()
_IO = Layout.IO


class ExitInfo(NamedTuple):
    """What the hypervisor is handed: the instruction (from the exit reason, and bits 29:28 for
    the descriptor-table reasons), the instruction-information field, the exit qualification
    and the instruction length."""

    instruction: str
    instruction_info: int
    exit_qualification: int
    length: int = 0
    # APX: the extended 64-bit instruction-information field (VMCS 0x2406), None when the
    # processor does not write one (vmxaddr.apx).
    extended_info: int | None = None
    # INS/OUTS: the guest-linear-address field (VMCS 0x640A), None when not reported.
    guest_linear_address: int | None = None

    @property
    def exit_reason(self) -> int:
        return EXIT_REASONS[self.instruction]

    def to_json(self) -> dict[str, Any]:
        out = {"instruction": self.instruction, "exit_reason": self.exit_reason,
               "instruction_info": self.instruction_info, "exit_qualification": self.exit_qualification,
               "length": self.length}
        if self.extended_info is not None:
            out["extended_instruction_info"] = self.extended_info
        if self.guest_linear_address is not None:
            out["guest_linear_address"] = self.guest_linear_address
        return out


def _rng(policy: Policy, instr: Instruction) -> random.Random:
    return random.Random((policy.seed << 128) ^ int.from_bytes(instr.raw, "little") ^ instr.code_size)


def reported_segment(instr: Instruction, policy: Policy = DEFAULT_POLICY) -> str:
    op = instr.operand
    assert op is not None
    if (policy.ignored_segment == "prefix" and instr.code_size == 64 and op.segment_prefix
            and op.segment not in ("fs", "gs")):
        return op.segment_prefix
    return op.segment


def encode_info(instr: Instruction, policy: Policy = DEFAULT_POLICY) -> tuple[int, int]:
    """(instruction_info with undefined bits zero, mask of the bits the SDM defines)."""
    layout = instr.spec.layout
    info = 0
    defined = 0
    op = instr.operand
    if layout is Layout.RDRAND:
        # R16-R31 do not fit the 4-bit fields: the low 4 bits are written (vmxaddr.apx; the
        # extended field holds the full number).
        info = (instr.reg1 or 0) % 16 << 3 | {16: 0, 32: 1, 64: 2}[instr.operand_size or 32] << 11
        return info, F_REG1 | F_RDRAND_OPSIZE
    if layout is Layout.REG:  # TPAUSE, UMWAIT: Reg1 only
        return (instr.reg1 or 0) % 16 << 3, F_REG1
    if layout is Layout.LOADIWKEY:  # Reg1 = xmm1 (ModRM.reg), Reg2 = xmm2 (ModRM.rm)
        return (instr.reg1 or 0) << 3 | (instr.reg2 or 0) << 28, F_REG1 | F_REG2
    if layout is Layout.IO:
        # SDM Vol. 3C, "Format of the VM-Exit Instruction-Information Field as Used for INS and
        # OUTS": 9:7 address size, 17:15 segment ("Undefined for VM exits due to execution of
        # INS"), everything else undefined. INS's own segment is ES; that is what is written.
        assert op is not None
        seg = reported_segment(instr, policy) if instr.mnemonic == "outs" else op.segment
        info = ASZ_CODE[op.address_size] << 7 | SEGMENTS.index(seg) << 15
        return info, F_ASZ | (F_SEG if instr.mnemonic == "outs" else 0)
    if op is not None:
        base, index, scale = op.base, op.index, op.scale
        if base is not None:
            base %= 16
        if index is not None:
            index %= 16
        if op.address_size == 16 and policy.si_di == "index" and index is None and base in (6, 7):
            base, index, scale = None, base, 1
        info |= ASZ_CODE[op.address_size] << 7 | SEGMENTS.index(reported_segment(instr, policy)) << 15
        defined |= F_ASZ | F_SEG | F_INDEX_INV | F_BASE_INV
        if index is None:
            info |= F_INDEX_INV
        else:
            info |= (scale.bit_length() - 1) | index << 18
            defined |= F_SCALING | F_INDEX
        if base is None:
            info |= F_BASE_INV
        else:
            info |= base << 23
            defined |= F_BASE
    # bit 10: "cleared to 0" (VMPTR, INV, DT layouts) or mem/reg (VMREAD, LDT layouts): defined.
    defined |= F_MEMREG
    if op is None:
        info |= F_MEMREG | (instr.reg1 or 0) % 16 << 3
        defined |= F_REG1
    if layout in (Layout.VMREAD, Layout.INV):
        info |= (instr.reg2 or 0) % 16 << 28
        defined |= F_REG2
    elif layout in (Layout.DT, Layout.LDT):
        info |= (instr.spec.identity or 0) << 28
        defined |= F_IDENTITY
        if layout is Layout.DT and instr.code_size != 64:
            info |= (instr.operand_size == 32) << 11
            defined |= F_DT_OPSIZE
    return info, defined


def defined_mask(instr: Instruction, policy: Policy = DEFAULT_POLICY) -> int:
    return encode_info(instr, policy)[1]


def exit_qualification(instr: Instruction, rip: int = 0, policy: Policy = DEFAULT_POLICY,
                       rng: random.Random | None = None, port: int = 0) -> int:
    op = instr.operand
    if op is None:
        # RDMSR/WRMSRNS with an immediate: the MSR index (KVM handle_rdmsr_imm() reads it there)
        return instr.immediate if instr.immediate is not None else 0
    if op.rip_relative:
        full = (op.displacement + rip + instr.length) & MASK64
    else:
        full = op.displacement & MASK64
        # INS/OUTS (no displacement): the I/O qualification. Tested only for a zero displacement,
        # to keep the fuzzer's hot path (a memo hit, then this function) as it was.
        if not full and instr.spec.layout is _IO:
            from vmxaddr.string_io import io_qualification

            return io_qualification(instr, port)
    asz = op.address_size
    if asz == 64:
        return full
    low = full & ((1 << asz) - 1)
    if policy.exit_qual == "zero-extend":
        return low
    if policy.exit_qual == "sign-extend":
        return (low - (1 << asz) if low >> (asz - 1) else low) & MASK64
    r = rng or _rng(policy, instr)
    return low | r.getrandbits(64 - asz) << asz


def encode(instr: Instruction, rip: int = 0, policy: Policy = DEFAULT_POLICY, state: Any = None) -> ExitInfo:
    """The exit information for `instr` executed at `rip` (its own address), under `policy`.
    `state` (a CpuState), when given, supplies what INS/OUTS exits report from registers: the
    port (DX) in the exit qualification and the guest-linear address."""
    info, defined = encode_info(instr, policy)
    rng = None
    if policy.undefined_bits == "random" or policy.exit_qual == "random-upper":
        rng = _rng(policy, instr)
    if policy.undefined_bits == "random":
        assert rng is not None
        info |= rng.getrandbits(32) & ~defined & 0xFFFFFFFF
    ext = None
    if policy.apx or instr.rex2:
        from vmxaddr.apx import encode_extended

        ext, xdefined = encode_extended(instr)
        if policy.undefined_bits == "random":
            assert rng is not None
            ext |= rng.getrandbits(64) & ~xdefined & ((1 << 64) - 1)
    port, gla = 0, None
    if state is not None and instr.spec.layout is Layout.IO:
        from vmxaddr.string_io import guest_linear_address

        port, gla = state.regs[2] & 0xFFFF, guest_linear_address(instr, state)
    return ExitInfo(instr.mnemonic, info, exit_qualification(instr, rip, policy, rng, port), instr.length, ext, gla)


# -- the inverse: instruction_info -> named fields -----------------------------------------------

@dataclass(frozen=True, slots=True)
class InfoField:
    name: str
    hi: int
    lo: int
    value: int
    meaning: str
    defined: bool


def fields(info: int, instruction: str) -> list[InfoField]:
    """The instruction-information field of `instruction`'s layout, as labelled bit fields,
    most significant first. `defined` is False where the SDM says the bits are undefined for
    this value of the field (e.g. the index register when bit 22 is set)."""
    spec = SPECS[instruction]
    layout = spec.layout
    out: list[InfoField] = []

    def add(name: str, hi: int, lo: int, meaning: str | None = None, defined: bool = True) -> int:
        v = (info >> lo) & ((1 << (hi - lo + 1)) - 1)
        out.append(InfoField(name, hi, lo, v, meaning if meaning is not None else str(v), defined))
        return v

    if layout is Layout.IO:
        add("undefined", 6, 0, "", False)
        add("address size", 9, 7, {0: "16-bit", 1: "32-bit", 2: "64-bit"}.get(info >> 7 & 7, "not used"))
        add("undefined", 14, 10, "", False)
        seg = info >> 15 & 7
        add("segment", 17, 15, SEGMENTS[seg] if seg < 6 else "not used", instruction == "outs")
        add("undefined", 31, 18, "", False)
        return out[::-1]
    if layout is Layout.REG or layout is Layout.LOADIWKEY:
        from vmxaddr.isa import XMM

        names = XMM if layout is Layout.LOADIWKEY else None
        add("undefined", 2, 0, "", False)
        add("reg1", 6, 3, names[info >> 3 & 15] if names else _reg(info >> 3 & 15))
        if names:
            add("undefined", 27, 7, "", False)
            add("reg2", 31, 28, names[info >> 28 & 15])
        else:
            add("undefined", 31, 7, "", False)
        return out[::-1]
    if layout is Layout.RDRAND:
        add("undefined", 2, 0, "", False)
        add("reg", 6, 3, _reg(info >> 3 & 15))
        add("undefined", 10, 7, "", False)
        add("operand size", 12, 11, {0: "16-bit", 1: "32-bit", 2: "64-bit"}.get(info >> 11 & 3, "not used"))
        add("undefined", 31, 13, "", False)
        return out[::-1]
    has_memreg = layout in (Layout.VMREAD, Layout.LDT)
    is_reg = has_memreg and bool(info & F_MEMREG)
    mem = not is_reg
    index_inv = bool(info & F_INDEX_INV)
    base_inv = bool(info & F_BASE_INV)
    add("scaling", 1, 0, f"x{1 << (info & 3)}", mem and not index_inv)
    if layout in (Layout.VMREAD, Layout.LDT):
        add("undefined", 2, 2, "", False)
        add("reg1", 6, 3, _reg(info >> 3 & 15), is_reg)
    else:
        add("undefined", 6, 2, "", False)
    add("address size", 9, 7, {0: "16-bit", 1: "32-bit", 2: "64-bit"}.get(info >> 7 & 7, "not used"), mem)
    add("mem/reg" if has_memreg else "cleared to 0", 10, 10,
        ("register" if is_reg else "memory") if has_memreg else str(info >> 10 & 1))
    if layout is Layout.DT:
        # Undefined for exits from 64-bit mode; a 64-bit address size says the exit came from there.
        add("operand size", 11, 11, "32-bit" if info & F_DT_OPSIZE else "16-bit", (info >> 7 & 7) != 2)
        add("undefined", 14, 12, "", False)
    else:
        add("undefined", 14, 11, "", False)
    seg = info >> 15 & 7
    add("segment", 17, 15, SEGMENTS[seg] if seg < 6 else "not used", mem)
    add("index", 21, 18, _reg(info >> 18 & 15), mem and not index_inv)
    add("index invalid", 22, 22, "invalid" if index_inv else "valid", mem)
    add("base", 26, 23, _reg(info >> 23 & 15), mem and not base_inv)
    add("base invalid", 27, 27, "invalid" if base_inv else "valid", mem)
    if layout in (Layout.VMREAD, Layout.INV):
        add("reg2", 31, 28, _reg(info >> 28 & 15))
    elif layout in (Layout.DT, Layout.LDT):
        names = ("sgdt", "sidt", "lgdt", "lidt") if layout is Layout.DT else ("sldt", "str", "lldt", "ltr")
        add("identity", 29, 28, names[info >> 28 & 3])
        add("undefined", 31, 30, "", False)
    else:
        add("undefined", 31, 28, "", False)
    return out[::-1]


def _reg(n: int) -> str:
    from vmxaddr.isa import REG64

    return REG64[n]


def fields_json(info: int, instruction: str) -> dict[str, Any]:
    return {f.name: f.value for f in fields(info, instruction) if f.name != "undefined" and f.defined}


# -- the memory-operand fields, read once per value ----------------------------------------------

OperandBits = tuple[int, int, int, int | None, int | None]
_OPERAND_BITS: dict[int, OperandBits] = {}


def operand_bits(info: int) -> OperandBits:
    """(scaling, address-size code, segment number, index register or None, base register or
    None) — bits 1:0, 9:7, 17:15, 21:18 (None when bit 22 is set) and 26:23 (None when bit 27
    is set), the raw values, unchecked. Memoised: a fuzzing run reads a few thousand distinct
    values millions of times, and models read them with `_OPERAND_BITS.get(info) or
    operand_bits(info)` (a tuple is never empty)."""
    bits = _OPERAND_BITS.get(info)
    if bits is None:
        if len(_OPERAND_BITS) >= 1 << 16:  # random undefined bits make the values many
            _OPERAND_BITS.clear()
        bits = _OPERAND_BITS[info] = (info & F_SCALING, info >> 7 & 7, info >> 15 & 7,
                                      None if info & F_INDEX_INV else info >> 18 & 15,
                                      None if info & F_BASE_INV else info >> 23 & 15)
    return bits
