"""Result.displacement: the displacement the reference model read from the exit qualification,
sign-extended from the top bit of the address size (SDM Vol. 3C §28.2.1: the exit qualification
"receives the value of the instruction's displacement field, which is sign-extended to 64 bits";
vmxaddr's models read the bits of the address size and sign-extend them, models/sdm.py), reported
as a 64-bit two's-complement value. Worked by hand
for 16-, 32- and 64-bit addressing; a model that dropped the 16-bit sign extension computed the
same 16-bit effective address (the sum wraps at 16 bits either way) and only this field showed it."""

from __future__ import annotations

import pytest

from vmxaddr.case import Case
from vmxaddr.models import sdm
from vmxaddr.state import CpuState

MASK64 = (1 << 64) - 1


@pytest.mark.parametrize("raw, code_size, reg, value, disp, ea", [
    # 16-bit: VMREAD [BP-0x28], AX = 0f 78 46 d8 (ModRM 46: mod 01, reg 000, rm 110 = [BP+disp8]);
    # BP = 0x1000: EA = 0x1000 - 0x28 = 0xfd8; displacement -0x28 = 0xffff_ffff_ffff_ffd8.
    ("0f7846d8", 16, "bp", 0x1000, -0x28, 0x0FD8),
    # 16-bit with disp16 0x8000 (-0x8000): ModRM 86 (mod 10, rm 110), BP = 0x9000: EA 0x1000.
    ("0f78860080", 16, "bp", 0x9000, -0x8000, 0x1000),
    # 16-bit positive disp16 0x7fff stays positive: BP = 0x10: EA 0x800f.
    ("0f7886ff7f", 16, "bp", 0x10, 0x7FFF, 0x800F),
    # 32-bit: VMREAD [EBP-0x28], EAX = 0f 78 45 d8; EBP = 0x1000: EA 0xfd8.
    ("0f7845d8", 32, "ebp", 0x1000, -0x28, 0x0FD8),
    # 64-bit: VMREAD [RBP-0x28], RAX = 0f 78 45 d8; RBP = 0x1000: EA 0xfd8.
    ("0f7845d8", 64, "rbp", 0x1000, -0x28, 0x0FD8),
])
def test_displacement_is_sign_extended_from_the_address_size(raw: str, code_size: int, reg: str, value: int,
                                                            disp: int, ea: int) -> None:
    st = CpuState.for_code_size(code_size).with_reg(reg, value)
    r = Case.from_bytes(bytes.fromhex(raw), st).run(sdm)
    assert r.effective_address == ea
    assert r.displacement == disp & MASK64
