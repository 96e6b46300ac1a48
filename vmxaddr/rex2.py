"""The APX REX2 prefix: parsed from the Intel APX architecture specification (document 784266,
"REX2 prefix"), for the VMX-family instructions.

REX2 is two bytes, 0xD5 and a payload, valid only in 64-bit mode (0xD5 is AAD outside it, #UD
in 64-bit mode without APX). The payload, most significant bit first:

    bit  7   6   5   4   3   2   1   0
         M0  R4  X4  B4  W   R3  X3  B3

  M0      selects the opcode map: 0 = legacy map 0 (one-byte opcodes), 1 = legacy map 1 (the
          0F xx opcodes, with the 0F escape byte *not* written). REX2 cannot select map 2 (0F 38)
          or map 3 (0F 3A).
  R4 R3   bits 4 and 3 of ModRM.reg's register number (REX.R is R3)
  X4 X3   bits 4 and 3 of the SIB index register number (REX.X is X3)
  B4 B3   bits 4 and 3 of ModRM.rm's / SIB base register number (REX.B is B3)
  W       as REX.W

So a register number is `(R4 << 4) | (R3 << 3) | ModRM.reg` (0…31; 16…31 are the extended GPRs
R16…R31), and likewise for index and base. The same rule is in KVM's posted emulator support
("KVM: emulate: Handle EGPR index and REX2-incompatible opcodes", v2 2026-01: bit 0 of a
REX-bit group gives +8, bit 4 gives +16).

Placement (the specification; KVM's v2 decoder agrees): REX2 is the last prefix, the opcode byte
follows it directly; legacy prefixes (66, 67, F2, F3, segment) may precede it; a REX prefix before
REX2 is #UD (KVM v2 `rex2_invalid()`), as is REX2 outside 64-bit mode (there 0xD5 is not a prefix).

Which opcodes accept it: every legacy map 0 and map 1 opcode except the rows the specification
reserves, which raise #UD with REX2: map 0 rows 4 (the REX bytes), 7 (Jcc rel8), A and E; map 1
rows 3 (WRMSR … and the 0F 38 / 0F 3A escapes) and 8 (Jcc rel32) — the same set KVM v2 marks
`NoRex2`. For the VMX family that means: VMREAD/VMWRITE (0F 78/79), the 0F C7 group (VMPTRLD,
VMPTRST, VMCLEAR, VMXON, XSAVES, XRSTORS, RDRAND, RDSEED), the 0F 01 and 0F 00 groups (LGDT …
STR), 0F AE /6 (TPAUSE, UMWAIT) and INS/OUTS (6C–6F, map 0 row 6) accept REX2; INVEPT, INVVPID,
INVPCID (66 0F 38 80–82) and LOADIWKEY (F3 0F 38 DC) are in map 2 and cannot be encoded with it.
"""

from __future__ import annotations

from typing import NamedTuple

from vmxaddr.instruction import DecodeError

REX2 = 0xD5
PRESENT = 0x100  # set in Instruction.rex2 beside the payload, so that a payload of 00 still counts

# Legacy map 0 and map 1 rows (high opcode nibble) where REX2 raises #UD (APX spec; KVM v2 NoRex2).
UD_ROWS_MAP0 = frozenset((0x4, 0x7, 0xA, 0xE))
UD_ROWS_MAP1 = frozenset((0x3, 0x8))


class Rex2(NamedTuple):
    """An APX REX2 prefix's payload taken apart: M0, W, and the R/X/B bits as the values they add to
    register numbers."""
    payload: int
    m0: int
    r: int  # R4:R3 as the value added to ModRM.reg (0, 8, 16 or 24)
    x: int  # X4:X3 likewise for the SIB index
    b: int  # B4:B3 likewise for ModRM.rm / SIB base
    w: int  # 8 when W is set, else 0 (as `rex & 8`)


def split(payload: int) -> Rex2:
    """The payload's fields, each already shifted to the value it adds to a register number."""
    return Rex2(payload, payload >> 7 & 1,
                (payload >> 2 & 1) << 3 | (payload >> 6 & 1) << 4,
                (payload >> 1 & 1) << 3 | (payload >> 5 & 1) << 4,
                (payload & 1) << 3 | (payload >> 4 & 1) << 4,
                payload & 8)


def parse(data: bytes, i: int, rex: int) -> tuple[Rex2, int]:
    """Read REX2 at data[i] (== 0xD5, 64-bit mode). Returns the fields and the index of the
    opcode byte. `rex` is the REX prefix seen just before (0 when none)."""
    if rex:
        raise DecodeError("rex2", f"a REX prefix ({rex:02x}) before REX2 raises #UD (APX: REX2 must not follow REX)")
    if i + 1 >= len(data):
        raise DecodeError("truncated", "bytes run out after the REX2 prefix byte D5: its payload byte is missing")
    return split(data[i + 1]), i + 2


def check_opcode(fields: Rex2, opcode: int) -> None:
    """#UD for the opcode rows REX2 does not support (see the module docstring)."""
    row = opcode >> 4
    if fields.m0:
        if row in UD_ROWS_MAP1:
            what = ("the 0F 38 / 0F 3A escapes (maps 2 and 3: INVEPT, INVVPID, INVPCID, LOADIWKEY)"
                    if opcode in (0x38, 0x3A) else f"map 1 row {row:X}")
            raise DecodeError("rex2", f"REX2 with 0F {opcode:02x}: {what} cannot be encoded with REX2 (#UD)")
    elif row in UD_ROWS_MAP0:
        raise DecodeError("rex2", f"REX2 with map 0 opcode {opcode:02x}: row {row:X} raises #UD with REX2")


def text(payload: int) -> str:
    """'M0=1 R4=0 X4=0 B4=1 W=0 R3=1 X3=0 B3=0', for explain and decode."""
    names = ("M0", "R4", "X4", "B4", "W", "R3", "X3", "B3")
    return " ".join(f"{n}={payload >> (7 - k) & 1}" for k, n in enumerate(names))
