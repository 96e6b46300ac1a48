"""Expand-down data segments at the edges of their valid range: moving either boundary by one
byte breaks a case here.

SDM Vol. 3A §5.3 (Limit Checking): for an expand-down data segment (type bit 2, E = 1; §3.4.5.1)
the valid offsets run from limit + 1 to 0xFFFFFFFF when the B flag (db) is 1, to 0xFFFF when it
is 0; an access any byte of which lies outside raises #GP(0), or #SS(0) for SS (§6.15, "Stack
Fault Exception"). Outside 64-bit mode only; in 64-bit mode no limit is checked (§5.3.1).

VMPTRLD reads the 8-byte VMCS pointer (Vol. 3C §31.3, VMPTRLD: "m64"), so an access at offset
EA covers EA … EA + 7. Type 7 = data, read/write, expand-down, accessed. DS base 0x10000:
linear = (0x10000 + EA) mod 2^32.
"""

from __future__ import annotations

import pytest

from vmxaddr.case import Case
from vmxaddr.decode import parse_hex
from vmxaddr.models import sdm
from vmxaddr.state import CpuState

BASE = 0x10000


def run(hex_: str, code: int, seg: str, reg: str, value: int, limit: int, db: int, base: int = BASE):
    st = CpuState.for_code_size(code).with_segment(seg, type=7, limit=limit, db=db, base=base).with_reg(reg, value)
    r = Case.from_bytes(parse_hex(hex_), st).run(sdm)
    o = r.outcome
    return ("ok", r.linear_address) if o.kind == "ok" else (f"#{o.vector}({o.error_code})", None)


# VMPTRLD [EAX] (0F C7 30), 32-bit code, DS
@pytest.mark.parametrize("eax,limit,db,want", [
    (0x1000, 0xFFF, 1, ("ok", BASE + 0x1000)),         # limit + 1: the first valid offset
    (0x0FFF, 0xFFF, 1, ("#GP(0)", None)),              # the limit itself is below the segment
    (0xFFFFFFF8, 0xFFF, 1, ("ok", 0xFFF8)),            # last byte 0xFFFFFFFF: the top, B = 1
    (0xFFFFFFF9, 0xFFF, 1, ("#GP(0)", None)),          # last byte 0x100000000: past the top
    (0xFFF8, 0xFFF, 0, ("ok", BASE + 0xFFF8)),         # last byte 0xFFFF: the top, B = 0
    (0xFFF9, 0xFFF, 0, ("#GP(0)", None)),              # last byte 0x10000: past the top, B = 0
    (0x10000, 0xFFF, 0, ("#GP(0)", None)),             # above 0xFFFF with B = 0
    (0x00000001, 0, 1, ("ok", BASE + 1)),              # limit 0: offsets 1 … 0xFFFFFFFF
    (0x00000000, 0, 1, ("#GP(0)", None)),
    (0xFFFFFFF8, 0xFFFFFFF7, 1, ("ok", 0xFFF8)),       # only 8 valid bytes, exactly the access
    (0xFFFFFFF7, 0xFFFFFFF7, 1, ("#GP(0)", None)),
])
def test_ds_expand_down_edges(eax: int, limit: int, db: int, want: tuple[str, int | None]) -> None:
    assert run("0fc730", 32, "ds", "eax", eax, limit, db) == want


# VMPTRLD [EBP+0] (0F C7 75 00), 32-bit code: SS, so #SS(0)
@pytest.mark.parametrize("ebp,want", [(0x1000, ("ok", BASE + 0x1000)), (0xFFF, ("#SS(0)", None)),
                                      (0xFFFFFFF8, ("ok", 0xFFF8)), (0xFFFFFFF9, ("#SS(0)", None))])
def test_ss_expand_down_edges(ebp: int, want: tuple[str, int | None]) -> None:
    assert run("0fc77500", 32, "ss", "ebp", ebp, 0xFFF, 1) == want


# VMPTRLD [BX] (0F C7 37) in 16-bit code: the 16-bit effective address never exceeds 0xFFFF
@pytest.mark.parametrize("bx,want", [(0xFFF8, ("ok", BASE + 0xFFF8)), (0xFFF9, ("#GP(0)", None)),
                                     (0x100, ("ok", BASE + 0x100)), (0xFF, ("#GP(0)", None))])
def test_16bit_code_expand_down_edges(bx: int, want: tuple[str, int | None]) -> None:
    assert run("0fc737", 16, "ds", "bx", bx, 0xFF, 0) == want


def test_64bit_mode_checks_no_limit() -> None:
    # VMPTRLD [RAX] in 64-bit mode, RAX below the expand-down limit: no fault, and the DS base
    # does not count in 64-bit mode (§3.4.4): linear = RAX.
    assert run("0fc730", 64, "ds", "rax", 0x10, 0xFFF, 1) == ("ok", 0x10)
