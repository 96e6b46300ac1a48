"""APX (issue 16): the REX2 prefix, R16-R31 operands and the extended instruction-information
field. No decoder on the registries reads REX2, so every expected value here is derived by hand:

* REX2 (APX architecture specification, 784266, "REX2 prefix"): D5 then a payload, bits 7..0 =
  M0 R4 X4 B4 W R3 X3 B3; register number = R4:R3:ModRM.reg (likewise X for SIB.index, B for
  ModRM.rm / SIB.base); M0 = 1 selects legacy map 1 without the 0F byte. #UD with REX2: map 0 rows
  4, 7, A, E and map 1 rows 3, 8 (so 0F 38, i.e. INVEPT/INVVPID/INVPCID/LOADIWKEY); REX before REX2.
* The extended field (KVM "KVM: x86: Enable APX for guests" v2 patch 04/16, `struct ext_insn_info`):
  scaling 1:0, address size 3:2, mem/reg 4, operand size 6:5, segment 9:7, index invalid 10, base
  invalid 11, reg1 20:16, index 28:24, base 36:32, reg2 44:40.
"""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from vmxaddr.apx import encode_extended, fields_extended, operand_bits_extended
from vmxaddr.case import Case
from vmxaddr.cli import main
from vmxaddr.decode import DecodeError, decode
from vmxaddr.exitinfo import Policy, encode
from vmxaddr.gen import ALL_MNEMONICS, NO_REX2, RandomChooser, gen_encoding
from vmxaddr.models import get, sdm
from vmxaddr.rex2 import split
from vmxaddr.state import CpuState


def test_payload_bits():
    # C4 = 1100 0100: M0 = 1, R4 = 1, X4 = 0, B4 = 0, W = 0, R3 = 1, X3 = 0, B3 = 0.
    f = split(0xC4)
    assert (f.m0, f.r, f.x, f.b, f.w) == (1, 16 + 8, 0, 0, 0)
    # 3B = 0011 1011: M0 = 0, R4 = 0, X4 = 1, B4 = 1, W = 1, R3 = 0, X3 = 1, B3 = 1.
    f = split(0x3B)
    assert (f.m0, f.r, f.x, f.b, f.w) == (0, 0, 24, 24, 8)


@pytest.mark.parametrize("hex_, text, fields", [
    # D5 C4 78 C8: VMREAD (map 1, 78), ModRM C8 = 11 001 000: reg2 = 1 + R3 8 + R4 16 = 25; reg1 = 0.
    ("d5 c4 78 c8", "vmread rax, r25", dict(reg1=0, reg2=25)),
    # D5 90 78 C8: payload 1001 0000 (M0, B4): reg1 = 0 + 16 = R16, reg2 = 1 (RCX).
    ("d5 90 78 c8", "vmread r16, rcx", dict(reg1=16, reg2=1)),
    # D5 F0 C7 3C 24: payload 1111 0000 (M0 R4 X4 B4); C7 /7 = VMPTRST; SIB 24: index 4 + X4 16 = 20
    # (valid: only 4 itself means "no index"), base 4 + B4 16 = 20; DS (R20 is not RSP).
    ("d5 f0 c7 3c 24", "vmptrst ds:[r20 + r20]", dict(base=20, index=20, segment="ds")),
    # D5 B4 C7 74 25 08: payload 1011 0100 (M0 X4 B4 R3); C7 ModRM 74 = 01 110 100: /6 = VMPTRLD
    # (R3 does not extend an opcode extension); SIB 25: index 4 + 16 = 20, base 5 + 16 = 21; disp8 8.
    ("d5 b4 c7 74 25 08", "vmptrld ds:[r21 + r20 + 0x8]", dict(base=21, index=20, segment="ds")),
    # D5 81 C7 45 00: payload 1000 0001 (M0 B3): ModRM 45 = 01 000 101 -> /0? no: reg 0 is not a
    # VMX C7 form; use 75 instead below. D5 81 C7 75 00: /6 base 5 + 8 = R13: DS, not SS.
    ("d5 81 c7 75 00", "vmptrld ds:[r13]", dict(base=13, index=None, segment="ds")),
    # D5 91 C7 75 00: payload 1001 0001 (M0 B4 B3): base 5 + 8 + 16 = R29.
    ("d5 91 c7 75 00", "vmptrld ds:[r29]", dict(base=29, index=None, segment="ds")),
    # D5 C8 C7 F3: RDRAND (mod 11, /6), W = 1 (payload 1100 1000: M0 R4 W): rm 3 -> RBX, 64-bit;
    # R4 extends only ModRM.reg, which is the opcode extension here.
    ("d5 c8 c7 f3", "rdrand rbx", dict(reg1=3)),
    # D5 99 C7 F3: payload 1001 1001 (M0 B4 W B3): rm 3 + 8 + 16 = R27, 64-bit.
    ("d5 99 c7 f3", "rdrand r27", dict(reg1=27)),
    # D5 90 01 10: payload (M0 B4): 0F 01 /2 = LGDT [R16].
    ("d5 90 01 10", "lgdt ds:[r16]", dict(base=16, index=None, segment="ds")),
    # 66 D5 91 AE F1: TPAUSE with rm 1 + 8 + 16 = R25 (r32: r25d).
    ("66 d5 91 ae f1", "tpause r25d", dict(reg1=25)),
    # D5 00 6E: REX2 in map 0 (M0 = 0) on OUTSB: nothing to extend.
    ("d5 00 6e", "outs dx, byte ds:[rsi]", dict(base=6, index=None, segment="ds")),
])
def test_decode_by_hand(hex_, text, fields):
    ins = decode(bytes.fromhex(hex_.replace(" ", "")), 64)
    assert ins.text() == text
    assert ins.uses_rex2
    op = ins.operand
    for k, v in fields.items():
        got = getattr(ins, k) if k in ("reg1", "reg2") else getattr(op, k)
        assert got == v, (k, got, v)


