"""Encoders: what writes the VM-exit instruction information and exit qualification.

An encoder is a pure function

    encoder(instr: Instruction, rip: int, policy: Policy) -> ExitInfo

of the decoded instruction, the address of the instruction (RIP at the time of the exit, before
it completes) and a `Policy` for what the SDM leaves open. It plays the processor: the hypervisor
above it (a consumer model, vmxaddr.models) sees only the ExitInfo it produces.

  sdm        the SDM's processor (vmxaddr.exitinfo.encode); the Policy chooses the undefined parts
  bochs-2.7  Bochs 2.7 acting as the processor (its VMX emulation)
  vbox-iem   VirtualBox's IEM acting as the processor for a nested guest it emulates

The emulator encoders are deterministic implementations: they ignore the Policy, because the
program they model makes those choices itself. Each one's docstring names the source read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmxaddr.decode import Instruction
from vmxaddr.exitinfo import (
    ASZ_CODE,
    DEFAULT_POLICY,
    F_INDEX_INV,
    F_MEMREG,
    MASK64,
    ExitInfo,
    Policy,
    encode,
    encode_info,
)
from vmxaddr.io_exit import io_qualification
from vmxaddr.isa import SEGMENTS, SPECS, Layout

Encoder = Callable[[Instruction, int, Policy], ExitInfo]


@dataclass(frozen=True)
class EncoderInfo:
    """A registered encoder: its name, the function that writes the exit information, and a one-line summary."""
    name: str
    function: Encoder
    summary: str


ENCODERS: dict[str, EncoderInfo] = {}


def register_encoder(name: str, function: Encoder, summary: str) -> None:
    """Add an encoder to ENCODERS under `name` (the registry lists it as kind "encoder")."""
    ENCODERS[name] = EncoderInfo(name, function, summary)


class UnknownEncoder(LookupError):
    """An encoder name that ENCODERS does not hold."""
    pass


def get_encoder(name: str) -> Encoder:
    """The encoder function registered as `name`; UnknownEncoder with the list of names otherwise."""
    if name in ENCODERS:
        return ENCODERS[name].function
    raise UnknownEncoder(f"unknown encoder {name!r}; `vmxaddr models` lists them ({', '.join(ENCODERS)})")


def _sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return (value - (1 << bits) if value >> (bits - 1) else value) & MASK64


def _modrm_offset(instr: Instruction) -> int:
    """Where the ModRM byte is: after the legacy/REX prefixes and the 0F (38) opcode bytes."""
    raw = instr.raw
    i = 0
    while raw[i] != 0x0F:  # prefixes (legacy and REX) never include 0F
        i += 1
    i += 2  # 0F and the opcode byte
    if raw[i - 1] == 0x38:
        i += 1
    return i


# -- the SDM's processor ---------------------------------------------------------------------------

def sdm_encoder(instr: Instruction, rip: int = 0, policy: Policy = DEFAULT_POLICY) -> ExitInfo:
    """SDM Vol. 3C 'Information for VM Exits Due to Instruction Execution' and 'Exit Qualification
    for VM Exits Due to Instruction Execution' (vmxaddr.exitinfo.encode)."""
    return encode(instr, rip, policy)


# -- Bochs 2.7 -------------------------------------------------------------------------------------

_BOCHS_POLICY = Policy(exit_qual="zero-extend", undefined_bits="zero", ignored_segment="default", si_di="base")


