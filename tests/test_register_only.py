"""TPAUSE, UMWAIT, LOADIWKEY (issue 16): register-only layouts, exit reasons, decode, encode,
explain. Expected values derived by hand: encodings from SDM Vol. 2 (TPAUSE 66 0F AE /6, UMWAIT
F2 0F AE /6, both mod = 11; LOADIWKEY F3 0F 38 DC 11:rrr:bbb), exit reasons from SDM Vol. 3D
Appendix C (67 UMWAIT, 68 TPAUSE, 69 LOADIWKEY), Reg1 in bits 6:3 (and LOADIWKEY's Reg2 in
31:28) as docs/tpause-umwait.md and docs/loadiwkey.md give their sources."""

from __future__ import annotations

import pytest

from vmxaddr.case import Case
from vmxaddr.cli import main
from vmxaddr.decode import DecodeError, decode
from vmxaddr.exitinfo import encode, fields_json
from vmxaddr.models import sdm
from vmxaddr.state import CpuState


@pytest.mark.parametrize("hex_, cs, mnemonic, reason, reg1, text", [
    ("66 0f ae f1", 64, "tpause", 68, 1, "tpause ecx"),        # ModRM F1: mod 11, reg 6, rm 1
    ("66 41 0f ae f1", 64, "tpause", 68, 9, "tpause r9d"),     # REX.B: rm 1 + 8
    ("f2 0f ae f7", 32, "umwait", 67, 7, "umwait edi"),        # rm 7
    ("f2 0f ae f0", 16, "umwait", 67, 0, "umwait eax"),        # r32 even in 16-bit code
])
def test_waitpkg(hex_, cs, mnemonic, reason, reg1, text):
    ins = decode(bytes.fromhex(hex_.replace(" ", "")), cs)
    assert (ins.mnemonic, ins.spec.exit_reason, ins.reg1, ins.operand, ins.text()) == (mnemonic, reason, reg1, None, text)
    e = encode(ins)
    assert e.instruction_info == reg1 << 3  # Reg1 in bits 6:3, all else undefined (zero here)
    assert e.exit_qualification == 0
    assert fields_json(e.instruction_info, mnemonic) == {"reg1": reg1}


@pytest.mark.parametrize("hex_, kind", [
    ("f3 0f ae f1", "not-vmx"),   # F3 0F AE /6 with a register: UMONITOR
    ("66 0f ae 31", "not-vmx"),   # memory form: CLWB
    ("0f ae f1", "not-vmx"),      # no prefix: not TPAUSE/UMWAIT
    ("66 0f ae e9", "not-vmx"),   # /5: not /6
])
def test_waitpkg_other_encodings_are_refused(hex_, kind):
    with pytest.raises(DecodeError) as e:
        decode(bytes.fromhex(hex_.replace(" ", "")), 64)
    assert e.value.kind == kind


def test_loadiwkey():
    # F3 45 0F 38 DC C1: REX.R and REX.B; ModRM C1 = 11 000 001: xmm1 = 0 + 8 (XMM8), xmm2 = 1 + 8 (XMM9).
    # Reg1 (6:3) = 8, Reg2 (31:28) = 9: 8 << 3 | 9 << 28 = 0x90000040.
    ins = decode(bytes.fromhex("f3450f38dcc1"), 64)
    assert (ins.mnemonic, ins.spec.exit_reason, ins.reg1, ins.reg2, ins.text()) == ("loadiwkey", 69, 8, 9, "loadiwkey xmm8, xmm9")
    e = encode(ins)
    assert e.instruction_info == 0x90000040
    assert fields_json(e.instruction_info, "loadiwkey") == {"reg1": 8, "reg2": 9}


def test_loadiwkey_iced_agrees():
    # capstone 5 cannot decode LOADIWKEY (docs/known-decoder-issues.md); iced-x86 1.21 can.
    from vmxaddr.decode_other import _capstone_guard  # noqa: F401  (the guard is not run for it)
    from vmxaddr.oracles.iced import _iced

    iced = _iced()
    for modrm in range(0xC0, 0x100):
        for rex in (b"", b"\x44", b"\x41", b"\x45"):
            raw = b"\xf3" + rex + b"\x0f\x38\xdc" + bytes([modrm])
            ins = decode(raw, 64)
            theirs = iced.Formatter(iced.FormatterSyntax.INTEL).format(iced.Decoder(64, raw).decode())
            assert theirs == f"loadiwkey xmm{ins.reg1},xmm{ins.reg2}", raw.hex()


