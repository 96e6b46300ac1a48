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

from vmxaddr import layouts
from vmxaddr.apx import encode_extended, fields_extended
from vmxaddr.decode import Instruction
from vmxaddr.io_exit import guest_linear_address, io_qualification
from vmxaddr.isa import EXIT_REASONS, REG64, SEGMENTS, SPECS, XMM, Layout
from vmxaddr.layouts import InfoField

__all__ = ["InfoField", "ExitInfo", "Policy", "encode", "encode_info", "fields", "fields_json", "operand_bits"]

MASK64 = (1 << 64) - 1
ASZ_CODE = {int(s[:2]): n for n, s in enumerate(layouts.ADDRESS_SIZES)}  # 16-bit -> 0 ...
ASZ_BITS = {n: bits for bits, n in ASZ_CODE.items()}

EXIT_QUAL_POLICIES = ("sign-extend", "zero-extend", "random-upper")
UNDEFINED_BITS_POLICIES = ("zero", "random")
IGNORED_SEGMENT_POLICIES = ("default", "prefix")
SI_DI_POLICIES = ("base", "index")

# Positions, from the one table (vmxaddr.layouts); `shared` fails at import if a layout disagrees.
_INFO = layouts.INSTRUCTION_INFO
F_SCALING = layouts.shared("scaling").mask
F_ASZ = layouts.shared("address size").mask
F_MEMREG = layouts.shared("mem/reg").mask
assert layouts.shared("cleared to 0").mask == F_MEMREG
F_SEG = layouts.shared("segment").mask
F_INDEX = layouts.shared("index").mask
F_INDEX_INV = layouts.shared("index invalid").mask
F_BASE = layouts.shared("base").mask
F_BASE_INV = layouts.shared("base invalid").mask
F_REG1 = layouts.shared("reg1").mask
F_REG2 = layouts.shared("reg2").mask
F_IDENTITY = layouts.shared("identity").mask
F_DT_OPSIZE = layouts.field(_INFO["dt"], "operand size").mask
F_RDRAND_OPSIZE = layouts.field(_INFO["rdrand"], "operand size").mask
F_RDRAND_REG = layouts.field(_INFO["rdrand"], "reg").mask
_ASZ_LO = layouts.shared("address size").lo
_SEG_LO = layouts.shared("segment").lo
_INDEX_LO = layouts.shared("index").lo
_BASE_LO = layouts.shared("base").lo
_REG1_LO = layouts.shared("reg1").lo
_REG2_LO = layouts.shared("reg2").lo
_IDENTITY_LO = layouts.shared("identity").lo
IDENTITY_MASK = F_IDENTITY >> _IDENTITY_LO
_DT_OPSIZE_LO = layouts.field(_INFO["dt"], "operand size").lo
_RDRAND_OPSIZE_LO = layouts.field(_INFO["rdrand"], "operand size").lo
_RDRAND_REG_LO = layouts.field(_INFO["rdrand"], "reg").lo
# Dicts and sets keyed by the Layout members themselves: a lookup with a member in a dict of
# plain strings, or `Layout.X` (a class attribute of an Enum), costs several times more.
_HAS_REG2 = frozenset(Layout(n) for n, lay in _INFO.items() if any(f.name == "reg2" for f in lay.fields))
_HAS_IDENTITY = frozenset(Layout(n) for n, lay in _INFO.items() if any(f.name == "identity" for f in lay.fields))
_RDRAND, _REG, _LOADIWKEY, _DT = Layout.RDRAND, Layout.REG, Layout.LOADIWKEY, Layout.DT

# The defined mask of a value, by layout: it depends only on the bits the conditions read
# (10, 22, 27), the mode (64-bit or not) and whether the instruction is INS; memoised on those.
_COND_BITS = {Layout(n): layouts.condition_bits(lay) for n, lay in _INFO.items()}
_DEFINED: dict[Layout, dict[int, int]] = {Layout(n): {} for n in _INFO}