@pytest.mark.parametrize("hex_, cs, kind", [
    ("66 d5 80 38 80 08", 64, "rex2"),  # INVEPT: 0F 38 is map 1 row 3, #UD with REX2
    ("f3 d5 80 38 dc d1", 64, "rex2"),  # LOADIWKEY likewise
    ("48 d5 80 c7 30", 64, "rex2"),     # REX before REX2
    ("d5 80 80 00 00 00 00", 64, "rex2"),  # map 1 row 8 (Jcc rel32)
    ("d5 00 a4", 64, "rex2"),           # map 0 row A (MOVS)
    ("d5 00 0f 78 c8", 64, "rex2"),     # M0 = 0 then 0F: #UD (the map is chosen by M0)
    ("d5", 64, "truncated"),            # no payload
    ("d5 c4 78 c8", 32, "not-vmx"),     # outside 64-bit mode D5 is AAD, not a prefix
])
def test_rex2_refusals(hex_, cs, kind):
    with pytest.raises(DecodeError) as e:
        decode(bytes.fromhex(hex_.replace(" ", "")), cs)
    assert e.value.kind == kind


def test_extended_field_by_hand():
    # VMPTRLD [R21 + R20 + 8] (d5 b4 c7 74 25 08): scaling 0, address size 2 -> bits 3:2 = 0b10 (8),
    # mem/reg 0, segment DS = 3 -> bits 9:7 (0x180), index 20 << 24, base 21 << 32:
    # 0x8 | 0x180 | 0x14000000 | 0x1500000000 = 0x1514000188.
    ins = decode(bytes.fromhex("d5b4c7742508"), 64)
    e = encode(ins)
    assert e.extended_info == 0x1514000188
    # 32-bit field: low 4 bits of 20 and 21 (4 = RSP, 5 = RBP), bits 22/27 clear, DS, 64-bit.
    assert e.instruction_info == (4 << 18 | 5 << 23 | 3 << 15 | 2 << 7)
    assert operand_bits_extended(e.extended_info) == (0, 2, 3, 20, 21)
    # VMREAD RAX, R25 (d5 c4 78 c8): mem/reg bit 4, reg1 0, reg2 25 << 40 = 0x190000000010.
    assert encode(decode(bytes.fromhex("d5c478c8"), 64)).extended_info == 0x190000000010
    # RDRAND R27 (d5 99 c7 f3): reg1 27 << 16, operand size 64 -> 2 << 5: 0x1B0040.
    assert encode(decode(bytes.fromhex("d599c7f3"), 64)).extended_info == 0x1B0040


def test_fields_extended_is_the_inverse_of_the_encoder():
    rng = random.Random(16)
    ch = RandomChooser(rng)
    n = 0
    for _ in range(3000):
        raw, cs = gen_encoding(ch, (64,), ALL_MNEMONICS, register_forms=0.3, rex2=0.6)
        ins = decode(raw, cs)
        x, defined = encode_extended(ins)
        rebuilt = 0
        for f in fields_extended(x, ins.mnemonic):
            assert f.value == (x >> f.lo) & ((1 << (f.hi - f.lo + 1)) - 1)
            if f.defined:
                rebuilt |= f.value << f.lo
        assert rebuilt == x & defined == x, raw.hex()
        n += ins.uses_rex2
    assert n > 1000


