"""The capstone guard: once per operand form, and it does fail when capstone reads the bytes
otherwise (vmxaddr.decode)."""

from __future__ import annotations

import sys

import pytest

from vmxaddr import capstone_guard as G
from vmxaddr import decode as D


def _form(hexbytes: str, cs: int) -> tuple:
    D._GUARDED.clear()
    D.decode_uncached(bytes.fromhex(hexbytes), cs)
    (form,) = D._GUARDED
    return form


# Same form: only register numbers that name a register, or which segment override, differ.
SAME = [
    # VMPTRLD [EAX] / [ECX] / [EDI] (ModRM 30 / 31 / 37: r/m 0, 1, 7 all "a base register")
    (("0fc730", 32), ("0fc731", 32), ("0fc737", 32)),
    # DS: and FS: overrides on VMPTRLD [EAX]: the guard compares no segment
    (("3e0fc730", 32), ("640fc730", 32)),
    # VMREAD [EAX], ECX / EDX (ModRM.reg is a register, 08 vs 10)
    (("0f7808", 32), ("0f7810", 32)),
    # REX.W / REX.R do not change the address: 48 vs 4C vs 40 before VMPTRLD [RAX]
    (("480fc730", 64), ("4c0fc730", 64), ("400fc730", 64)),
    # SIB index ECX vs EDX, base EAX vs EBX ([EAX+ECX*2] = 34 48, [EBX+EDX*2] = 34 53)
    (("0fc73448", 32), ("0fc73453", 32)),
]
# Different forms: each pair differs in a value the decoder treats specially.
DIFFERENT = [
    (("0fc730", 32), ("0fc73420", 32)),      # r/m 4: a SIB byte follows
    (("0fc73500000000", 32), ("0fc730", 32)),  # mod 0, r/m 5: disp32, no base
    (("0fc730", 32), ("0fc77000", 32)),      # mod 1: disp8
    (("0fc7344500000000", 32), ("0fc73440", 32)),  # SIB base 5 with mod 0: disp32, no base
    (("0fc73420", 32), ("0fc73408", 32)),    # SIB index 4: no index
    (("0fc73408", 32), ("0fc73448", 32)),    # scale 1 vs 2
    (("410fc730", 64), ("400fc730", 64)),    # REX.B: R8 instead of RAX
    (("420fc73408", 64), ("400fc73408", 64)),  # REX.X: R9 as index instead of RCX
    (("670fc730", 64), ("0fc730", 64)),      # 67: 32-bit addressing in 64-bit code
    (("0fc730", 16), ("0fc731", 16)),        # 16-bit addressing: every r/m is a table row
    (("0fc730", 32), ("0fc738", 32)),        # ModRM.reg 7 vs 6 selects VMPTRST vs VMPTRLD
    (("0fc730", 32), ("0fc730", 64)),        # the code size
    (("0fc730", 32), ("660fc730", 32)),      # 66 selects VMCLEAR
]


@pytest.mark.parametrize("group", SAME)
def test_one_form(group):
    forms = {_form(h, cs) for h, cs in group}
    assert len(forms) == 1


@pytest.mark.parametrize("pair", DIFFERENT)
def test_different_forms(pair):
    (a, csa), (b, csb) = pair
    assert _form(a, csa) != _form(b, csb)


def test_guard_runs_once_per_form_and_can_fail(monkeypatch):
    calls = []
    real = G._capstone_shape

    def spy(raw: bytes, cs: int):
        calls.append(raw)
        return real(raw, cs)

    monkeypatch.setattr(G, "_capstone_shape", spy)
    D._GUARDED.clear()
    D.decode_uncached(bytes.fromhex("0fc730"), 32)
    D.decode_uncached(bytes.fromhex("0fc737"), 32)  # same form: not asked again
    assert calls == [bytes.fromhex("0fc730")]

    # capstone says the base is EBX where we say EAX: a typed error, never silence
    monkeypatch.setattr(G, "_capstone_shape", lambda raw, cs: (3, "ebx", None, 1))
    D._GUARDED.clear()
    with pytest.raises(D.DecodeError) as e:
        D.decode_uncached(bytes.fromhex("0fc730"), 32)
    assert e.value.kind == "decoder-disagreement" and "base ebx vs eax" in str(e.value)
    D._GUARDED.clear()


def test_guard_is_on_where_capstone_imports():
    # capstone is a dependency: off only in the browser (Pyodide), never silently here.
    D.capstone_guard_on.cache_clear()
    assert D.capstone_guard_on()


def test_guard_off_without_capstone(monkeypatch):
    # Where capstone cannot be imported (Pyodide), vmxaddr's decoder answers alone:
    # VMREAD [EBP-0x28], EAX still decodes, and the guard is never asked.
    monkeypatch.setitem(sys.modules, "capstone", None)  # makes `import capstone` raise ImportError
    monkeypatch.setattr(D, "_capstone_shape", lambda raw, cs: pytest.fail("guard ran without capstone"))
    D.capstone_guard_on.cache_clear()
    try:
        assert not D.capstone_guard_on()
        D._GUARDED.clear()
        ins = D.decode_uncached(bytes.fromhex("0f7845d8"), 32)
        assert ins.mnemonic == "vmread" and ins.operand is not None and ins.operand.displacement == -0x28
    finally:
        D.capstone_guard_on.cache_clear()
        D._GUARDED.clear()


@pytest.mark.parametrize("hexbytes, cs, want", [
    # VMPTRLD [EAX*2+0]: SIB 45 = scale 2, index EAX, base 5 with mod 0 (no base, disp32); 8 bytes
    ("0fc7344500000000", 32, (8, None, "eax", 2)),
    # 67 in 32-bit code: 16-bit addressing, ModRM 30 = [BX+SI] (SDM Vol. 2 Table 2-1); 4 bytes
    ("670fc730", 32, (4, "bx", "si", 1)),
    # VMREAD RAX, RCX (register form: no memory operand); 3 bytes
    ("0f78c8", 64, (3, None, None, 0)),
    # SIB index 4 with scale 4 (ss = 10): capstone's "riz", which means no index; [RAX]
    ("0fc734a0", 64, (4, "rax", None, 4)),
    # not an instruction capstone decodes
    ("0f", 64, None),
])
def test_capstone_shape_read_from_capstones_structures(hexbytes, cs, want):
    """The guard's lean reading of capstone (its C structures through ctypes) gives what the
    binding's own objects give (`capstone_view`), on worked examples and on generated forms."""
    raw = bytes.fromhex(hexbytes)
    assert G._capstone_shape.__wrapped__(raw, cs) == want
    assert G._capstone_shape_by_view(raw, cs) == want


def test_capstone_shape_agrees_with_capstone_view_on_generated_forms():
    import random

    from vmxaddr.gen import ALL_MNEMONICS, RandomChooser, gen_encoding

    ch, rnd = RandomChooser(random.Random(5)), random.Random(9)
    for _ in range(3000):
        raw, cs = gen_encoding(ch, mnemonics=ALL_MNEMONICS, register_forms=0.2)
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 16)))
        for b in (raw, junk):
            assert G._capstone_shape.__wrapped__(b, cs) == G._capstone_shape_by_view(b, cs), (b.hex(), cs)