def bochs_2_7(instr: Instruction, rip: int = 0, policy: Policy = DEFAULT_POLICY) -> ExitInfo:
    """Bochs 2.7 (Debian 2.7+dfsg-4) as the processor: bochs/cpu/vmexit.cc gen_instruction_info()
    and VMexit_Instruction(), read at bochs-emu/Bochs 3f65841714 (the 2.7-era file, with the 2021
    reg1/reg2 fix and the address-size mask), and cross-checked against what Debian's bochs 2.7
    was observed to write (docs/known-oracle-issues.md, the Bochs oracle of issue 8).

    Where it differs from the SDM encoder (defined bits):
      * RDRAND/RDSEED operand size (bits 12:11) comes from the address size: outside 64-bit mode
        16 or 32 by the address size (67h flips it, 66h is ignored); in 64-bit mode 64 with
        REX.W, else 32.
      * LGDT/LIDT/SGDT/SIDT: the operand-size bit 11 is never set.
      * the exit qualification is the displacement masked to the address size outside 64-bit
        mode, and sign-extended to 64 bits in 64-bit mode even under 67h (a RIP-relative operand
        adds the next RIP as a 64-bit sum) — the upper bits are undefined in the SDM either way.
    Choices in what the SDM leaves open (the SDM encoder's default policy makes the same ones):
    16-bit [SI]/[DI] reported as base; an ignored 64-bit-mode CS/DS/ES/SS prefix reported as the
    default segment. Undefined bits it writes: bit 10 = 1 for RDRAND/RDSEED; bit 31 = REX.R for
    the descriptor-table groups in 64-bit mode (ModRM.reg with REX.R lands in bits 31:28).
    Not modelled: the stale exit qualification of some 64-bit register forms (it depends on
    Bochs's instruction cache, not on the instruction).
    """
    layout = instr.spec.layout
    if layout is Layout.IO:
        return _bochs_ins_outs(instr)
    if instr.rex2 or instr.mnemonic not in BOCHS_MNEMONICS:
        raise EncoderScope(f"bochs-2.7 does not implement {instr.mnemonic.upper()}"
                           + (" with REX2 (APX)" if instr.rex2 else "") + " (see docs/known-oracle-issues.md)")
    info, _ = encode_info(instr, _BOCHS_POLICY)
    if layout is Layout.RDRAND:
        if instr.code_size == 64:
            code = 2 if instr.rex & 8 else 1
        else:
            asz = {16: 32, 32: 16}[instr.code_size] if 0x67 in instr.prefixes else instr.code_size
            code = ASZ_CODE[asz]
        info = (info & ~(3 << 11)) | code << 11 | F_MEMREG
    if layout is Layout.DT:
        info &= ~(1 << 11)
    if layout in (Layout.DT, Layout.LDT) and instr.code_size == 64 and instr.rex & 4:
        info |= 1 << 31
    op = instr.operand
    qual = 0
    if op is not None:
        if instr.code_size == 64:
            qual = op.displacement & MASK64
            if op.rip_relative:
                qual = (qual + rip + instr.length) & MASK64
        else:
            qual = op.displacement & ((1 << op.address_size) - 1)
    return ExitInfo(instr.mnemonic, info & 0xFFFFFFFF, qual, instr.length)


def _bochs_ins_outs(instr: Instruction) -> ExitInfo:
    """Bochs's VMexit_IO() for INS/OUTS (bochs/cpu/vmexit.cc, read in a 2.7-era copy): the
    qualification as the SDM's table (size - 1, IN, string, REP, port from DX: 0 here, the encoder
    sees no registers); instruction information = the instruction's segment << 15 and the address
    size in bits 9:7. For INS that segment is Bochs's decoded segment — DS, or the override prefix
    (in 64-bit mode only FS/GS survive its decoder) — not ES: bits 17:15 are undefined for INS, so
    this is a choice, not a deviation. The guest-linear address needs the registers: not here
    (vmxaddr.oracles.bochs_io compares it)."""
    op = instr.operand
    assert op is not None
    seg = op.segment
    if instr.mnemonic == "ins":
        seg = "ds"
        for p in instr.prefixes:
            s = SEGMENT_OVERRIDE.get(p)
            if s is not None and (instr.code_size != 64 or s in ("fs", "gs")):
                seg = s
    info = SEGMENTS.index(seg) << 15 | ASZ_CODE[op.address_size] << 7
    return ExitInfo(instr.mnemonic, info, io_qualification(instr, 0), instr.length)


SEGMENT_OVERRIDE = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}


class EncoderScope(ValueError):
    """An emulator encoder asked for an instruction the emulator does not implement (Bochs 2.7 and
    VirtualBox's IEM predate APX; neither models TPAUSE/UMWAIT/LOADIWKEY exits here)."""


# -- VirtualBox IEM --------------------------------------------------------------------------------

# VMXINSTRID_MODRM_PRIMARY_OP_W (include/VBox/vmm/hm_vmx.h): set on the IDs of SGDT, SIDT, SLDT,
# STR, VMWRITE, RDRAND, RDSEED; not on VMREAD, LGDT, LIDT, LLDT, LTR; VMXON passes VMXINSTRID_NONE.
_VBOX_PRIMARY_W = frozenset(("sgdt", "sidt", "sldt", "str", "vmwrite", "rdrand", "rdseed"))
_VBOX_RM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (None, 6), (None, 7), (5, None), (3, None))  # (base, index)