def test_apx_policy_writes_the_field_for_legacy_encodings():
    ins = decode(bytes.fromhex("0fc730"), 64)  # VMPTRLD [RAX]
    assert encode(ins).extended_info is None
    # base 0, index invalid (bit 10), DS (3 << 7), 64-bit (2 << 2): 0x588
    assert encode(ins, policy=Policy(apx=True)).extended_info == 0x588


def _apx_case(hex_: str, **regs: int) -> Case:
    st = CpuState.for_code_size(64)
    for k, v in regs.items():
        st = st.with_reg(k, v)
    return Case(decode(bytes.fromhex(hex_), 64), st)


def test_sdm_model_reads_the_extended_field():
    c = _apx_case("d5b4c7742508", r21=0x5000, r20=0x10, rbp=0x9000, rsp=0x77)
    r = sdm(c.exit, c.state, c.access)
    assert (r.effective_address, r.linear_address) == (0x5018, 0x5018)
    # Without the extended field the same 32-bit field names RBP + RSP: 0x9000 + 0x77 + 8.
    legacy = c.exit._replace(extended_info=None)
    assert sdm(legacy, c.state, c.access).effective_address == 0x907F


def test_kvm_apx_v2_differs_from_every_legacy_kvm_model():
    c = _apx_case("d5b4c7742508", r21=0x5000, r20=0x10, rbp=0x9000)
    assert get("kvm-apx-v2")(c.exit, c.state, c.access).linear_address == 0x5018
    assert get("kvm-current")(c.exit, c.state, c.access).linear_address == 0x9008
    # On an exit without the extended field kvm-apx-v2 is kvm-current: 0F C7 74 25 08 is VMPTRLD
    # [RBP + 8] (SIB index 4 = none, base 5 with mod 01 = RBP): 0x2000 + 8.
    c2 = _apx_case("0fc7742508", rsp=0x100, rbp=0x2000)
    for name in ("kvm-apx-v2", "kvm-current"):
        assert get(name)(c2.exit, c2.state, c2.access).linear_address == 0x2008


def test_vmread_register_form_with_egprs():
    # VMREAD R16, RCX: a register destination; the models stop at "register operand".
    c = _apx_case("d59078c8")
    assert sdm(c.exit, c.state, c.access).outcome.rule == "register-operand"
    assert get("kvm-apx-v2")(c.exit, c.state, c.access).outcome.rule == "register-operand"


def test_state_holds_r16_to_r31():
    st = CpuState.for_code_size(64).with_reg("r31", 0x1234).with_reg("r16d", 5)
    assert (st.egprs[15], st.egprs[0], st.reg_value(31)) == (0x1234, 5, 0x1234)
    back = CpuState.from_json(st.to_json())
    assert back.egprs == st.egprs
    assert CpuState.for_code_size(64).to_json()["registers"].keys() == {
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}


def test_generator_makes_rex2_only_where_allowed():
    rng = random.Random(1)
    ch = RandomChooser(rng)
    seen = set()
    for _ in range(4000):
        raw, cs = gen_encoding(ch, (64,), ALL_MNEMONICS, register_forms=0.2, rex2=0.5)
        ins = decode(raw, cs)
        if ins.uses_rex2:
            assert ins.mnemonic not in NO_REX2
            seen.add(ins.mnemonic)
    assert seen == set(ALL_MNEMONICS) - NO_REX2


