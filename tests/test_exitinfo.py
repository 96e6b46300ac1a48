"""Exit-information encoder: layouts, policies, and the round trip through `fields`."""

from hypothesis import given, settings

from vmxaddr.decode import decode
from vmxaddr.exitinfo import Policy, defined_mask, encode, fields_json
from vmxaddr.gen import MNEMONICS
from vmxaddr.strategies import instructions

SEGS = ("es", "cs", "ss", "ds", "fs", "gs")


@settings(max_examples=600, deadline=None)
@given(instructions(mnemonics=MNEMONICS))
def test_round_trip(ins):
    """encode -> fields gives back the operand's own fields (those the SDM defines)."""
    exit = encode(ins)
    f = fields_json(exit.instruction_info, ins.mnemonic, ins.code_size)
    op = ins.operand
    layout = ins.spec.layout.value
    if layout == "rdrand":
        assert f["reg"] == ins.reg1
        assert f["operand size"] == {16: 0, 32: 1, 64: 2}[ins.operand_size]
        return
    if op is None:
        assert f["mem/reg"] == 1 and f["reg1"] == ins.reg1
        assert "segment" not in f and "base" not in f  # undefined for register forms
    else:
        assert {0: 16, 1: 32, 2: 64}[f["address size"]] == op.address_size
        assert SEGS[f["segment"]] == op.segment
        assert f.get("base") == op.base
        assert f.get("index") == op.index
        assert f["base invalid"] == (op.base is None)
        assert f["index invalid"] == (op.index is None)
        if op.index is not None:
            assert 1 << f["scaling"] == op.scale
    if layout in ("vmread", "inv"):
        assert f["reg2"] == ins.reg2
    if layout in ("dt", "ldt"):
        assert f["identity"] == ins.spec.identity
    if layout == "dt" and ins.code_size != 64:
        assert f["operand size"] == (ins.operand_size == 32)


@settings(max_examples=400, deadline=None)
@given(instructions(mnemonics=MNEMONICS))
def test_random_policy_touches_only_undefined_bits(ins):
    plain = encode(ins)
    noisy = encode(ins, policy=Policy(undefined_bits="random", exit_qual="random-upper", seed=7))
    mask = defined_mask(ins)
    assert plain.instruction_info & mask == noisy.instruction_info & mask
    assert plain.instruction_info & ~mask == 0  # the zero policy leaves undefined bits clear
    asz = ins.operand.address_size if ins.operand else 64
    low = (1 << asz) - 1
    assert plain.exit_qualification & low == noisy.exit_qualification & low


def test_exit_qualification_policies():
    ins = decode(bytes.fromhex("0f7845d8"), 32)  # disp8 -0x28, 32-bit address size
    assert encode(ins, policy=Policy(exit_qual="zero-extend")).exit_qualification == 0xFFFFFFD8
    assert encode(ins, policy=Policy(exit_qual="sign-extend")).exit_qualification == 0xFFFFFFFFFFFFFFD8
    up = encode(ins, policy=Policy(exit_qual="random-upper", seed=3)).exit_qualification
    assert up & 0xFFFFFFFF == 0xFFFFFFD8


def test_16bit_displacement_sign_extends_from_bit_15():
    ins = decode(bytes.fromhex("0fc776f0"), 16)  # [BP-0x10]
    assert encode(ins, policy=Policy(exit_qual="sign-extend")).exit_qualification == (1 << 64) - 0x10
    assert encode(ins).exit_qualification == 0xFFF0


def test_si_di_policy():
    # 16-bit [SI] (ModRM 34): reported as base (Bochs) or as index with scaling 0 (VirtualBox).
    ins = decode(bytes.fromhex("0fc734"), 16)
    as_base = fields_json(encode(ins).instruction_info, "vmptrld")
    assert as_base["base"] == 6 and as_base["index invalid"] == 1
    as_index = fields_json(encode(ins, policy=Policy(si_di="index")).instruction_info, "vmptrld")
    assert as_index["index"] == 6 and as_index["base invalid"] == 1 and as_index["scaling"] == 0


def test_ignored_segment_policy():
    ins = decode(bytes.fromhex("260fc730"), 64)  # ES override, ignored in 64-bit mode
    assert fields_json(encode(ins).instruction_info, "vmptrld")["segment"] == 3  # DS, as Bochs
    assert fields_json(encode(ins, policy=Policy(ignored_segment="prefix")).instruction_info, "vmptrld")["segment"] == 0