def defined_bits(layout: Layout, info: int, code_size: int, instruction: str) -> int:
    """The bits of `info` the SDM defines for `instruction` exiting from `code_size`-bit code."""
    key = info & _COND_BITS[layout] | (code_size == 64) << 32 | (instruction == "ins") << 33
    mask = _DEFINED[layout].get(key)
    if mask is None:
        mask = _DEFINED[layout][key] = layouts.defined_mask(_INFO[layout], info, code_size, instruction)
    return mask


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
        """The basic exit reason of the instruction (SDM Vol. 3D Appendix C)."""
        return EXIT_REASONS[self.instruction]

    def to_json(self) -> dict[str, Any]:
        """The exit information as JSON (the extended APX field and the I/O guest-linear address only when reported)."""
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
    """The segment the instruction-information field reports: the effective one, or (policy
    "prefix") an ignored 64-bit-mode CS/DS/ES/SS prefix."""
    op = instr.operand
    assert op is not None
    if (policy.ignored_segment == "prefix" and instr.code_size == 64 and op.segment_prefix
            and op.segment not in ("fs", "gs")):
        return op.segment_prefix
    return op.segment


def encode_info(instr: Instruction, policy: Policy = DEFAULT_POLICY) -> tuple[int, int]:
    """(instruction_info with undefined bits zero, mask of the bits the SDM defines). What goes
    into each field is decided here; where it goes, and when it is defined, by vmxaddr.layouts."""
    layout = instr.spec.layout
    op = instr.operand
    if layout is _RDRAND:
        # R16-R31 do not fit the 4-bit fields: the low 4 bits are written (vmxaddr.apx; the
        # extended field holds the full number).
        info = (instr.reg1 or 0) % 16 << _RDRAND_REG_LO | ASZ_CODE[instr.operand_size or 32] << _RDRAND_OPSIZE_LO
    elif layout is _REG:  # TPAUSE, UMWAIT, RDMSR/WRMSRNS imm: Reg1 only
        info = (instr.reg1 or 0) % 16 << _REG1_LO
    elif layout is _LOADIWKEY:  # Reg1 = xmm1 (ModRM.reg), Reg2 = xmm2 (ModRM.rm)
        info = (instr.reg1 or 0) << _REG1_LO | (instr.reg2 or 0) << _REG2_LO
    elif layout is _IO:
        # The segment is undefined for INS (the table says so); INS's own segment, ES, is written.
        assert op is not None
        seg = reported_segment(instr, policy) if instr.mnemonic == "outs" else op.segment
        info = ASZ_CODE[op.address_size] << _ASZ_LO | SEGMENTS.index(seg) << _SEG_LO
    else:
        if op is not None:
            base, index, scale = op.base, op.index, op.scale
            if base is not None:
                base %= 16
            if index is not None:
                index %= 16
            if op.address_size == 16 and policy.si_di == "index" and index is None and base in (6, 7):
                base, index, scale = None, base, 1
            info = ASZ_CODE[op.address_size] << _ASZ_LO | SEGMENTS.index(reported_segment(instr, policy)) << _SEG_LO
            info |= F_INDEX_INV if index is None else (scale.bit_length() - 1) | index << _INDEX_LO
            info |= F_BASE_INV if base is None else base << _BASE_LO
        else:  # a register operand (VMREAD/VMWRITE, the LLDT group): mem/reg = 1, Reg1
            info = F_MEMREG | (instr.reg1 or 0) % 16 << _REG1_LO
        if layout in _HAS_REG2:
            info |= (instr.reg2 or 0) % 16 << _REG2_LO
        elif layout in _HAS_IDENTITY:
            info |= (instr.spec.identity or 0) << _IDENTITY_LO
            if layout is _DT and instr.code_size != 64:
                info |= (instr.operand_size == 32) << _DT_OPSIZE_LO
    code_size = instr.code_size
    key = info & _COND_BITS[layout] | (code_size == 64) << 32 | (instr.mnemonic == "ins") << 33
    defined = _DEFINED[layout].get(key)
    if defined is None:
        defined = defined_bits(layout, info, code_size, instr.mnemonic)
    return info, defined


def identity_of(info: int) -> int:
    """The instruction identity of the LGDT and LLDT layouts (bits 29:28)."""
    return info >> _IDENTITY_LO & IDENTITY_MASK


def address_size_of(info: int) -> int:
    """The address size the field reports (16, 32, 64; larger for the unused codes)."""
    return 16 << ((info & F_ASZ) >> _ASZ_LO)