def test_fuzz_all_forms_runs(capsys):
    assert main(["fuzz", "--model", "kvm-current", "--against", "sdm", "--forms", "all", "--max-examples", "3000",
                 "--hypothesis-examples", "0", "--quiet", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    # The legacy reader's wrong register shows up as its own divergence class. Its witness, worked
    # by hand: a REX2 form (D5, payload M0 R4 X4 B4 W R3 X3 B3, opcode, ModRM) whose base register
    # is B4:B3:rm >= 16. kvm-current reads the 32-bit field, whose base field has 4 bits (26:23),
    # so it uses register (base & 15); the SDM reference reads the extended field's 5 bits. Each
    # effective address is then that register's value in the witness state (0 when not set).
    apx = [c for c in out["classes"] if c["name"] == "R16-R31 read from the 32-bit field (APX extended field ignored)"]
    assert len(apx) == 1 and apx[0]["count"] > 0, [c["name"] for c in out["classes"]]
    w = apx[0]["witness"]
    raw = bytes.fromhex(w["bytes"].replace(" ", ""))
    at = raw.index(0xD5)
    payload, modrm = raw[at + 1], raw[at + 3]
    assert modrm >> 6 == 0 and modrm & 7 not in (4, 5), w["bytes"]  # [base], no SIB, no displacement
    base = (payload >> 4 & 1) << 4 | (payload & 1) << 3 | modrm & 7
    assert base >= 16
    regs = {k: int(v, 16) for k, v in w["state"].get("registers", {}).items()}
    names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{i}" for i in range(8, 32))]
    assert int(w["answers"]["sdm"]["effective_address"], 16) == regs.get(names[base], 0)
    assert int(w["answers"]["kvm-current"]["effective_address"], 16) == regs.get(names[base & 15], 0)
    assert regs.get(names[base], 0) != regs.get(names[base & 15], 0)  # the witness tells them apart


def test_no_registry_decoder_reads_rex2():
    raw = bytes.fromhex("d5c478c8")
    from vmxaddr.capstone_guard import capstone_view
    from vmxaddr.oracles.iced import _iced

    assert capstone_view(raw, 64) is None
    iced = _iced()
    assert iced.Formatter(iced.FormatterSyntax.INTEL).format(iced.Decoder(64, raw).decode()) == "(bad)"
    if shutil.which("objdump") is None:
        pytest.skip("binutils' objdump is not installed")
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(raw)
        f.flush()
        out = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f.name],
                             capture_output=True, text=True, check=True).stdout
    version = subprocess.run(["objdump", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    if "2.40" in version:
        assert "(bad)" in out


def test_hypothesis_strategies_draw_rex2_forms():
    from hypothesis import given, settings

    from vmxaddr.apx import operand_bits_extended
    from vmxaddr.strategies import instructions

    bases: list[int] = []

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(instructions(code_sizes=(64,), mnemonics=ALL_MNEMONICS, rex2=0.9))
    def check(ins):
        if not ins.uses_rex2:
            return
        assert ins.mnemonic not in NO_REX2
        e = encode(ins)
        assert e.extended_info is not None
        # By hand from the APX REX2 prefix (D5, then payload M0 R4 X4 B4 W R3 X3 B3) and ModRM:
        # a memory operand [base] with no SIB and not RIP-relative has base = B4:B3:ModRM.rm.
        if ins.operand is None or ins.spec.memory == "implicit":  # INS/OUTS: no ModRM
            return
        raw = ins.raw
        at = raw.index(0xD5)
        payload, opcode_len = raw[at + 1], 1  # map 0 or 1 (M0): the opcode byte follows the payload
        modrm = raw[at + 2 + opcode_len]
        mod, rm = modrm >> 6, modrm & 7
        if mod == 3 or rm == 4 or (mod == 0 and rm == 5):
            return
        base = (payload >> 4 & 1) << 4 | (payload & 1) << 3 | rm
        bases.append(base)
        assert ins.operand.base == base, raw.hex()
        assert operand_bits_extended(e.extended_info)[4] == base, raw.hex()  # what the field reports

    check()
    # derandomize: the same 200 draws every run; they name bases of both halves (R0-R15, R16-R31)
    assert any(b >= 16 for b in bases) and any(b < 16 for b in bases), bases


def test_trace_reads_the_extended_field(tmp_path, capsys):
    # A recorded APX exit: with extended_instruction_info the hypervisor check reads R21/R20
    # (0x5000 + 0x10 + 8 = 0x5018, as test_extended_field_by_hand derives); the hardware check
    # compares the recorded extended field's defined bits (here one bit of the base is wrong: 20).
    line = ('{"type": "exit", "exit_reason": 21, "bytes": "d5b4c7742508", "code_size": 64, "instruction_info": '
            '"0x02918100", "extended_instruction_info": "%s", "exit_qualification": 8, "state": {"registers": '
            '{"r21": "0x5000", "r20": "0x10"}}, "result": {"kind": "ok", "linear_address": "0x5018"}}\n')
    p = tmp_path / "t.jsonl"
    p.write_text(line % "0x1514000188" + line % "0x1414000188")
    main(["check-trace", str(p)])
    out = capsys.readouterr().out
    assert "hardware:   1 consistent, 1 inconsistent" in out and "extended_instruction_info 0x1414000188 not 0x1514000188" in out