def _vbox_opsize(instr: Instruction) -> int:
    """IEM's effective operand size (bits 12:11 of every form; defined only for the DT layout
    outside 64-bit mode, where it is right, and for RDRAND/RDSEED)."""
    if instr.code_size == 64:
        if instr.rex & 8:
            return 2
        if instr.mnemonic in ("vmread", "vmwrite") or instr.spec.layout is Layout.DT:
            return 2  # these default to (or force) a 64-bit operand size in 64-bit mode
        return 0 if 0x66 in instr.prefixes else 1
    size = instr.code_size
    if 0x66 in instr.prefixes:
        size = 48 - size  # 66h flips 16 <-> 32
    return ASZ_CODE[size]


def vbox_iem(instr: Instruction, rip: int = 0, policy: Policy = DEFAULT_POLICY) -> ExitInfo:
    """VirtualBox's IEM as the processor of a nested guest it emulates:
    src/VBox/VMM/VMMAll/IEMAllCImplVmxInstr.cpp iemVmxGetExitInstrInfo(), read at
    VirtualBox/virtualbox 4908d8d1a8 (svn r106320, 2024-10-15); VMXINSTRID_* from
    include/VBox/vmm/hm_vmx.h. Read, not run. Applies when IEM raises the exit itself; when the
    exit came from the hardware, VirtualBox passes the hardware's information through.

    It re-parses ModRM/SIB/displacement from the opcode bytes. Apparent bugs, as the code reads:
      * memory form: the index field (bits 21:18) is written a second time with "base not
        valid" (0 or 1) where the base-invalid bit 27 was meant, and bit 27 is never set. So a
        SIB operand with an index reports RAX (or RCX) as its index, and an operand without a
        base ([disp32], [index*s+disp32], 16-bit [SI]/[DI]/[disp16], RIP-relative) reports base
        register field 0 or its r/m bits as a valid base.
      * the "primary operand written" flag is set for VMWRITE but not for VMREAD, so the VMREAD
        register form has reg1/reg2 swapped (reg1 = ModRM.reg, reg2 = r/m), and so does the
        LLDT/LTR register form's reg1; in the memory form reg2 of VMREAD (and of INVEPT/INVVPID/
        INVPCID if, like VMXON, they pass VMXINSTRID_NONE) is the r/m bits, not ModRM.reg.
      * 32-bit addressing in 64-bit mode (67h) is parsed as in 32-bit code: REX.B and REX.X are
        dropped (and REX.R from reg2), and [disp32] with mod=00 r/m=101 is not EIP-relative.
      * RIP-relative: the exit qualification is the RIP of the instruction itself + disp (IEM
        advances RIP only when the instruction completes), not the next RIP.
      * the displacement is sign-extended to 64 bits for every address size (upper bits are
        undefined in the SDM).
      * 16-bit [SI]/[DI] are reported as index (with no base), then mangled as above.
    RDRAND/RDSEED come out as the SDM says (reg1, operand size, undefined bits cleared).
    The segment field (bits 17:15) is IEM's effective segment, `iEffSeg`. IEM's segment-prefix
    handlers (iemOp_seg_ES … iemOp_seg_GS, IEMAllInstOneByte.cpp.h) set it unconditionally, in
    64-bit mode too, so a CS/DS/ES/SS prefix that the processor ignores there is reported as the
    prefix's segment (the last one, if several): whatever --ignored-segment says, the Policy is
    not consulted. (The address IEM computes is the same: those bases count as 0 in 64-bit mode;
    a consumer that picks #SS or #GP by the reported segment picks differently.)
    """
    if instr.rex2 or instr.mnemonic not in VBOX_MNEMONICS:
        raise EncoderScope(f"vbox-iem is not modelled for {instr.mnemonic.upper()}"
                           + (" with REX2 (APX)" if instr.rex2 else ""))
    raw = instr.raw
    m = _modrm_offset(instr)
    modrm = raw[m]
    mod, reg, rm = modrm >> 6, modrm >> 3 & 7, modrm & 7
    rex_r, rex_x, rex_b = (instr.rex & 4) << 1, (instr.rex & 2) << 2, (instr.rex & 1) << 3
    primary_w = instr.mnemonic in _VBOX_PRIMARY_W
    opsize = _vbox_opsize(instr)
    layout = instr.spec.layout
    if mod == 3:
        asz = instr.code_size if 0x67 not in instr.prefixes else {16: 32, 32: 16, 64: 32}[instr.code_size]
        if primary_w:
            reg1, reg2 = rm | rex_b, reg | rex_r
        else:
            reg1, reg2 = reg | rex_r, rm | rex_b
        info = reg1 << 3 | ASZ_CODE[asz] << 7 | F_MEMREG | opsize << 11 | F_INDEX_INV | 1 << 27 | reg2 << 28
        qual = 0
    else:
        op = instr.operand
        assert op is not None
        asz = op.address_size
        scale = 0
        base_valid = index_valid = False
        base = index = 0
        rip_relative = False
        d = m + 1  # where the displacement (or SIB) starts

        def disp(size: int, at: int) -> int:
            return int.from_bytes(raw[at:at + size], "little", signed=True)

        if asz == 16:
            if mod == 0 and rm == 6:
                value = disp(2, d)
            else:
                b, x = _VBOX_RM16[rm]
                base_valid, base = b is not None, b or 0
                index_valid, index = x is not None, x or 0
                value = (0, disp(1, d), disp(2, d))[mod]
        elif asz == 32:
            if mod == 0 and rm == 5:
                value = disp(4, d)
            else:
                # No REX here, even in 64-bit mode under 67h. Note: without a SIB byte the
                # base is never marked valid (only the SIB path sets it).
                base = rm
                value = 0
                if rm == 4:
                    sib = raw[d]
                    d += 1
                    scale, index, base = sib >> 6, sib >> 3 & 7, sib & 7
                    index_valid = index != 4
                    base_valid = True
                    if base == 5 and mod == 0:
                        base_valid = False
                        value = disp(4, d)
                if mod:
                    value = (0, disp(1, d), disp(4, d))[mod]
        else:
            if mod == 0 and rm == 5:
                rip_relative = True
                value = disp(4, d)
            else:
                base = rm
                value = 0
                if rm == 4:
                    sib = raw[d]
                    d += 1
                    scale, index, base = sib >> 6, (sib >> 3 & 7) | rex_x, sib & 7
                    index_valid = index != 4
                    base_valid = True
                    if base == 5:
                        if mod == 0:
                            value = disp(4, d)
                        else:
                            base = 13 if rex_b else 5
                base |= rex_b
                if mod:
                    value = (0, disp(1, d), disp(4, d))[mod]
        qual = value & MASK64
        if rip_relative:
            qual = (rip + value) & MASK64  # the current RIP, not the next
        if primary_w:
            reg2 = reg | (rex_r if asz == 64 else 0)
        else:
            reg2 = rm | (rex_b if asz == 64 else 0)
        segment = SEGMENTS.index(_vbox_segment(instr))
        info = (scale | ASZ_CODE[asz] << 7 | opsize << 11 | segment << 15
                | (0 if base_valid else 1) << 18  # the index field, overwritten with !base-valid
                | (0 if index_valid else 1) << 22
                | (base & 15) << 23  # bit 27 (base invalid) is never written
                | reg2 << 28)
    if layout in (Layout.DT, Layout.LDT):
        info = (info & 0x0FFFFFFF) | (instr.spec.identity or 0) << 28
    elif layout is Layout.RDRAND:
        info &= 0x1878  # keep reg1 (6:3) and the operand size (12:11); the rest is cleared
    return ExitInfo(instr.mnemonic, info & 0xFFFFFFFF, qual, instr.length)


