"""Decoder: every instruction in every code size, the capstone 5 guards, and typed errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmxaddr.decode as decode_mod
from vmxaddr.decode import DecodeError, capstone_view, decode

# From the SDM Vol. 2/3C instruction pages: opcode, mandatory prefix, ModRM.reg, exit reason
# (Vol. 3D Appendix C), bytes accessed (outside 64-bit mode, in 64-bit mode) and direction.
TABLE = {
    "vmptrld": ("0fc7", 6, 21, 8, 8, "read"),
    "vmclear": ("660fc7", 6, 19, 8, 8, "read"),
    "vmxon": ("f30fc7", 6, 27, 8, 8, "read"),
    "vmptrst": ("0fc7", 7, 22, 8, 8, "write"),
    "vmread": ("0f78", 1, 23, 4, 8, "write"),
    "vmwrite": ("0f79", 1, 25, 4, 8, "read"),
    "invept": ("660f3880", 1, 50, 16, 16, "read"),
    "invvpid": ("660f3881", 1, 53, 16, 16, "read"),
    "invpcid": ("660f3882", 1, 58, 16, 16, "read"),
    "sgdt": ("0f01", 0, 46, 6, 10, "write"),
    "sidt": ("0f01", 1, 46, 6, 10, "write"),
    "lgdt": ("0f01", 2, 46, 6, 10, "read"),
    "lidt": ("0f01", 3, 46, 6, 10, "read"),
    "sldt": ("0f00", 0, 47, 2, 2, "write"),
    "str": ("0f00", 1, 47, 2, 2, "write"),
    "lldt": ("0f00", 2, 47, 2, 2, "read"),
    "ltr": ("0f00", 3, 47, 2, 2, "read"),
    "xsaves": ("0fc7", 5, 63, 576, 576, "write"),
    "xrstors": ("0fc7", 3, 64, 576, 576, "read"),
}


@pytest.mark.parametrize("mode", [16, 32, 64])
@pytest.mark.parametrize("mnemonic", sorted(TABLE))
def test_each_instruction_each_mode(mnemonic, mode):
    opc, reg, reason, size, size64, access = TABLE[mnemonic]
    # ModRM mod=00 rm=000 with the instruction's reg field: [BX+SI] in 16-bit addressing, [rAX] otherwise.
    ins = decode(bytes.fromhex(opc) + bytes([reg << 3]), mode)
    assert ins.mnemonic == mnemonic
    assert ins.spec.exit_reason == reason
    assert ins.length == len(opc) // 2 + 1
    op = ins.operand
    assert op.access_size == (size64 if mode == 64 else size)
    assert op.access == access
    assert op.address_size == mode
    assert op.base_name == {16: "bx", 32: "eax", 64: "rax"}[mode]
    assert op.index_name == ("si" if mode == 16 else None)
    assert op.segment == "ds"


@pytest.mark.parametrize("raw,mode,mnemonic", [
    ("0fc7f0", 32, "rdrand"), ("0fc7f8", 64, "rdseed"), ("660fc7f0", 16, "rdrand")])
def test_register_only_instructions(raw, mode, mnemonic):
    ins = decode(bytes.fromhex(raw), mode)
    assert ins.mnemonic == mnemonic and ins.operand is None and ins.reg1 == 0


def test_rdrand_operand_size():
    # 16-bit code defaults to 16-bit operands; 66h flips it; REX.W gives 64 (SDM Vol. 2 RDRAND).
    assert decode(bytes.fromhex("0fc7f0"), 16).operand_size == 16
    assert decode(bytes.fromhex("660fc7f0"), 16).operand_size == 32
    assert decode(bytes.fromhex("480fc7f0"), 64).operand_size == 64


# -- capstone 5 behaviours we guard against (docs/known-decoder-issues.md) ---------------------

def test_capstone_calls_16bit_vmclear_vmptrld():
    raw = bytes.fromhex("660fc730")
    assert capstone_view(raw, 16)["mnemonic"] == "vmptrld"  # capstone 5's mistake
    assert decode(raw, 16).mnemonic == "vmclear"             # 66 0F C7 /6 is VMCLEAR in every mode


def test_capstone_calls_16bit_vmclear_bp_vmptrld():
    raw = bytes.fromhex("660fc776f0")
    assert decode(raw, 16).mnemonic == "vmclear"
    assert decode(raw, 16).operand.segment == "ss"  # [BP-0x10] defaults to SS


def test_capstone_cannot_decode_16bit_invept():
    raw = bytes.fromhex("660f388008")
    assert capstone_view(raw, 16) is None
    ins = decode(raw, 16)
    assert ins.mnemonic == "invept" and ins.operand.base_name == "bx" and ins.operand.index_name == "si"
    assert ins.reg2 == 1  # ECX: ModRM.reg 001


def test_capstone_64bit_es_after_fs_prefix():
    # capstone #2818: reports ES; in 64-bit mode only the FS/GS override counts.
    raw = bytes.fromhex("64260fc730")
    assert decode(raw, 64).operand.segment == "fs"


def test_capstone_reports_no_default_segment():
    raw = bytes.fromhex("0fc77500")
    assert capstone_view(raw, 64)["memory"]["segment"] is None
    assert decode(raw, 64).operand.segment == "ss"


def test_displacement_is_the_raw_field():
    ins = decode(bytes.fromhex("0f7845d8"), 32)
    assert ins.operand.displacement == -0x28 and ins.operand.disp_size == 1


def test_ignored_ss_prefix_in_64bit_mode():
    op = decode(bytes.fromhex("360fc730"), 64).operand
    assert op.segment == "ds" and op.segment_prefix == "ss"


def test_last_segment_prefix_wins_outside_64bit():
    assert decode(bytes.fromhex("64260fc730"), 32).operand.segment == "es"


def test_rex_before_legacy_prefix_is_ignored():
    # 41 26 0f c7 30: the REX is not adjacent to the opcode, so it does not extend rm (SDM Vol. 2 §2.2.1)
    assert decode(bytes.fromhex("41260fc730"), 64).operand.base_name == "rax"
    assert decode(bytes.fromhex("26410fc730"), 64).operand.base_name == "r8"


@pytest.mark.parametrize("raw,mode,kind", [
    ("", 32, "empty"),
    ("0f", 32, "truncated"),
    ("0f78", 32, "truncated"),
    ("0f7845", 32, "truncated"),
    ("90", 32, "not-vmx"),
    ("0fa2", 32, "not-vmx"),
    ("f00fc730", 32, "lock"),
    ("660f78c80102", 64, "prefix"),      # EXTRQ (AMD SSE4a), not VMREAD
    ("f20f7908", 32, "prefix"),
    ("0f388008", 32, "prefix"),          # INVEPT without 66
    ("660f3880c8", 32, "register-form"),  # INVEPT with a register operand
    ("f30fc7f0", 64, "not-vmx"),         # SENDUIPI
    ("0f01c1", 32, "not-vmx"),           # VMCALL: no instruction information
    ("26" * 14 + "0fc730", 32, "too-long"),
])
def test_typed_errors(raw, mode, kind):
    with pytest.raises(DecodeError) as e:
        decode(bytes.fromhex(raw), mode)
    assert e.value.kind == kind
    assert str(e.value)


def test_bad_code_size():
    with pytest.raises(DecodeError):
        decode(b"\x0f\xc7\x30", 8)


# The kinds of DecodeError that mean "these bytes are not a VMX-family instruction we take"; the
# other kind, "decoder-disagreement", means our decoder and capstone read the bytes differently:
# a bug, which these properties must not accept. decode_uncached after clearing the guard's memo
# makes the capstone guard run on every example (it runs once per operand form otherwise).
REJECTIONS = {"empty", "truncated", "too-long", "lock", "prefix", "not-vmx", "register-form", "rex2"}


def _decode_guarded(raw: bytes, mode: int):
    decode_mod._GUARDED.clear()
    return decode_mod.decode_uncached(raw, mode)


@settings(max_examples=1500, deadline=None)
@given(st.binary(min_size=0, max_size=18), st.sampled_from([16, 32, 64]))
def test_arbitrary_bytes_raise_only_decode_error(raw, mode):
    try:
        ins = _decode_guarded(raw, mode)
    except DecodeError as e:
        assert e.kind in REJECTIONS, (raw.hex(), mode, e.kind, str(e))
        return
    assert 1 <= ins.length <= 15 and raw.startswith(ins.raw)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from([0x66, 0x67, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x41, 0x48]), max_size=4),
       st.sampled_from(["0f78", "0f79", "0fc7", "0f01", "0f00", "0f3880", "0f3882"]),
       st.binary(min_size=6, max_size=6), st.sampled_from([16, 32, 64]))
def test_prefixed_vmx_bytes_raise_only_decode_error(prefixes, opcode, tail, mode):
    raw = bytes(prefixes) + bytes.fromhex(opcode) + tail
    try:
        ins = _decode_guarded(raw, mode)
    except DecodeError as e:
        assert e.kind in REJECTIONS, (raw.hex(), mode, e.kind, str(e))
        return
    assert ins.length <= 15 and raw.startswith(ins.raw) and len(prefixes) < ins.length


def test_a_decoder_disagreement_is_not_a_rejection(monkeypatch):
    # the properties above fail on a disagreement: make capstone read a different base
    from vmxaddr import capstone_guard

    monkeypatch.setattr(capstone_guard, "_capstone_shape", lambda raw, cs: (3, "ebx", None, 1))
    with pytest.raises(DecodeError) as e:
        _decode_guarded(bytes.fromhex("0fc730"), 32)  # VMPTRLD [EAX]
    assert e.value.kind == "decoder-disagreement" and e.value.kind not in REJECTIONS
