"""Decoding the instructions with an instruction-information field outside the VMX opcode family:
INS/OUTS (string I/O, an implicit memory operand), TPAUSE/UMWAIT and LOADIWKEY (register only).

Called by vmxaddr.decode once the prefixes (and a REX or REX2 prefix) are read; each function
gets the bytes, the index of the opcode byte (after 0F / 0F 38 where there is one) and what the
prefixes said, and returns a finished Instruction.

INS/OUTS (SDM Vol. 2 "INS/INSB/INSW/INSD", "OUTS/OUTSB/OUTSW/OUTSD"; Vol. 1 "String
Instructions"): 6C INSB, 6D INSW/INSD, 6E OUTSB, 6F OUTSW/OUTSD. The memory operand is implicit:
INS writes ES:[rDI] (ES cannot be overridden), OUTS reads DS:[rSI] (a segment prefix overrides
DS; in 64-bit mode only an FS/GS prefix takes effect). rDI/rSI is DI/SI, EDI/ESI or RDI/RSI by the
address size (67h flips it). The element is a byte (6C/6E) or, for 6D/6F, a word with 66h and a
doubleword otherwise — REX.W does not make it 8 bytes (there is no 64-bit port I/O). F3 (REP)
and F2 both repeat these instructions; RFLAGS.DF decides whether rSI/rDI move up or down after
each element, so the first element's address — the one the guest-linear-address field reports
— does not depend on DF.

TPAUSE (66 0F AE /6) and UMWAIT (F2 0F AE /6), mod = 11 only (SDM Vol. 2 TPAUSE, UMWAIT: "The
Mod field of the ModR/M byte must have value 11B"): one 32-bit register operand, ModRM.rm.
F3 0F AE /6 mod = 11 is UMONITOR; the memory forms of 0F AE /6 are XSAVEOPT/CLWB.

LOADIWKEY (F3 0F 38 DC, mod = 11 only; SDM Vol. 2 LOADIWKEY "11:rrr:bbb"): xmm1 = ModRM.reg,
xmm2 = ModRM.rm (with REX.R/REX.B), plus the implicit EAX and XMM0.
"""

from __future__ import annotations

from vmxaddr.capstone_guard import _capstone_guard
from vmxaddr.instruction import SEGMENT_PREFIX, DecodeError, Instruction, MemoryOperand, segment_override
from vmxaddr.isa import RDI, RSI, SPECS

MAX_LENGTH = 15

# Forms already checked against capstone: (code size, prefixes with every segment override as
# 3E, opcode bytes). The prefixes decide address size, operand size and REP; the segment
# override changes none of what the guard compares (length, base, index).
_GUARDED: set[tuple[int, bytes, bytes]] = set()


def _guard(raw: bytes, code_size: int, opcode_at: int, instr: Instruction) -> None:
    key = (code_size, bytes(0x3E if b in SEGMENT_PREFIX else b for b in raw[:opcode_at]), raw[opcode_at:])
    if key not in _GUARDED:
        _capstone_guard(raw, code_size, instr)
        if len(_GUARDED) >= 1 << 12:
            _GUARDED.clear()
        _GUARDED.add(key)


def ins_outs(data: bytes, code_size: int, i: int, pfx: tuple[int, ...], rex: int, rex2: int) -> Instruction:
    """INS or OUTS with its opcode at data[i]. `rex2` is Instruction.rex2's value (0: none)."""
    op = data[i]
    length = i + 1
    if length > MAX_LENGTH:
        raise DecodeError("too-long", f"instruction would be {length} bytes; the limit is 15 (#GP)")
    mnemonic = "ins" if op in (0x6C, 0x6D) else "outs"
    if 0xF0 in pfx:
        raise DecodeError("lock", f"LOCK prefix on {mnemonic.upper()} raises #UD")
    spec = SPECS[mnemonic]
    if op & 1:
        # 66h selects a word, unless REX.W (or REX2.W) asks for 64 bits, which INS/OUTS turn into
        # a doubleword (iced-x86 agrees: 66 48 6D is INSD).
        element = 2 if (0x66 in pfx) != (code_size == 16) and not (rex | rex2) & 8 else 4
    else:
        element = 1
    asize = {16: 32, 32: 16, 64: 32}[code_size] if 0x67 in pfx else code_size
    seg_prefix, eff = segment_override(pfx, code_size)
    if mnemonic == "ins":
        segment, base, access = "es", RDI, "write"  # ES:[rDI], no override (SDM Vol. 2 INS)
    else:
        segment, base, access = eff or "ds", RSI, "read"
    operand = MemoryOperand(segment, seg_prefix, base, None, 1, 0, 0, length, asize, False, element, access)
    raw = data[:length]
    instr = Instruction(mnemonic, code_size, length, raw, pfx, rex, operand, None, None, element * 8, spec, rex2)
    if not rex2:
        _guard(raw, code_size, i, instr)
    return instr