def _vbox_segment(instr: Instruction) -> str:
    """IEM's iEffSeg: the last segment prefix if there is one (in every mode), else the default."""
    op = instr.operand
    assert op is not None
    return op.segment_prefix or op.segment


# What each emulator encoder covers (the fuzzer and cross-checks keep to these; none takes REX2).
VBOX_MNEMONICS = frozenset(m for m in SPECS if SPECS[m].layout not in (Layout.IO, Layout.REG, Layout.LOADIWKEY))
BOCHS_MNEMONICS = VBOX_MNEMONICS | {"ins", "outs"}
bochs_2_7.mnemonics = BOCHS_MNEMONICS  # type: ignore[attr-defined]
vbox_iem.mnemonics = VBOX_MNEMONICS  # type: ignore[attr-defined]

register_encoder("sdm", sdm_encoder, "the SDM's processor (vmxaddr.exitinfo.encode; --exit-qual etc. choose what the SDM leaves open)")
register_encoder("bochs-2.7", bochs_2_7, "Bochs 2.7's VMX emulation (vmexit.cc): RDRAND size from the address size, "
                 "LGDT-group size bit never set, qualification masked/sign-extended")
register_encoder("vbox-iem", vbox_iem, "VirtualBox IEM (iemVmxGetExitInstrInfo, 2024-10): index field overwritten, "
                 "base never invalid, VMREAD regs swapped, REX dropped under 67h, RIP-relative from the current RIP")