def test_loadiwkey_refusals():
    for hex_, kind in (("660f38dcc1", "not-vmx"),  # 66: AESENC
                       ("f30f38dc01", "register-form"),  # memory operand
                       ("f0f30f38dcc1", "lock")):
        with pytest.raises(DecodeError) as e:
            decode(bytes.fromhex(hex_), 64)
        assert e.value.kind == kind


def test_models_stop_at_the_register_operand():
    for hex_, cs in (("660faef1", 64), ("f20faef7", 32)):
        c = Case(decode(bytes.fromhex(hex_), cs), CpuState.for_code_size(cs))
        r = sdm(c.exit, c.state, c.access)
        assert (r.outcome.kind, r.outcome.rule, r.linear_address) == ("ok", "register-operand", None)


def test_loadiwkey_cpl3_is_gp_before_the_exit():
    st = CpuState.for_code_size(64)
    st = CpuState.from_json({"cpl": 3}, st)
    c = Case(decode(bytes.fromhex("f30f38dcd1"), 64), st)
    assert sdm(c.exit, st, c.access).outcome.short() == "#GP(0)"


def test_explain_prints_the_register_layout(capsys):
    assert main(["explain", "--mode", "64", "66 0f ae f1"]) == 0
    out = capsys.readouterr().out
    assert "VM exit: reason 68 (TPAUSE)" in out and "6:3  reg1" in out and "rcx" in out
    assert main(["decode", "--mode", "64", "f3 0f 38 dc d1"]) == 0
    out = capsys.readouterr().out
    assert "loadiwkey xmm2, xmm1" in out and "31:28  reg2" in out and "xmm1" in out


@pytest.mark.parametrize("hex_, mnemonic, reason, reg1, msr, text", [
    # C4 E7 7B F6 C0 10 00 00 00: VEX3; E7 = R-bar X-bar B-bar 1 1 1, mmmmm 00111 (map 7); 7B = W0,
    # vvvv-bar 1111, L0, pp 11 (F2): RDMSR. F6, ModRM C0 = 11 000 000: RAX; imm32 0x10.
    ("c4 e7 7b f6 c0 10 00 00 00", "rdmsr", 84, 0, 0x10, "rdmsr rax, 0x10"),
    # C4 C7 7A F6 C1 ...: B-bar 0 -> B = 1: rm 1 + 8 = R9; pp 10 (F3): WRMSRNS.
    ("c4 c7 7a f6 c1 80 00 00 c0", "wrmsrns", 85, 9, 0xC0000080, "wrmsrns 0xc0000080, r9"),
])
def test_msr_immediate(hex_, mnemonic, reason, reg1, msr, text):
    # Exit reasons 84/85, Reg1 in bits 6:3 and the MSR index in the exit qualification: KVM's
    # handle_rdmsr_imm()/handle_wrmsr_imm() (vmx_get_instr_info_reg(), vmx_get_exit_qual()).
    ins = decode(bytes.fromhex(hex_.replace(" ", "")), 64)
    assert (ins.mnemonic, ins.spec.exit_reason, ins.reg1, ins.text(), ins.length) == (mnemonic, reason, reg1, text, 9)
    e = encode(ins)
    assert (e.instruction_info, e.exit_qualification) == (reg1 << 3, msr)


@pytest.mark.parametrize("hex_, cs, kind", [
    ("c4 e7 fb f6 c0 10 00 00 00", 64, "not-vmx"),        # W1
    ("c4 e7 7f f6 c0 10 00 00 00", 64, "not-vmx"),        # L1
    ("c4 e7 79 f6 c0 10 00 00 00", 64, "not-vmx"),        # pp 01 (66)
    ("c4 e7 7b f6 c8 10 00 00 00", 64, "register-form"),  # /1
    ("66 c4 e7 7b f6 c0 10 00 00 00", 64, "prefix"),      # 66 before VEX
    ("c4 e7 7b f6 c0 10 00", 64, "truncated"),
    ("c4 e7 7b f6 c0 10 00 00 00", 32, "not-vmx"),        # C4 is LES outside 64-bit mode
])
def test_msr_immediate_refusals(hex_, cs, kind):
    with pytest.raises(DecodeError) as e:
        decode(bytes.fromhex(hex_.replace(" ", "")), cs)
    assert e.value.kind == kind