def waitpkg(data: bytes, code_size: int, i: int, pfx: tuple[int, ...], mp: int | None, rex: int, rex_b: int,
            rex2: int) -> Instruction:
    """0F AE with its ModRM at data[i]: TPAUSE (66) or UMWAIT (F2), /6 with mod = 11."""
    if i >= len(data):
        raise DecodeError("truncated", f"bytes run out after {len(data)} byte(s): the instruction is incomplete")
    modrm = data[i]
    mod, reg, rm = modrm >> 6, modrm >> 3 & 7, modrm & 7
    if reg != 6 or mod != 3 or mp not in (0x66, 0xF2):
        what = {0xF3: "UMONITOR" if mod == 3 and reg == 6 else "not a VMX-family instruction"}.get(mp or 0, "")
        raise DecodeError("not-vmx", f"0F AE /{reg} (mod {mod}, {mp and f'{mp:02X}' or 'no'} prefix) is "
                          f"{what or 'not TPAUSE/UMWAIT'} (TPAUSE is 66 0F AE /6, UMWAIT F2 0F AE /6, mod = 11)")
    mnemonic = "tpause" if mp == 0x66 else "umwait"
    if 0xF0 in pfx:
        raise DecodeError("lock", f"LOCK prefix on {mnemonic.upper()} raises #UD")
    length = i + 1
    if length > MAX_LENGTH:
        raise DecodeError("too-long", f"instruction would be {length} bytes; the limit is 15 (#GP)")
    raw = data[:length]
    instr = Instruction(mnemonic, code_size, length, raw, pfx, rex, None, rm | rex_b, None, 32, SPECS[mnemonic], rex2)
    if not rex2:
        _guard(raw, code_size, i - 2, instr)
    return instr


def loadiwkey(data: bytes, code_size: int, i: int, pfx: tuple[int, ...], mp: int | None, rex: int) -> Instruction:
    """F3 0F 38 DC with its ModRM at data[i]. Capstone 5 cannot decode LOADIWKEY (known: see
    docs/known-decoder-issues.md); the iced-x86 oracle checks it instead."""
    if i >= len(data):
        raise DecodeError("truncated", f"bytes run out after {len(data)} byte(s): the instruction is incomplete")
    if mp != 0xF3:
        raise DecodeError("not-vmx", f"0F 38 DC with {mp and f'{mp:02X}' or 'no'} prefix is AESENC, not LOADIWKEY "
                          "(F3 0F 38 DC)")
    modrm = data[i]
    if modrm >> 6 != 3:
        raise DecodeError("register-form", f"LOADIWKEY takes two XMM registers; ModRM {modrm:02x} names memory (#UD)")
    if 0xF0 in pfx:
        raise DecodeError("lock", "LOCK prefix on LOADIWKEY raises #UD")
    length = i + 1
    if length > MAX_LENGTH:
        raise DecodeError("too-long", f"instruction would be {length} bytes; the limit is 15 (#GP)")
    # XMM8-15 need REX.R/REX.B, which exist only in 64-bit mode (rex is 0 elsewhere).
    reg1 = (modrm >> 3 & 7) | (rex & 4) << 1  # xmm1: ModRM.reg
    reg2 = (modrm & 7) | (rex & 1) << 3  # xmm2: ModRM.rm
    return Instruction("loadiwkey", code_size, length, data[:length], pfx, rex, None, reg1, reg2, None,
                       SPECS["loadiwkey"])


def msr_imm(data: bytes, i: int, pfx: tuple[int, ...], rex: int) -> Instruction:
    """RDMSR r64, imm32 / WRMSRNS imm32, r64 with their three-byte VEX prefix (C4) at data[i],
    64-bit mode (SDM Vol. 2 RDMSR, WRMSRNS: VEX.128.F2.M7.W0 F6 /0 id, VEX.128.F3.M7.W0 F6 /0 id).
    VEX's second byte: R-bar X-bar B-bar mmmmm; third: W vvvv-bar L pp (pp 11 = F2, 10 = F3)."""
    if len(data) < i + 9:
        raise DecodeError("truncated", f"bytes run out after {len(data)} byte(s): the instruction is incomplete")
    b1, b2, op, modrm = data[i + 1], data[i + 2], data[i + 3], data[i + 4]
    # map 7, vvvv unused (stored inverted: 1111), L = 0 (128), pp = F3 (10) or F2 (11), opcode F6
    if b1 & 0x1F != 7 or b2 >> 3 & 0xF != 0xF or b2 & 4 or b2 & 3 not in (2, 3) or op != 0xF6:
        raise DecodeError("not-vmx", f"VEX {data[i:i + 4].hex(' ')} is not RDMSR/WRMSRNS with an immediate "
                          "(VEX.128.F2/F3.M7.W0 F6 /0)")
    if b2 & 0x80:
        raise DecodeError("not-vmx", "VEX.W1 F6 in map 7 is not RDMSR/WRMSRNS (W0 required)")
    if modrm >> 3 != 0x18:  # mod 11, reg 000
        raise DecodeError("register-form", f"RDMSR/WRMSRNS immediate needs ModRM 11 000 rrr; {modrm:02x} (#UD)")
    if rex or any(p in (0x66, 0xF2, 0xF3, 0xF0) for p in pfx):
        raise DecodeError("prefix", "a 66/F2/F3/LOCK or REX prefix before VEX raises #UD")
    mnemonic = "rdmsr" if b2 & 3 == 3 else "wrmsrns"
    reg = (modrm & 7) | (0 if b1 & 0x20 else 8)  # VEX.B is stored inverted
    length = i + 9
    imm = int.from_bytes(data[i + 5:i + 9], "little")
    return Instruction(mnemonic, 64, length, data[:length], pfx, 0, None, reg, None, 64, SPECS[mnemonic], 0, imm)


def clear_memo() -> None:
    """Forget which encodings were already checked against capstone (tests that change the guard call it)."""
    _GUARDED.clear()
