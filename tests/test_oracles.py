"""Cross-checks against independent oracles: iced-x86 (decoder) and unicorn (addresses).

The sample runs cover every instruction × code size × prefix combination of the walk in
vmxaddr/oracles/case_stream.py (20000 cases per oracle) and fail on any unexplained disagreement.
Hand-worked cases pin the explained differences to byte strings (docs/oracles.md,
docs/known-decoder-issues.md). The oracles are the optional extra '.[oracles]'.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from vmxaddr import decode as decode_mod
from vmxaddr.decode import capstone_view, decode
from vmxaddr.oracles.case_stream import encodings, family_combo_count, prefix_combo_count
from vmxaddr.state import CpuState

SAMPLE = 20_000
SEED = 20261125


def test_walk_covers_every_combination_within_the_sample():
    seen_family, seen_prefix = set(), set()
    for e in itertools.islice(encodings(SEED), SAMPLE):
        (seen_family if e.combo.startswith("family:") else seen_prefix).add(e.combo)
    assert len(seen_family) == family_combo_count()
    assert len(seen_prefix) == prefix_combo_count()
    mem = {e.combo for e in itertools.islice(encodings(SEED, memory_only=True), SAMPLE)}
    assert len(mem) == family_combo_count(memory_only=True)


def test_family_walk_is_all_valid_encodings():
    # the "family" stream builds each instruction from its SDM opcode: our decoder must accept all
    for e in itertools.islice(encodings(SEED), 3000):
        if e.combo.startswith("family:"):
            assert decode(e.raw, e.code_size).mnemonic == e.combo.split(":")[1].split("/")[0]


# -- iced-x86 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iced():
    pytest.importorskip("iced_x86")
    from vmxaddr.oracles import iced as mod

    return mod


def test_iced_sample_has_no_unexplained_disagreement(iced):
    s = iced.crosscheck_iced(SAMPLE, SEED)
    assert s.cases == SAMPLE
    bad = [e.to_json() for e in s.examples if e.unexplained]
    assert s.unexplained_cases == 0, bad
    # the only explained difference is the ignored-segment reporting policy
    assert set(s.by_field) <= {"segment"}
    assert s.agreements > SAMPLE // 2


def test_iced_reports_the_ignored_64bit_prefix_segment(iced):
    # 26 0F C7 30 in 64-bit mode: VMPTRLD [RAX]; the ES override has no effect (SDM Vol. 1
    # §3.3.7.1), so the segment is DS; iced says ES, our "prefix" policy's reading.
    ds = iced.compare(bytes.fromhex("260fc730"), 64)
    assert [(d.field, d.ours, d.theirs) for d in ds] == [("segment", "ds", "es")]
    assert ds[0].explained == iced.EXPLAINED_SEGMENT


def test_iced_and_we_keep_fs_after_es_in_64bit_mode(iced):
    # capstone #2818 reports ES for 64 26 0F C7 30; the FS override stays in effect.
    raw = bytes.fromhex("64260fc730")
    assert iced.iced_view(raw, 64)["memory"]["segment"] == "fs"
    assert iced.compare(raw, 64) == []


def test_iced_agrees_where_capstone_is_wrong(iced):
    # capstone 5 calls 66 0F C7 /6 VMPTRLD in 16-bit code and cannot decode 16-bit INVEPT.
    for hexbytes, mnemonic in (("660fc730", "vmclear"), ("660fc776f0", "vmclear"), ("66670fc730", "vmclear"),
                               ("660f388008", "invept"), ("660f388108", "invvpid"), ("660f388208", "invpcid")):
        raw = bytes.fromhex(hexbytes)
        assert iced.iced_view(raw, 16)["mnemonic"] == mnemonic
        assert iced.compare(raw, 16) == [], hexbytes


def test_iced_default_segment_ss_for_ebp(iced):
    # 0F C7 75 00: VMPTRLD [EBP+0] — SS by default (capstone #473 reports no segment)
    assert iced.iced_view(bytes.fromhex("0fc77500"), 32)["memory"]["segment"] == "ss"
    assert iced.compare(bytes.fromhex("0fc77500"), 32) == []


def test_iced_displacement_is_our_zero_extended_exit_qualification(iced):
    # 0F 78 45 D8 (32-bit): VMREAD [EBP-0x28]; iced gives 0xffffffd8, the disp8 -0x28
    # zero-extended from the 32-bit address size.
    assert iced.iced_view(bytes.fromhex("0f7845d8"), 32)["memory"]["displacement"] == 0xFFFFFFD8
    assert iced.compare(bytes.fromhex("0f7845d8"), 32) == []


def test_iced_rip_relative_target(iced):
    # 0F C7 35 10 00 00 00 at 0x1000: 7 bytes, target 0x1000 + 7 + 0x10 = 0x1017
    raw = bytes.fromhex("0fc73510000000")
    assert iced.iced_view(raw, 64, ip=0x1000)["memory"]["displacement"] == 0x1017
    assert iced.compare(raw, 64, ip=0x1000) == []
    # with 67 (EIP-relative) at 0xfffffff0: 0xfffffff0 + 8 + 0x10 wraps to 0x8 in 32 bits
    raw = bytes.fromhex("670fc73510000000")
    assert iced.iced_view(raw, 64, ip=0xFFFFFFF0)["memory"]["displacement"] == 0x8
    assert iced.compare(raw, 64, ip=0xFFFFFFF0) == []


def test_iced_amd_extrq_insertq_are_not_vmread_vmwrite(iced):
    # 66 0F 78 /0 ib ib is AMD SSE4a EXTRQ, 66 0F 79 EXTRQ, F2 0F 78/79 INSERTQ: iced decodes them;
    # VMREAD/VMWRITE take no 66/F2 prefix, so our decoder rejects them; both agree: not VMX-family.
    for hexbytes, mnemonic in (("660f78c00102", "extrq"), ("660f79c1", "extrq"),
                               ("f20f78c10102", "insertq"), ("f20f79c1", "insertq")):
        raw = bytes.fromhex(hexbytes)
        assert iced.iced_view(raw, 64)["mnemonic"] == mnemonic
        assert iced.compare(raw, 64) == [], hexbytes
    # 66 0F 78 C8 01 02 (ModRM.reg 1) is nothing at all for iced (capstone 5 calls it EXTRQ)
    assert iced.iced_view(bytes.fromhex("660f78c80102"), 64)["valid"] is False


def test_iced_xsaves_size_is_not_comparable(iced):
    # iced's MemorySize for XSAVES is "Xsave" (size 0, variable); ours is the 576-byte minimum
    v = iced.iced_view(bytes.fromhex("480fc728"), 64)
    assert v["mnemonic"] == "xsaves" and v["memory"]["access_size"] == 0
    assert iced.compare(bytes.fromhex("480fc728"), 64) == []


def test_iced_check_can_fail(iced, monkeypatch):
    # a decoder that gets the length wrong must be reported, unexplained
    real = iced.decode
    monkeypatch.setattr(iced, "decode", lambda raw, cs: real(raw, cs)._replace(length=real(raw, cs).length + 1))
    ds = iced.compare(bytes.fromhex("0fc730"), 32)
    assert [(d.field, d.explained) for d in ds] == [("length", None)]


# -- unicorn ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uni():
    pytest.importorskip("unicorn")
    from vmxaddr.oracles import unicorn as mod

    return mod


@pytest.fixture(scope="module")
def oracle(uni):
    return uni.UnicornOracle()


def test_unicorn_sample_has_no_unexplained_disagreement(uni):
    s = uni.crosscheck_unicorn(SAMPLE, SEED)
    assert s.cases == SAMPLE
    bad = [e.to_json() for e in s.examples if e.unexplained]
    assert s.unexplained_cases == 0, bad
    assert set(s.by_field) <= {"linear_address"}  # only unicorn #1781
    assert s.agreements > SAMPLE * 0.9


def _state(code_size, regs=(), **bases):
    st = CpuState.for_code_size(code_size)
    for name, v in regs:
        st = st.with_reg(name, v)
    for seg, b in bases.items():
        st = st.with_segment(seg, base=b)
    return st


def test_unicorn_32bit_ebp_uses_ss_base(uni, oracle):
    # 0F C7 75 F0: VMPTRLD [EBP-0x10]; EBP 0x20 -> EA 0x10; SS base 0x1000 -> linear 0x1010
    ins = decode(bytes.fromhex("0fc775f0"), 32)
    st = _state(32, [("ebp", 0x20)], ss=0x1000, ds=0x9000)
    assert oracle.addresses(ins, st) == (0x10, 0x1010)
    assert uni.compare_case(oracle, ins, st) == []


def test_unicorn_16bit_protected_mode_wraps_the_offset(uni, oracle):
    # 16-bit code, 0F C7 32: VMPTRLD [BP+SI]; 0xfff0 + 0x20 = 0x10 (mod 2^16); SS base 0x5000
    ins = decode(bytes.fromhex("0fc732"), 16)
    st = _state(16, [("bp", 0xFFF0), ("si", 0x20)], ss=0x5000)
    assert oracle.addresses(ins, st) == (0x10, 0x5010)
    assert uni.compare_case(oracle, ins, st) == []


def test_unicorn_32bit_linear_wraps_at_4g(uni, oracle):
    # 64 0F C7 30: VMPTRLD FS:[EAX]; FS base 0xfffff000 + 0x2000 = 0x1000 (mod 2^32)
    ins = decode(bytes.fromhex("640fc730"), 32)
    st = _state(32, [("eax", 0x2000)], fs=0xFFFFF000)
    assert oracle.addresses(ins, st) == (0x2000, 0x1000)
    assert uni.compare_case(oracle, ins, st) == []


def test_unicorn_64bit_gs_base(uni, oracle):
    # 65 0F C7 30: VMPTRLD GS:[RAX]; GS base 0x10000 + RAX 0x1000 = 0x11000
    ins = decode(bytes.fromhex("650fc730"), 64)
    st = _state(64, [("rax", 0x1000)], gs=0x10000)
    assert oracle.addresses(ins, st) == (0x1000, 0x11000)


def test_unicorn_eip_relative_wraps(uni, oracle):
    # 67 0F C7 35 10 00 00 00 at RIP 0xfffffff0: 8 bytes, EA (0xfffffff8 + 0x10) mod 2^32 = 0x8
    ins = decode(bytes.fromhex("670fc73510000000"), 64)
    st = dataclasses.replace(_state(64), rip=0xFFFFFFF0)
    assert oracle.addresses(ins, st) == (0x8, 0x8)
    assert uni.compare_case(oracle, ins, st) == []


def test_unicorn_1781_fs_then_es_prefix(uni, oracle):
    # 64 26 0F C7 30 in 64-bit mode: the ES override is ignored, FS stays (SDM Vol. 1 §3.3.7.1):
    # linear = FS base 0x10000 + 0x1000 = 0x11000. unicorn (#1781) drops the FS base: 0x1000.
    ins = decode(bytes.fromhex("64260fc730"), 64)
    st = _state(64, [("rax", 0x1000)], fs=0x10000)
    assert oracle.addresses(ins, st) == (0x1000, 0x1000)
    ds = uni.compare_case(oracle, ins, st)
    assert [(d.field, d.ours, d.theirs, d.explained) for d in ds] == [("linear_address", 0x11000, 0x1000, uni.EXPLAINED_1781)]


def test_unicorn_check_can_fail(uni, oracle, monkeypatch):
    # a model that is off by one must be reported, unexplained
    real = uni.sdm
    monkeypatch.setattr(uni, "sdm", lambda e, s, a, explain=False: real(e, s, a)._replace(
        effective_address=real(e, s, a).effective_address + 1))
    ins = decode(bytes.fromhex("0fc730"), 32)
    ds = uni.compare_case(oracle, ins, _state(32, [("eax", 0x100)]))
    assert [(d.field, d.explained) for d in ds] == [("effective_address", None)]


# -- the command -----------------------------------------------------------------------------

def test_crosscheck_command_json(capsys, iced):
    from vmxaddr.cli import main

    assert main(["crosscheck", "--oracle", "iced", "-n", "300", "--quiet", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["cases"] == 300 and obj["unexplained_cases"] == 0


def test_crosscheck_command_text_and_parallel(capsys, uni):
    from vmxaddr.cli import main

    assert main(["crosscheck", "--oracle", "unicorn", "-n", "400", "--jobs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "400 cases" in out and "unexplained" in out


def test_crosscheck_bochs_missing_is_one_line_error(capsys, monkeypatch):
    import sys

    from vmxaddr.cli import main

    monkeypatch.setitem(sys.modules, "vmxaddr.oracles.bochs", None)  # as if the module were absent
    assert main(["crosscheck", "--oracle", "bochs", "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bochs" in err


# -- capstone 5 pitfalls not covered in test_decode.py (docs/known-decoder-issues.md) ---------

def test_capstone_riz_pseudo_index():
    # 0F C7 34 65 00 00 00 00 (64-bit): SIB index 100 = none with scale 2; capstone 5 names a
    # pseudo-register "riz"; there is no index (SDM Vol. 2 Table 2-3).
    raw = bytes.fromhex("0fc7346500000000")
    assert capstone_view(raw, 64)["memory"]["index"] == "riz"
    decode_mod._GUARDED.clear()  # the guard runs once per operand form: make it run on these bytes
    op = decode_mod.decode_uncached(raw, 64).operand  # would raise decoder-disagreement without the riz rule
    assert op.index is None and op.base is None
