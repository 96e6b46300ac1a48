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
    in any source we could read; every bit position below is the series', see docs/apx.md.

    bits   field                 same meaning as in the 32-bit field
    1:0    scaling               bits 1:0
    3:2    address size          bits 9:7 (0 = 16, 1 = 32, 2 = 64-bit)
    4      mem/reg               bit 10
    6:5    operand size          bit 11 (LGDT group) / bits 12:11 (RDRAND, RDSEED)
    9:7    segment               bits 17:15
    10     index invalid         bit 22
    11     base invalid          bit 27
    15:12  reserved
    20:16  reg1 (5 bits)         bits 6:3
    23:21  reserved
    28:24  index (5 bits)        bits 21:18
    31:29  reserved
    36:32  base (5 bits)         bits 26:23
    39:37  reserved
    44:40  reg2 (5 bits)         bits 31:28
    63:45  reserved

The 32-bit field's instruction identity (bits 29:28 of the LGDT and LLDT layouts) has no place in
this layout: a consumer reads it from the 32-bit field, which the processor still writes.
"""

from __future__ import annotations

from typing import Any

from vmxaddr.isa import SEGMENTS, SPECS, Layout

VMCS_EXTENDED_INSTRUCTION_INFO = 0x2406
CPUID_APX = "CPUID.(EAX=07H,ECX=1):EDX[21]"

X_SCALING = 0x3
X_ASZ = 0x3 << 2
X_MEMREG = 1 << 4
X_OPSIZE = 0x3 << 5
X_SEG = 0x7 << 7
X_INDEX_INV = 1 << 10
X_BASE_INV = 1 << 11
X_REG1 = 0x1F << 16
X_INDEX = 0x1F << 24
X_BASE = 0x1F << 32
X_REG2 = 0x1F << 40
MASK64 = (1 << 64) - 1

# The layouts whose 32-bit field names general registers (what the extended field adds to).
# INS/OUTS name none, LOADIWKEY names XMM registers (4 bits suffice): their extended field
# carries the same fields at the extended positions.
_OPSIZE_CODE = {16: 0, 32: 1, 64: 2}


def encode_extended(instr: Any) -> tuple[int, int]:
    """(extended field with undefined bits zero, mask of the bits this layout defines) for a
    decoded vmxaddr.instruction.Instruction, built from the same facts as the 32-bit field."""
    from vmxaddr.exitinfo import ASZ_CODE, reported_segment

    layout = instr.spec.layout
    op = instr.operand
    x = 0
    defined = 0
    if layout is Layout.RDRAND:
        x = (instr.reg1 or 0) << 16 | _OPSIZE_CODE[instr.operand_size or 32] << 5
        return x, X_REG1 | X_OPSIZE
    if layout is Layout.REG or layout is Layout.LOADIWKEY:
        x = (instr.reg1 or 0) << 16
        defined = X_REG1
        if layout is Layout.LOADIWKEY:
            x |= (instr.reg2 or 0) << 40
            defined |= X_REG2
        return x, defined
    if layout is Layout.IO:
        assert op is not None
        x = ASZ_CODE[op.address_size] << 2 | SEGMENTS.index(op.segment) << 7
        defined = X_ASZ | (X_SEG if instr.mnemonic == "outs" else 0)
        return x, defined
    defined = X_MEMREG
    if op is not None:
        x |= ASZ_CODE[op.address_size] << 2 | SEGMENTS.index(reported_segment(instr)) << 7
        defined |= X_ASZ | X_SEG | X_INDEX_INV | X_BASE_INV
        if op.index is None:
            x |= X_INDEX_INV
        else:
            x |= (op.scale.bit_length() - 1) | op.index << 24
            defined |= X_SCALING | X_INDEX
        if op.base is None:
            x |= X_BASE_INV
        else:
            x |= op.base << 32
            defined |= X_BASE
    else:
        x |= X_MEMREG | (instr.reg1 or 0) << 16
        defined |= X_REG1
    if layout is Layout.VMREAD or layout is Layout.INV:
        x |= (instr.reg2 or 0) << 40
        defined |= X_REG2
    elif layout is Layout.DT and instr.code_size != 64:
        x |= (instr.operand_size == 32) << 5
        defined |= X_OPSIZE
    return x, defined


def operand_bits_extended(x: int) -> tuple[int, int, int, int | None, int | None]:
    """(scaling, address-size code, segment number, index or None, base or None) read from the
    extended field — the same tuple vmxaddr.exitinfo.operand_bits reads from the 32-bit one."""
    return (x & 3, x >> 2 & 3, x >> 7 & 7, None if x & X_INDEX_INV else x >> 24 & 0x1F,
            None if x & X_BASE_INV else x >> 32 & 0x1F)


def fields_extended(x: int, instruction: str) -> list[Any]:
    """The extended field as labelled bit fields (vmxaddr.exitinfo.InfoField), most significant
    first; `defined` is False where the layout leaves the bits undefined or reserved."""
    from vmxaddr.exitinfo import InfoField
    from vmxaddr.isa import REG64, XMM

    layout = SPECS[instruction].layout
    out: list[InfoField] = []

    def add(name: str, hi: int, lo: int, meaning: str | None = None, defined: bool = True) -> None:
        v = (x >> lo) & ((1 << (hi - lo + 1)) - 1)
        out.append(InfoField(name, hi, lo, v, meaning if meaning is not None else str(v), defined))

    regs = XMM if layout is Layout.LOADIWKEY else REG64
    reg_only = layout in (Layout.RDRAND, Layout.REG, Layout.LOADIWKEY)
    has_memreg = layout in (Layout.VMREAD, Layout.LDT)
    is_reg = reg_only or (has_memreg and bool(x & X_MEMREG))
    mem = not is_reg and layout is not Layout.IO
    idx_inv, base_inv = bool(x & X_INDEX_INV), bool(x & X_BASE_INV)
    add("scaling", 1, 0, f"x{1 << (x & 3)}", mem and not idx_inv)
    asz = {0: "16-bit", 1: "32-bit", 2: "64-bit"}.get(x >> 2 & 3, "not used")
    add("address size", 3, 2, asz, not is_reg)
    add("mem/reg", 4, 4, "register" if x & X_MEMREG else "memory", has_memreg or (mem and not reg_only))
    opsize_defined = layout is Layout.RDRAND or (layout is Layout.DT and (x >> 2 & 3) != 2)
    add("operand size", 6, 5, {0: "16-bit", 1: "32-bit", 2: "64-bit"}.get(x >> 5 & 3, "not used"), opsize_defined)
    seg = x >> 7 & 7
    add("segment", 9, 7, SEGMENTS[seg] if seg < 6 else "not used",
        mem or (layout is Layout.IO and instruction == "outs"))
    add("index invalid", 10, 10, "invalid" if idx_inv else "valid", mem)
    add("base invalid", 11, 11, "invalid" if base_inv else "valid", mem)
    add("reserved", 15, 12, "", False)
    reg1 = x >> 16 & 0x1F
    add("reg1", 20, 16, regs[reg1] if reg1 < len(regs) else f"#{reg1}", is_reg)
    add("reserved", 23, 21, "", False)
    add("index", 28, 24, REG64[x >> 24 & 0x1F], mem and not idx_inv)
    add("reserved", 31, 29, "", False)
    add("base", 36, 32, REG64[x >> 32 & 0x1F], mem and not base_inv)
    add("reserved", 39, 37, "", False)
    reg2 = x >> 40 & 0x1F
    add("reg2", 44, 40, regs[reg2] if reg2 < len(regs) else f"#{reg2}",
        layout in (Layout.VMREAD, Layout.INV, Layout.LOADIWKEY))
    add("reserved", 63, 45, "", False)
    return out[::-1]
