"""The extended (64-bit) VM-exit instruction-information field of Intel APX, and its inverse.

With APX's extended GPRs (R16–R31) a register number needs 5 bits, which the 32-bit field's
4-bit Reg1/Reg2/IndexReg/BaseReg cannot hold. A processor that enumerates APX
(CPUID.(EAX=07H,ECX=1):EDX[21]) also writes a 64-bit field, "extended instruction information"
(VMCS encoding 0x2406, 0x2407 for its high half in 32-bit access), on the exits that write
instruction information. Sources (read, not copied):

  * the APX architecture specification (Intel 784266), as quoted on the kvm list: the field
    "is always available" on an APX processor, and "A non-Intel APX enabled VMM is free to
    continue using the legacy definition of the field, since lack of Intel APX enabling will
    guarantee that regIDs are only 4-bits, maximum"; Intel's hardware architects confirmed that
    the CPUID enumeration alone makes the field present and usable, whatever XCR0 holds
    (Chang S. Bae, 2025-11-13, on "[PATCH RFC v1 …] KVM: nVMX: Support the extended
    instruction info field").
  * the bit layout, from KVM's posted series "KVM: x86: Enable APX for guests" v2
    (20260112235408.168200-1-chang.seok.bae@intel.com), patch 04/16 `struct ext_insn_info`;
    identical in the RFC (2025-11) and v1 (2025-12). The specification's own table was not
    in any source we could read. The positions are declared once, in
    vmxaddr.layouts.EXTENDED_POSITIONS; each 32-bit field moves there with its conditions
    (vmxaddr.layouts.EXTENDED), register numbers widened to 5 bits. docs/apx.md draws it.

The 32-bit field's instruction identity (bits 29:28 of the LGDT and LLDT layouts) has no place in
this layout: a consumer reads it from the 32-bit field, which the processor still writes.
"""

from __future__ import annotations

from typing import Any

from vmxaddr import layouts
from vmxaddr.isa import REG64, SEGMENTS, SPECS, XMM, Layout
from vmxaddr.layouts import EXTENDED, EXTENDED_POSITIONS, InfoField

VMCS_EXTENDED_INSTRUCTION_INFO = 0x2406
CPUID_APX = "CPUID.(EAX=07H,ECX=1):EDX[21]"
MASK64 = (1 << 64) - 1

# Positions, from the one table (vmxaddr.layouts.EXTENDED_POSITIONS).
_POS = {f.name: f for f in EXTENDED_POSITIONS if f.kind != "reserved"}
X_SCALING = _POS["scaling"].mask
X_ASZ = _POS["address size"].mask
X_MEMREG = _POS["mem/reg"].mask
X_OPSIZE = _POS["operand size"].mask
X_SEG = _POS["segment"].mask
X_INDEX_INV = _POS["index invalid"].mask
X_BASE_INV = _POS["base invalid"].mask
X_REG1 = _POS["reg1"].mask
X_INDEX = _POS["index"].mask
X_BASE = _POS["base"].mask
X_REG2 = _POS["reg2"].mask
_ASZ_LO, _OPSIZE_LO, _SEG_LO = _POS["address size"].lo, _POS["operand size"].lo, _POS["segment"].lo
_REG1_LO, _INDEX_LO, _BASE_LO, _REG2_LO = _POS["reg1"].lo, _POS["index"].lo, _POS["base"].lo, _POS["reg2"].lo
_OPSIZE_CODE = {16: 0, 32: 1, 64: 2}
_HAS_REG2 = frozenset(n for n, lay in EXTENDED.items() if layouts.field(lay, "reg2").kind != "undefined")
_DEFINED: dict[tuple[str, int, bool, bool], int] = {}


def _defined(layout: str, x: int, code_size: int, instruction: str) -> int:
    key = (layout, x & (X_MEMREG | X_INDEX_INV | X_BASE_INV), code_size == 64, instruction == "ins")
    mask = _DEFINED.get(key)
    if mask is None:
        mask = _DEFINED[key] = layouts.defined_mask(EXTENDED[layout], x, code_size, instruction)
    return mask


# the address-size codes of the one table (as vmxaddr.exitinfo.ASZ_CODE; kept here so that this
# module stays below exitinfo, which writes the extended field through it)
_ASZ_CODE = {int(s[:2]): n for n, s in enumerate(layouts.ADDRESS_SIZES)}


def encode_extended(instr: Any) -> tuple[int, int]:
    """(extended field with undefined bits zero, mask of the bits this layout defines) for a
    decoded vmxaddr.instruction.Instruction, built from the same facts as the 32-bit field;
    where each goes and when it is defined: vmxaddr.layouts.EXTENDED."""
    layout = instr.spec.layout
    op = instr.operand
    if layout is Layout.RDRAND:
        x = (instr.reg1 or 0) << _REG1_LO | _OPSIZE_CODE[instr.operand_size or 32] << _OPSIZE_LO
    elif layout is Layout.REG or layout is Layout.LOADIWKEY:
        x = (instr.reg1 or 0) << _REG1_LO | (instr.reg2 or 0) << _REG2_LO
    elif layout is Layout.IO:
        assert op is not None
        x = _ASZ_CODE[op.address_size] << _ASZ_LO | SEGMENTS.index(op.segment) << _SEG_LO
    else:
        if op is not None:
            x = _ASZ_CODE[op.address_size] << _ASZ_LO | SEGMENTS.index(op.segment) << _SEG_LO
            x |= X_INDEX_INV if op.index is None else (op.scale.bit_length() - 1) | op.index << _INDEX_LO
            x |= X_BASE_INV if op.base is None else op.base << _BASE_LO
        else:
            x = X_MEMREG | (instr.reg1 or 0) << _REG1_LO
        if layout in _HAS_REG2:
            x |= (instr.reg2 or 0) << _REG2_LO
        elif layout is Layout.DT and instr.code_size != 64:
            x |= (instr.operand_size == 32) << _OPSIZE_LO
    return x, _defined(layout, x, instr.code_size, instr.mnemonic)


def operand_bits_extended(x: int) -> tuple[int, int, int, int | None, int | None]:
    """(scaling, address-size code, segment number, index or None, base or None) read from the
    extended field — the same tuple vmxaddr.exitinfo.operand_bits reads from the 32-bit one."""
    return (x & X_SCALING, (x & X_ASZ) >> _ASZ_LO, (x & X_SEG) >> _SEG_LO,
            None if x & X_INDEX_INV else (x & X_INDEX) >> _INDEX_LO,
            None if x & X_BASE_INV else (x & X_BASE) >> _BASE_LO)


def fields_extended(x: int, instruction: str, code_size: int | None = None) -> list[InfoField]:
    """The extended field as labelled bit fields, most significant first; `defined` is False
    where the layout leaves the bits undefined or reserved (vmxaddr.layouts.EXTENDED)."""
    layout = SPECS[instruction].layout
    names = {"gpr": REG64, "xmm": XMM}
    return layouts.read(EXTENDED[layout], x, instruction, code_size, names)
