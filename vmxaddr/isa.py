"""The instructions vmxaddr knows: what each one is, how it exits and what it accesses.

One row per instruction that reports a VM-exit instruction-information field (SDM Vol. 3C
§28.2.5 "Information for VM Exits Due to Instruction Execution", tables "Format of the VM-Exit
Instruction-Information Field as Used for ..."; numbered 27-9 … 27-14 in older editions).
Sizes and directions come from the instructions' pages in SDM Vol. 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict


class Layout(StrEnum):
    """The instruction-information layouts (one SDM table each)."""

    VMPTR = "vmptr"  # VMCLEAR, VMPTRLD, VMPTRST, VMXON, XRSTORS, XSAVES
    VMREAD = "vmread"  # VMREAD, VMWRITE
    INV = "inv"  # INVEPT, INVPCID, INVVPID
    DT = "dt"  # LGDT, LIDT, SGDT, SIDT
    LDT = "ldt"  # LLDT, LTR, SLDT, STR
    RDRAND = "rdrand"  # RDRAND, RDSEED (register operand only)
    IO = "io"  # INS, OUTS: address size and segment of the implicit string operand
    REG = "reg"  # TPAUSE, UMWAIT: one general register (Reg1, bits 6:3)
    LOADIWKEY = "loadiwkey"  # LOADIWKEY: two XMM registers (Reg1 bits 6:3, Reg2 bits 31:28)


@dataclass(frozen=True, slots=True)
class InstrSpec:
    """What the SDM says of one instruction: exit reason, instruction-information layout, memory access and size, where it runs."""
    mnemonic: str
    exit_reason: int  # basic exit reason (SDM Vol. 3D Appendix C)
    layout: Layout
    access: str | None  # "read" / "write" of the memory operand; None when it has none
    size: int  # bytes accessed outside 64-bit mode
    size64: int  # bytes accessed in 64-bit mode
    memory: str  # "required", "optional" (r/m), "none" (register only)
    vmx: bool  # a VMX instruction: #UD outside protected/64-bit mode, CPL checked after the exit
    identity: int | None = None  # bits 29:28 of the DT and LDT layouts
    real_mode: bool = True  # may execute (and so exit) in real-address mode
    v8086: bool = True  # may execute in virtual-8086 mode
    privileged: bool = False  # CPL 0 only; checked before the VM exit (not a VMX instruction)
    # The fault where the instruction is not recognized in virtual-8086 mode (v8086=False): #UD
    # for most, #GP(0) for INVPCID (its page's "Virtual-8086 Mode Exceptions").
    v8086_fault: str = "UD"
    # The linear address must be a multiple of this (#GP(0) "regardless of segment" otherwise);
    # checked after the VM exit, so by the hypervisor (docs/ud-and-cpl.md).
    align: int = 1

    def access_size(self, code_size: int) -> int:
        """The size in bytes of the memory access in `code_size` code."""
        return self.size64 if code_size == 64 else self.size


class _Flags(TypedDict):
    vmx: bool
    real_mode: bool
    v8086: bool


_VMX: _Flags = {"vmx": True, "real_mode": False, "v8086": False}

# XSAVES/XRSTORS touch a variable-sized area; the legacy region and the XSAVE header (512 + 64
# bytes, SDM Vol. 1 §13.4) are always accessed, so that is the size checked against the limit.
SPECS: dict[str, InstrSpec] = {
    s.mnemonic: s
    for s in (
        InstrSpec("vmclear", 19, Layout.VMPTR, "read", 8, 8, "required", **_VMX),
        InstrSpec("vmptrld", 21, Layout.VMPTR, "read", 8, 8, "required", **_VMX),
        InstrSpec("vmptrst", 22, Layout.VMPTR, "write", 8, 8, "required", **_VMX),
        InstrSpec("vmxon", 27, Layout.VMPTR, "read", 8, 8, "required", **_VMX),
        # VMREAD writes its r/m destination, VMWRITE reads its r/m source: 32 bits outside
        # 64-bit mode, 64 bits in it, whatever the prefixes (SDM Vol. 3C §31.3 VMREAD/VMWRITE).
        InstrSpec("vmread", 23, Layout.VMREAD, "write", 4, 8, "optional", **_VMX),
        InstrSpec("vmwrite", 25, Layout.VMREAD, "read", 4, 8, "optional", **_VMX),
        InstrSpec("invept", 50, Layout.INV, "read", 16, 16, "required", **_VMX),
        InstrSpec("invvpid", 53, Layout.INV, "read", 16, 16, "required", **_VMX),
        # INVPCID is not a VMX instruction: valid in real mode, #GP(0) in virtual-8086 mode ("not
        # recognized"), and its CPL check comes before the VM exit (SDM Vol. 2 INVPCID).
        InstrSpec("invpcid", 58, Layout.INV, "read", 16, 16, "required", False, v8086=False,
                  privileged=True, v8086_fault="GP"),
        # Descriptor-table group: 6-byte operand (10 in 64-bit mode); exit only with
        # "descriptor-table exiting".
        InstrSpec("sgdt", 46, Layout.DT, "write", 6, 10, "required", False, identity=0),
        InstrSpec("sidt", 46, Layout.DT, "write", 6, 10, "required", False, identity=1),
        InstrSpec("lgdt", 46, Layout.DT, "read", 6, 10, "required", False, identity=2, privileged=True),
        InstrSpec("lidt", 46, Layout.DT, "read", 6, 10, "required", False, identity=3, privileged=True),
        # SLDT/STR/LLDT/LTR are #UD in real and virtual-8086 mode.
        InstrSpec("sldt", 47, Layout.LDT, "write", 2, 2, "optional", False, 0, False, False),
        InstrSpec("str", 47, Layout.LDT, "write", 2, 2, "optional", False, 1, False, False),
        InstrSpec("lldt", 47, Layout.LDT, "read", 2, 2, "optional", False, 2, False, False, True),
        InstrSpec("ltr", 47, Layout.LDT, "read", 2, 2, "optional", False, 3, False, False, True),
        # XSAVES/XRSTORS: virtual-8086 mode has "the same exceptions as in protected mode", so
        # CPL 3 > 0 gives #GP(0); the area must be 64-byte aligned (SDM Vol. 2 XSAVES, XRSTORS).
        InstrSpec("xsaves", 63, Layout.VMPTR, "write", 576, 576, "required", False, privileged=True, align=64),
        InstrSpec("xrstors", 64, Layout.VMPTR, "read", 576, 576, "required", False, privileged=True, align=64),
        InstrSpec("rdrand", 57, Layout.RDRAND, None, 0, 0, "none", False),
        InstrSpec("rdseed", 61, Layout.RDRAND, None, 0, 0, "none", False),
        # INS/OUTS exit with reason 30 ("I/O instruction", SDM Vol. 3D Appendix C) under
        # "unconditional I/O exiting" or the I/O bitmaps. The element is 1, 2 or 4 bytes (the
        # decoder sets it: 6C/6E bytes, 6D/6F words or doublewords by operand size). Valid in
        # every mode; their IOPL/TSS-bitmap check comes before the exit (SDM Vol. 3C "Relative
        # Priority of Faults and VM Exits"), the segment and limit checks after it.
        InstrSpec("ins", 30, Layout.IO, "write", 1, 1, "implicit", False),
        InstrSpec("outs", 30, Layout.IO, "read", 1, 1, "implicit", False),
        # WAITPKG (SDM Vol. 2 TPAUSE, UMWAIT: "66/F2 0F AE /6", mod = 11, any CPL and mode but
        # real and virtual-8086 mode... see decode_reg.py); basic exit reasons 67 (UMWAIT) and
        # 68 (TPAUSE), SDM Vol. 3D Appendix C.
        InstrSpec("umwait", 67, Layout.REG, None, 0, 0, "none", False),
        InstrSpec("tpause", 68, Layout.REG, None, 0, 0, "none", False),
        # Key Locker: F3 0F 38 DC /r, mod = 11; CPL 0 only (its #GP comes before the exit);
        # basic exit reason 69.
        InstrSpec("loadiwkey", 69, Layout.LOADIWKEY, None, 0, 0, "none", False, privileged=True),
        # MSR_IMM: RDMSR r64, imm32 (VEX.128.F2.M7.W0 F6 /0 id) and WRMSRNS imm32, r64
        # (VEX.128.F3.M7.W0 F6 /0 id), 64-bit mode only, CPL 0 (its #GP first). Exit reasons 84
        # and 85 (KVM EXIT_REASON_MSR_READ_IMM / _WRITE_IMM); the register in Reg1 (bits 6:3) and the
        # MSR index in the exit qualification (KVM handle_rdmsr_imm()/handle_wrmsr_imm()).
        InstrSpec("rdmsr", 84, Layout.REG, None, 0, 0, "none", False, real_mode=False, v8086=False, privileged=True),
        InstrSpec("wrmsrns", 85, Layout.REG, None, 0, 0, "none", False, real_mode=False, v8086=False,
                  privileged=True),
    )
}

EXIT_REASONS: dict[str, int] = {m: s.exit_reason for m, s in SPECS.items()}

# Register numbering of the instruction-information field (SDM tables: 0 = RAX … 15 = R15;
# the APX extended field's 5-bit numbers add 16 = R16 … 31 = R31, the APX extended GPRs).
_EGPRS = tuple(range(16, 32))
REG64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15") + tuple(f"r{n}" for n in _EGPRS)
REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
         "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d") + tuple(f"r{n}d" for n in _EGPRS)
REG16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di",
         "r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w", "r15w") + tuple(f"r{n}w" for n in _EGPRS)
XMM = tuple(f"xmm{n}" for n in range(16))

# Segment-register numbering of bits 17:15.
class SegmentName(StrEnum):
    """The six segment registers, in the order of the instruction-information field's segment
    register encoding (SDM Vol. 3C, Table 28-9: 0 = ES ... 5 = GS)."""

    ES = "es"
    CS = "cs"
    SS = "ss"
    DS = "ds"
    FS = "fs"
    GS = "gs"


# The plain strings (a str subclass is slower to hash and compare, on every model call):
SEGMENTS: tuple[str, ...] = tuple(s.value for s in SegmentName)

RSP, RBP, RSI, RDI, RBX = 4, 5, 6, 7, 3


def reg_name(number: int, size: int) -> str:
    """The name of general register `number` at `size` bits (e.g. 5, 32 -> "ebp")."""
    return {64: REG64, 32: REG32, 16: REG16}[size][number]


def reg_number(name: str) -> tuple[int, int]:
    """'ebp' -> (5, 32). Raises KeyError for an unknown name."""
    name = name.lower()
    for size, table in ((64, REG64), (32, REG32), (16, REG16)):
        if name in table:
            return table.index(name), size
    raise KeyError(name)