def defined_mask(instr: Instruction, policy: Policy = DEFAULT_POLICY) -> int:
    """The instruction-information bits the SDM defines for this instruction and operand (the rest are undefined)."""
    return encode_info(instr, policy)[1]


def exit_qualification(instr: Instruction, rip: int = 0, policy: Policy = DEFAULT_POLICY,
                       rng: random.Random | None = None, port: int = 0) -> int:
    """The exit qualification the processor reports: the displacement (RIP-relative: plus the next
    instruction's address), its bits above the address size as the policy says (undefined, SDM
    Vol. 3C §28.2.1); the MSR index of an immediate form; the I/O qualification of INS/OUTS."""
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
        ext, xdefined = encode_extended(instr)
        if policy.undefined_bits == "random":
            assert rng is not None
            ext |= rng.getrandbits(64) & ~xdefined & ((1 << 64) - 1)
    port, gla = 0, None
    if state is not None and instr.spec.layout is Layout.IO:
        port, gla = state.regs[2] & 0xFFFF, guest_linear_address(instr, state)
    return ExitInfo(instr.mnemonic, info, exit_qualification(instr, rip, policy, rng, port), instr.length, ext, gla)


# -- the inverse: instruction_info -> named fields -----------------------------------------------

def fields(info: int, instruction: str, code_size: int | None = None) -> list[InfoField]:
    """The instruction-information field of `instruction`'s layout (vmxaddr.layouts), as labelled
    bit fields, most significant first. `defined` is False where the SDM says the bits are
    undefined for this value of the field (e.g. the index register when bit 22 is set) or for an
    exit from `code_size`-bit code (the LGDT group's operand size from 64-bit mode; with the mode
    not given, such a field counts as undefined)."""
    return layouts.read(_INFO[SPECS[instruction].layout], info, instruction, code_size, _NAMES)


_NAMES = {"gpr": REG64, "xmm": XMM}


def fields_json(info: int, instruction: str, code_size: int | None = None) -> dict[str, Any]:
    """The defined fields of an instruction-information value by name, as JSON (for --json and traces)."""
    return {f.name: f.value for f in fields(info, instruction, code_size) if f.defined}


def exit_fields_json(exit: ExitInfo, code_size: int | None) -> dict[str, Any]:
    """The exit's fields for `--json` and the site: {"instruction_info_fields": [...]} (and
    "extended_info_fields" with APX), each field {"name", "bits", "value", "meaning",
    "defined"}, most significant first, as `fields` reads them for an exit from `code_size`."""
    def rows(fs: list[InfoField]) -> list[dict[str, Any]]:
        return [{"name": f.name, "bits": f"{f.hi}:{f.lo}" if f.hi != f.lo else str(f.lo), "value": f.value,
                 "meaning": f.meaning, "defined": f.defined} for f in fs]

    out = {"instruction_info_fields": rows(fields(exit.instruction_info, exit.instruction, code_size))}
    if exit.extended_info is not None:
        out["extended_info_fields"] = rows(fields_extended(exit.extended_info, exit.instruction, code_size))
    return out


# -- the memory-operand fields, read once per value ----------------------------------------------

OperandBits = tuple[int, int, int, int | None, int | None]
_OPERAND_BITS: dict[int, OperandBits] = {}


def operand_bits(info: int) -> OperandBits:
    """(scaling, address-size code, segment number, index register or None, base register or
    None) — the memory-operand fields of vmxaddr.layouts (bits 1:0, 9:7, 17:15, 21:18 unless
    bit 22 is set, 26:23 unless bit 27 is set), the raw values, unchecked. Memoised: a fuzzing run reads a few thousand distinct
    values millions of times, and models read them with `_OPERAND_BITS.get(info) or
    operand_bits(info)` (a tuple is never empty)."""
    bits = _OPERAND_BITS.get(info)
    if bits is None:
        if len(_OPERAND_BITS) >= 1 << 16:  # random undefined bits make the values many
            _OPERAND_BITS.clear()
        bits = _OPERAND_BITS[info] = (info & F_SCALING, (info & F_ASZ) >> _ASZ_LO, (info & F_SEG) >> _SEG_LO,
                                      None if info & F_INDEX_INV else (info & F_INDEX) >> _INDEX_LO,
                                      None if info & F_BASE_INV else (info & F_BASE) >> _BASE_LO)
    return bits
