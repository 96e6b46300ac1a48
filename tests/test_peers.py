"""Peers: the bochs-2.7 and vbox-iem encoders, the xen-c447b730 consumer, the encoder x consumer
attribution, and the replay of corpus/witnesses/peers.json.

Every expected value is derived by hand in the comment above it, from the behaviour read in the
named source (see the encoders' and the model's docstrings), from the SDM, and — for Bochs — from
what Debian's bochs 2.7 was observed to write (docs/known-oracle-issues.md).
Bit positions used below (SDM Vol. 3C 'Information for VM Exits Due to Instruction Execution'):
scaling 1:0, reg1 6:3, address size 9:7, mem/reg 10, operand size 11 (DT) or 12:11 (RDRAND),
segment 17:15, index 21:18, index invalid 22, base 26:23, base invalid 27, reg2/identity 31:28.
"""

import json
import random
from dataclasses import fields, replace
from pathlib import Path

import pytest

from vmxaddr.case import Case
from vmxaddr.decode import decode
from vmxaddr.encoder_consumer import CONSUMER, CONSUMER_UNDEFINED, ENCODER, agree, cross
from vmxaddr.encoders import ENCODERS, bochs_2_7, get_encoder, vbox_iem
from vmxaddr.exitinfo import Policy, encode
from vmxaddr.gen import RandomChooser, gen_encoding, gen_state
from vmxaddr.models import REGISTRY, UnknownModel, get, sdm
from vmxaddr.models.xen_port import MNEMONICS, XEN, Quirks, classify, xen_c447b730, xen_model
from vmxaddr.state import CpuState

ZX = Policy()  # the SDM encoder's default: zero-extended qualification, undefined bits zero
SX = Policy(exit_qual="sign-extend")


def ins(hexbytes: str, mode: int):
    return decode(bytes.fromhex(hexbytes.replace(" ", "")), mode)


# -- registry -------------------------------------------------------------------------------------

def test_registry_lists_both_kinds():
    kinds = {(m.name, m.kind) for m in REGISTRY.values()}
    assert {("sdm", "encoder"), ("bochs-2.7", "encoder"), ("vbox-iem", "encoder")} <= kinds
    assert {("sdm", "consumer"), ("xen-c447b730", "consumer")} <= kinds
    assert get("sdm") is sdm  # the consumer of that name, not the encoder
    with pytest.raises(UnknownModel, match="is an encoder"):
        get("vbox-iem")
    assert set(ENCODERS) >= {"sdm", "bochs-2.7", "vbox-iem"}


def test_sdm_encoder_by_hand():
    # VMREAD [EBP-0x28], EAX in 32-bit code (0F 78 /r, ModRM 45: mod 01, reg 000 = EAX, r/m 101 = EBP,
    # disp8 D8). SDM Vol. 3C §28.2.5, VMREAD/VMWRITE layout: reg2 (31:28) EAX = 0; base (26:23)
    # EBP = 5 -> 0x02800000; index invalid (22) -> 0x00400000; segment (17:15) SS (EBP's default,
    # Vol. 1 §3.7.4) = 2 -> 0x00010000; address size (9:7) 32-bit = 1 -> 0x80; bit 10 = 0 (memory).
    # Undefined bits zero under the policy: 0x02c10080. Exit qualification (§28.2.1): the
    # displacement -0x28, here sign-extended to 64 bits by the policy: 0xffffffffffffffd8. Length 4.
    e = get_encoder("sdm")(ins("0f 78 45 d8", 32), 0x1000, SX)
    assert (e.instruction_info, e.exit_qualification, e.length) == (0x02C10080, 0xFFFFFFFFFFFFFFD8, 4)
    e = get_encoder("sdm")(ins("0f 78 45 d8", 32), 0x1000, ZX)  # zero-extended from the address size
    assert (e.instruction_info, e.exit_qualification) == (0x02C10080, 0xFFFFFFD8)


# -- bochs-2.7 --------------------------------------------------------------------------------------

def test_bochs_rdrand_operand_size_from_address_size():
    # 67 0F C7 F0 in 32-bit code: RDRAND EAX (67h changes nothing for the SDM: size 32 -> bits
    # 12:11 = 1). Bochs: the address size, 16 -> 0; plus its bit 10 = 1. reg1 = EAX = 0.
    assert bochs_2_7(ins("67 0f c7 f0", 32)).instruction_info == 0x400
    assert encode(ins("67 0f c7 f0", 32)).instruction_info == 0x800
    # 66 0F C7 F0 in 32-bit code: RDRAND AX (SDM 0). Bochs ignores 66h: 32 -> 1 (0x800) | bit 10.
    assert bochs_2_7(ins("66 0f c7 f0", 32)).instruction_info == 0xC00
    # 48 0F C7 F0 in 64-bit code: RDRAND RAX; REX.W -> 64 -> 2 (0x1000) | bit 10.
    assert bochs_2_7(ins("48 0f c7 f0", 64)).instruction_info == 0x1400


def test_bochs_lgdt_group_operand_size_never_set():
    # 0F 01 45 D8, 32-bit code: SGDT [EBP-0x28], 32-bit operand size. Fields: base EBP 5 << 23 =
    # 0x02800000, index invalid 0x400000, segment SS 2 << 15 = 0x10000, address size 1 << 7 =
    # 0x80, identity SGDT 0 -> 0x02C10080. The SDM adds bit 11 (32-bit operand): 0x02C10880.
    i = ins("0f 01 45 d8", 32)
    assert encode(i).instruction_info == 0x02C10880
    assert bochs_2_7(i).instruction_info == 0x02C10080
    assert bochs_2_7(i).exit_qualification == 0xFFFFFFD8  # masked to the 32-bit address size


def test_bochs_rex_r_in_bit_31_for_descriptor_table_groups():
    # 44 0F 00 10, 64-bit code: LLDT [RAX] with REX.R. Identity LLDT 2 << 28 = 0x20000000, REX.R
    # -> bit 31, address size 64 (2 << 7 = 0x100), DS 3 << 15 = 0x18000, index invalid 0x400000,
    # base RAX 0 -> 0xA0418100 (the SDM leaves bits 31:30 undefined: 0x20418100 from the SDM encoder).
    i = ins("44 0f 00 10", 64)
    assert encode(i).instruction_info == 0x20418100
    assert bochs_2_7(i).instruction_info == 0xA0418100


def test_bochs_qualification_sign_extended_in_64_bit_mode():
    # 67 0F C7 70 D8, 64-bit code: VMPTRLD [EAX-0x28]; the SDM defines bits 31:0 = 0xFFFFFFD8.
    # Bochs in 64-bit mode: displacement sign-extended to 64 bits, whatever the address size.
    i = ins("67 0f c7 70 d8", 64)
    assert bochs_2_7(i).exit_qualification == 0xFFFFFFFFFFFFFFD8
    # 16-bit code, 0F C7 72 D8 = VMPTRLD [BP+SI-0x28]: masked to 16 bits.
    assert bochs_2_7(ins("0f c7 72 d8", 16)).exit_qualification == 0xFFD8
    # RIP-relative, 64-bit: 0F C7 35 10 00 00 00 at 0x1000, 7 bytes: 0x10 + next RIP 0x1007.
    assert bochs_2_7(ins("0f c7 35 10 00 00 00", 64), 0x1000).exit_qualification == 0x1017


def test_bochs_si_di_base_and_default_segment_for_ignored_prefix():
    # 0F C7 34, 16-bit code: VMPTRLD [SI]: base SI 6 (0x03000000), index invalid, DS, 16-bit.
    assert bochs_2_7(ins("0f c7 34", 16)).instruction_info == 0x03418000
    # 2E 0F C7 75 D8, 64-bit: VMPTRLD CS:[RBP-0x28]; CS is ignored: SS (2) is reported.
    assert bochs_2_7(ins("2e 0f c7 75 d8", 64)).instruction_info >> 15 & 7 == 2


# -- vbox-iem ---------------------------------------------------------------------------------------

def test_vbox_index_overwritten_and_base_never_invalid():
    # 0F C7 34 B3, 32-bit: VMPTRLD [EBX+ESI*4]. IEM: scale 2, base EBX valid, index ESI valid;
    # then the index field is overwritten with !base-valid = 0 (EAX). reg2 = r/m = 4 (not a
    # "primary write" ID). Operand size 32 -> bits 12:11 = 1 (0x800, undefined here).
    # 0x40000000 | 3 << 23 | 0 << 18 | DS 0x18000 | 0x800 | 0x80 | 2 = 0x41818882.
    e = vbox_iem(ins("0f c7 34 b3", 32))
    assert e.instruction_info == 0x41818882
    assert e.instruction_info >> 18 & 15 == 0 and not e.instruction_info & (1 << 22)  # index "EAX", valid
    # 0F C7 35 78 56 34 12: VMPTRLD [0x12345678]. No base: IEM never sets bit 27, base field 0;
    # index field = !base-valid = 1 with index invalid. reg2 = r/m 5.
    # 0x50000000 | 1 << 18 | 1 << 22 | 0x18000 | 0x800 | 0x80 = 0x50458880.
    e = vbox_iem(ins("0f c7 35 78 56 34 12", 32))
    assert e.instruction_info == 0x50458880 and e.exit_qualification == 0x12345678


def test_vbox_vmread_registers_swapped():
    # 0F 78 C8, 64-bit: VMREAD RAX, RCX (ModRM reg = RCX = 1, r/m = RAX = 0). SDM: reg1 = r/m = 0,
    # reg2 = reg = 1. IEM (VMREAD has no "primary write" flag): reg1 = 1, reg2 = 0.
    # 1 << 3 | 64-bit 2 << 7 | bit 10 | opsize 64 2 << 11 | bits 22, 27 (undefined here) = 0x08401508.
    assert vbox_iem(ins("0f 78 c8", 64)).instruction_info == 0x08401508
    assert encode(ins("0f 78 c8", 64)).instruction_info == 0x10000400
    # LLDT CX (0F 00 D1): reg1 should be r/m = 1; IEM gives ModRM.reg = 2.
    assert vbox_iem(ins("0f 00 d1", 32)).instruction_info >> 3 & 15 == 2
    # SLDT ECX (0F 00 C1) has the flag: reg1 = 1, as the SDM says.
    assert vbox_iem(ins("0f 00 c1", 32)).instruction_info >> 3 & 15 == 1


def test_vbox_rex_dropped_under_67h():
    # 67 41 0F C7 30, 64-bit: VMPTRLD [R8D]. SDM base 8; IEM's 32-bit path ignores REX.B: 0.
    assert encode(ins("67 41 0f c7 30", 64)).instruction_info >> 23 & 15 == 8
    assert vbox_iem(ins("67 41 0f c7 30", 64)).instruction_info >> 23 & 15 == 0


def test_vbox_rip_relative_from_current_rip_and_sign_extension():
    # 0F C7 35 10 00 00 00 at RIP 0x1000 (7 bytes): SDM 0x10 + 0x1007 = 0x1017; IEM 0x10 + 0x1000.
    assert vbox_iem(ins("0f c7 35 10 00 00 00", 64), 0x1000).exit_qualification == 0x1010
    # 0F C7 74 D8, 16-bit: VMPTRLD [SI-0x28]: displacement -0x28 sign-extended to 64 bits.
    e = vbox_iem(ins("0f c7 74 d8", 16))
    assert e.exit_qualification == 0xFFFFFFFFFFFFFFD8
    # [SI] as index (SI valid), then the index field overwritten with !base-valid = 1 (CX); base
    # field 0 reported valid: a consumer reads [AX + CX*1 - 0x28].
    assert e.instruction_info >> 18 & 31 == 1 and e.instruction_info >> 23 & 31 == 0


def test_vbox_rdrand_as_the_sdm():
    # RDRAND: reg1, operand size, undefined bits cleared — same as the SDM encoder (zero policy).
    for h, mode in (("66 0f c7 f0", 32), ("0f c7 f1", 32), ("48 0f c7 f0", 64), ("0f c7 f9", 16)):
        i = ins(h, mode)
        assert vbox_iem(i).instruction_info == encode(i).instruction_info, h


def test_emulator_encoders_differ_only_where_documented():
    # Over random instructions (every mnemonic, form, prefix), the defined fields an emulator
    # encoder gets wrong are only those its docstring lists.
    from vmxaddr.encoder_consumer import defined_differences
    from vmxaddr.gen import MNEMONICS as ALL

    allowed = {"bochs-2.7": {"operand size"},
               # segment: an ignored 64-bit-mode prefix, reported by IEM (the SDM encoder's default
               # policy reports the default segment)
               "vbox-iem": {"index", "base invalid", "base", "index invalid", "exit qualification", "reg1", "reg2",
                            "segment"}}
    ch = RandomChooser(random.Random(3))
    seen: dict[str, set[str]] = {k: set() for k in allowed}
    for _ in range(3000):
        raw, cs = gen_encoding(ch, mnemonics=ALL, register_forms=0.2)
        c = Case(decode(raw, cs), CpuState.for_code_size(cs), ZX)
        for name in allowed:
            d = set(defined_differences(c, get_encoder(name)(c.instruction, c.state.rip, ZX), c.exit))
            assert d <= allowed[name], (name, raw.hex(), cs, d)
            seen[name] |= d
    assert seen["bochs-2.7"] == {"operand size"}
    assert {"index", "base invalid", "base", "exit qualification", "reg1", "reg2"} <= seen["vbox-iem"]


# -- xen-c447b730 -----------------------------------------------------------------------------------

def run(model, hexbytes, code, policy=ZX, **state_json):
    st = CpuState.from_json(state_json, CpuState.for_code_size(code))
    c = Case.from_bytes(bytes.fromhex(hexbytes.replace(" ", "")), st, policy)
    return c.run(model, explain=True)


def test_xen_negative_displacement_zero_extended_qualification():
    # 0F 78 45 D8, 32-bit: VMREAD [EBP-0x28], EBP = 0x1000. Hardware reporting 0xFFFFFFD8 (zero-
    # extended): Xen adds all 64 bits: 0x1000 + 0xFFFFFFD8 = 0x100000FD8; + 4 - 1 > SS limit
    # 0xFFFFFFFF -> #GP(0). The SDM: EA = 0xFD8 (mod 2^32), within the limit.
    x = run(xen_c447b730, "0f 78 45 d8", 32, registers={"ebp": 0x1000})
    assert (x.outcome.vector, x.effective_address) == ("GP", 0x100000FD8)
    s = run(sdm, "0f 78 45 d8", 32, registers={"ebp": 0x1000})
    assert s.outcome.kind == "ok" and s.linear_address == 0xFD8
    # A processor sign-extending the qualification: 0x1000 - 0x28 = 0xFD8 for Xen too.
    x = run(xen_c447b730, "0f 78 45 d8", 32, SX, registers={"ebp": 0x1000})
    assert x.outcome.kind == "ok" and x.linear_address == 0xFD8


def test_xen_full_register_values_and_no_wrap():
    # 0F C7 30, 32-bit: VMPTRLD [EAX], RAX = 0x1_0000_1000 (bits above 31 left by earlier code).
    # Xen: offset 0x100001000 > limit -> #GP(0); SDM: EA = 0x1000.
    x = run(xen_c447b730, "0f c7 30", 32, registers={"rax": 0x100001000})
    assert x.outcome.vector == "GP" and x.effective_address == 0x100001000
    # DS base 0xFFFFF000, EAX 0x2000, flat limit: SDM linear (0xFFFFF000 + 0x2000) mod 2^32 =
    # 0x1000; Xen 0x100001000 (the limit check passes: 0x2007 <= 0xFFFFFFFF).
    kw = dict(registers={"eax": 0x2000}, segments={"ds": {"base": 0xFFFFF000}})
    assert run(sdm, "0f c7 30", 32, **kw).linear_address == 0x1000
    x = run(xen_c447b730, "0f c7 30", 32, **kw)
    assert x.outcome.kind == "ok" and x.linear_address == 0x100001000


def test_xen_access_length_from_address_size():
    # VMPTRLD [EAX] reads 8 bytes. DS limit 0xFFF, EAX = 0xFFC: SDM last byte 0x1003 > 0xFFF ->
    # #GP(0). Xen checks 4 bytes (32-bit address size): 0xFFF <= 0xFFF -> no fault.
    kw = dict(registers={"eax": 0xFFC}, segments={"ds": {"limit": 0xFFF}})
    assert run(sdm, "0f c7 30", 32, **kw).outcome.vector == "GP"
    x = run(xen_c447b730, "0f c7 30", 32, **kw)
    assert x.outcome.kind == "ok" and any(s.name == "access-length" and s.value == 4 for s in x.steps)
    # 16-bit addressing: 2 bytes. 0F C7 37 = VMPTRLD [BX], BX = 0xFFE, limit 0xFFF: Xen ok.
    assert run(xen_c447b730, "0f c7 37", 16, registers={"bx": 0xFFE}, segments={"ds": {"limit": 0xFFF}}).outcome.kind == "ok"


def test_xen_no_segment_checks_and_always_gp():
    # SS:[EBP] with SS limit 0xFFF, EBP 0x2000: SDM #SS(0), Xen #GP(0).
    kw = dict(registers={"ebp": 0x2000}, segments={"ss": {"limit": 0xFFF}})
    assert run(sdm, "0f c7 75 00", 32, **kw).outcome.vector == "SS"
    assert run(xen_c447b730, "0f c7 75 00", 32, **kw).outcome.vector == "GP"
    # Unusable DS: SDM #GP(0); Xen reads it as a segment like any other -> ok.
    assert run(sdm, "0f c7 30", 32, segments={"ds": {"unusable": 1}}).outcome.vector == "GP"
    assert run(xen_c447b730, "0f c7 30", 32, segments={"ds": {"unusable": 1}}).outcome.kind == "ok"
    # VMPTRST [EAX] (0F C7 38) writes: read-only data DS (type 1): SDM #GP(0); Xen ok.
    assert run(sdm, "0f c7 38", 32, segments={"ds": {"type": 1}}).outcome.vector == "GP"
    assert run(xen_c447b730, "0f c7 38", 32, segments={"ds": {"type": 1}}).outcome.kind == "ok"
    # Expand-down DS (type 7), limit 0xFFF, B = 1: offsets 0x1000..0xFFFFFFFF are valid; EAX 0x2000
    # is fine for the SDM; Xen checks it as expand-up: 0x2007 > 0xFFF -> #GP(0).
    kw = dict(registers={"eax": 0x2000}, segments={"ds": {"type": 7, "limit": 0xFFF}})
    assert run(sdm, "0f c7 30", 32, **kw).outcome.kind == "ok"
    assert run(xen_c447b730, "0f c7 30", 32, **kw).outcome.vector == "GP"


def test_xen_64_bit_checks():
    # RAX = 0x7FFFFFFFFFFC: the first byte is canonical, the last (0x800000000003) is not: Xen
    # checks the last byte of a non-negative address, and so does the SDM model (every byte): both #GP(0).
    assert run(sdm, "0f c7 30", 64, registers={"rax": 0x7FFFFFFFFFFC}).outcome.vector == "GP"
    assert run(xen_c447b730, "0f c7 30", 64, registers={"rax": 0x7FFFFFFFFFFC}).outcome.vector == "GP"
    # CR4.LA57 = 1, RAX = 2^47: canonical in 57 bits (SDM ok), not in 48 (Xen #GP(0)).
    kw = dict(cr4={"la57": 1}, registers={"rax": 1 << 47})
    assert run(sdm, "0f c7 30", 64, **kw).outcome.kind == "ok"
    assert run(xen_c447b730, "0f c7 30", 64, **kw).outcome.vector == "GP"
    # RAX = 2^64 - 4: 0xFFFFFFFFFFFFFFFC + 7 wraps past 2^64: Xen #GP(0); for the SDM model both the
    # first byte and the last (0x3, after the wrap) are canonical: ok.
    assert run(sdm, "0f c7 30", 64, registers={"rax": (1 << 64) - 4}).outcome.kind == "ok"
    assert run(xen_c447b730, "0f c7 30", 64, registers={"rax": (1 << 64) - 4}).outcome.vector == "GP"
    # DS base ignored, FS base added (64-bit): 64 0F C7 30, FS base 2^32, RAX 0x1000 -> 0x100001000.
    x = run(xen_c447b730, "64 0f c7 30", 64, registers={"rax": 0x1000}, segments={"fs": {"base": 1 << 32}, "ds": {"base": 0x5000}})
    assert x.linear_address == 0x100001000
    assert run(xen_c447b730, "0f c7 30", 64, registers={"rax": 0x1000}, segments={"ds": {"base": 0x5000}}).linear_address == 0x1000


def test_xen_mode_and_cpl():
    # nvmx_handle_vmx_insn(): #UD in compatibility, real, virtual-8086 mode; #GP(0) at CPL 3.
    for mode in ("compatibility", "real", "virtual-8086"):
        assert run(xen_c447b730, "0f c7 30", 32, mode=mode).outcome.vector == "UD"
    assert run(xen_c447b730, "0f c7 30", 32, cpl=3).outcome.vector == "GP"
    # Register operand: 0F 78 C8 VMREAD EAX, ECX -> no memory.
    assert run(xen_c447b730, "0f 78 c8", 32).outcome.rule == "register-operand"


def test_xen_with_every_difference_corrected_is_the_sdm():
    # The classifier relies on this: Quirks all False must agree with the SDM on Xen's instructions.
    off = Quirks(**{f.name: False for f in fields(Quirks)})
    ch = RandomChooser(random.Random(7))
    n = 0
    while n < 3000:
        raw, cs = gen_encoding(ch, mnemonics=MNEMONICS)
        c = Case(decode(raw, cs), gen_state(ch, cs), Policy(exit_qual=ch.choice(("zero-extend", "sign-extend"))))
        e, a = c.exit, c.access
        assert agree(sdm(e, c.state, a), xen_model(off, e, c.state, a)), (raw.hex(), cs, c.state)
        n += 1


def test_xen_classify_names_the_correcting_difference():
    st = CpuState.for_code_size(32).with_reg("ebp", 0x1000)
    c = Case(ins("0f 78 45 d8", 32), st, ZX)
    ref = sdm(c.exit, st, c.access)
    assert classify(c.exit, st, c.access, ref) == "Xen: exit-qualification bits above the address size used"
    st = CpuState.for_code_size(32).with_reg("eax", 0xFFC).with_segment("ds", limit=0xFFF)
    c = Case(ins("0f c7 30", 32), st, ZX)
    assert classify(c.exit, st, c.access, sdm(c.exit, st, c.access)) == "Xen: access length taken from the address size"
    assert replace(XEN, always_gp=False) != XEN


# -- encoder x consumer ----------------------------------------------------------------------------

def test_cross_attributes_the_side():
    # vbox-iem + the SDM consumer on VMPTRLD [EBX+ESI*4], EBX 0x1000, ESI 0x10, EAX 0x5000: the
    # consumer reads index "EAX": 0x1000 + 0x5000*4 vs 0x1000 + 0x40 -> the encoder's fault.
    st = CpuState.for_code_size(32).with_reg("ebx", 0x1000).with_reg("esi", 0x10).with_reg("eax", 0x5000)
    x = cross(Case(ins("0f c7 34 b3", 32), st), "vbox-iem", sdm, sdm)
    assert x.side == ENCODER and x.fields[0] == "index" and x.got.linear_address == 0x15000 and x.ref.linear_address == 0x1040
    # vbox-iem + Xen on VMPTRLD [EBP-0x28] (32-bit, EBP 0x1000): the defined low 32 bits agree,
    # IEM sign-extends to 64 and Xen — which uses all 64 — gets 0xFD8, as does the reference.
    # With the SDM's zero-extended report Xen faults (VMREAD here): a consumer difference, seen
    # under the sdm encoder only.
    st = CpuState.for_code_size(32).with_reg("ebp", 0x1000)
    assert cross(Case(ins("0f c7 75 d8", 32), st), "vbox-iem", xen_c447b730, sdm).side is None
    # The same VMREAD under vbox-iem: reg2 (the field-encoding register, defined) is the r/m bits
    # 5 instead of ModRM.reg 0 — an encoder divergence although the addresses agree.
    x = cross(Case(ins("0f 78 45 d8", 32), st), "vbox-iem", xen_c447b730, sdm)
    assert x.side == ENCODER and x.fields == ("reg2",) and agree(x.ref, x.got)
    x = cross(Case(ins("0f 78 45 d8", 32), st), "sdm", xen_c447b730, sdm, classify)
    assert x.side == CONSUMER and x.klass == "Xen: exit-qualification bits above the address size used"
    # bochs-2.7 + Xen, 64-bit VMPTRLD [EAX-0x28] (67h), EAX 0x1000: Bochs writes 0xFF..FFD8,
    # the SDM encoder 0xFFFFFFD8 (zero-extend). Xen on the SDM's value: 0x1000 + 0xFFFFFFD8 =
    # 0x100000FD8, canonical -> ok but not the SDM's 0xFD8; on Bochs's: 0xFD8 = the SDM. So here the
    # consumer diverges on the SDM encoder's bits and agrees on Bochs's.
    st = CpuState.for_code_size(64).with_reg("rax", 0x1000)
    assert cross(Case(ins("67 0f c7 70 d8", 64), st), "bochs-2.7", xen_c447b730, sdm).side is None
    # Undefined bits: VMPTRLD [EBP-0x28] (0F C7 75 D8; VMREAD would not do: IEM's VMREAD reg2 is
    # wrong, a defined field), EBP 0x10, 32-bit. SDM EA (0x10 - 0x28) mod 2^32 = 0xFFFFFFE8, ok.
    # Xen on the SDM encoder's 0xFFFFFFD8: 0x10 + 0xFFFFFFD8 = 0xFFFFFFE8, ok —
    # it agrees. On vbox-iem's 0xFFFFFFFFFFFFFFD8 (same low 32 bits): offset 0xFFFFFFFFFFFFFFE8,
    # + 7 > limit 0xFFFFFFFF -> #GP(0): Xen read bits the SDM leaves undefined.
    st = CpuState.for_code_size(32).with_reg("ebp", 0x10)
    x = cross(Case(ins("0f c7 75 d8", 32), st), "vbox-iem", xen_c447b730, sdm, classify)
    assert x.side == CONSUMER_UNDEFINED and x.got.outcome.vector == "GP" and x.ref.linear_address == 0xFFFFFFE8
    assert x.klass == "consumer reads exit-qualification bits above the address size (as written by vbox-iem)"


# -- witnesses ------------------------------------------------------------------------------------

WITNESSES = json.loads((Path(__file__).resolve().parent.parent / "corpus" / "witnesses" / "peers.json").read_text())["cases"]


@pytest.mark.parametrize("w", WITNESSES, ids=[w["id"] for w in WITNESSES])
def test_witness(w):
    from corpus_util import outcome_text

    st = CpuState.from_json(w.get("state", {}), CpuState.for_code_size(w["mode"]))
    c = Case(ins(w["bytes"], w["mode"]), st, Policy(**w.get("policy", {})))
    model = get(w["model"])
    x = cross(c, w.get("encoder", "sdm"), model, get(w.get("against", "sdm")), getattr(model, "classify", None))
    exp = w["expect"]
    assert outcome_text(x.got.outcome) == exp["model"]["outcome"]
    assert outcome_text(x.ref.outcome) == exp["against"]["outcome"]
    for side, r in (("model", x.got), ("against", x.ref)):
        if "linear_address" in exp[side]:
            assert r.linear_address == int(exp[side]["linear_address"], 16), side
    assert x.side == w["side"] and x.klass == w["class"]
    assert x.side == ENCODER or not agree(x.ref, x.got)


@pytest.mark.parametrize("w", WITNESSES, ids=[w["id"] for w in WITNESSES])
def test_witness_command_reproduces(w, capsys):
    # The command printed in the findings pages gives the same side and class.
    import shlex

    from vmxaddr.cli import main

    argv = shlex.split(w["command"])
    assert argv[0] == "vmxaddr"
    assert main(argv[1:] + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["side"], out["class"]) == (w["side"], w["class"])


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_reports_the_defined_fields_of_vmptrld_eax(name):
    # VMPTRLD [EAX] in 32-bit code (0F C7 /6, ModRM 30: mod 00, reg 110, r/m 000 = EAX). SDM Vol. 3C
    # §28.2.5, the VMCLEAR/VMPTRLD/VMPTRST/VMXON layout defines: address size (9:7) 32-bit = 1 ->
    # 0x80; segment (17:15) DS = 3 -> 0x18000; index invalid (22) -> 0x400000; base (26:23) EAX = 0,
    # base valid (27 = 0). Together 0x00418080 on the mask 0x0fc38380 (the other bits are undefined:
    # each encoder may fill them). Exit qualification: displacement 0. Length 3.
    e = ENCODERS[name].function(ins("0f c7 30", 32), 0x1000, ZX)
    assert (e.instruction_info & 0x0FC38380, e.exit_qualification, e.length) == (0x00418080, 0, 3)


# -- diff and fuzz with --encoder ---------------------------------------------------------------------

def test_diff_with_encoder_names_the_encoder():
    from vmxaddr.diff import diff_case

    # The vbox-index-overwritten witness through `vmxaddr diff`: the reference sdm gets the SDM's
    # information (0x1040), kvm-current gets IEM's (index "EAX": 0x15000).
    st = CpuState.for_code_size(32).with_reg("ebx", 0x1000).with_reg("esi", 0x10).with_reg("eax", 0x5000)
    d = diff_case(Case(ins("0f c7 34 b3", 32), st), [("sdm", sdm), ("kvm-current", get("kvm-current"))], encoder="vbox-iem")
    assert d.results["sdm"].linear_address == 0x1040 and d.results["kvm-current"].linear_address == 0x15000
    assert [x.name for x in d.divergences] == ["encoder vbox-iem: index differs from the SDM"]
    # Without an encoder, the same case agrees.
    assert diff_case(Case(ins("0f c7 34 b3", 32), st), [("sdm", sdm), ("kvm-current", get("kvm-current"))]).agree


def test_diff_uses_the_models_own_classes():
    from vmxaddr.diff import diff_case

    st = CpuState.for_code_size(32).with_reg("ebp", 0x1000)
    d = diff_case(Case(ins("0f 78 45 d8", 32), st), [("sdm", sdm), ("xen", xen_c447b730)])
    assert [x.name for x in d.divergences] == ["Xen: exit-qualification bits above the address size used"]


def test_fuzz_with_encoder_small():
    from vmxaddr.fuzz import command, fuzz

    rep = fuzz(get("kvm-current"), sdm, seed=1, max_examples=400, shrink=False, encoder="vbox-iem",
               names=("kvm-current", "sdm"))
    assert rep.encoder == "vbox-iem"
    assert any(n.startswith("encoder vbox-iem: ") for n in rep.classes)
    c = next(iter(rep.classes.values()))
    assert command(c.witness, ["sdm", "kvm-current"], "vbox-iem").startswith("vmxaddr diff --encoder vbox-iem --models sdm,kvm-current")
    rep = fuzz(xen_c447b730, sdm, seed=1, max_examples=400, shrink=False, names=("xen-c447b730", "sdm"))
    assert rep.classes and all(n.startswith("Xen: ") for n in rep.classes)


def test_cli_rejects_unknown_encoder(capsys):
    from vmxaddr.cli import main

    assert main(["diff", "--encoder", "nope", "--models", "sdm,kvm-current", "--mode", "32", "0f c7 30"]) == 2
    assert "unknown encoder" in capsys.readouterr().err
    assert main(["explain", "--model", "vbox-iem", "--mode", "32", "0f c7 30"]) == 2


FUZZ_CORPORA = sorted((Path(__file__).resolve().parent.parent / "corpus" / "witnesses").glob("fuzz-*.json"))
FUZZ_WITNESSES = [(p.name, c) for p in FUZZ_CORPORA for c in json.loads(p.read_text())["cases"]]


@pytest.mark.parametrize("item", FUZZ_WITNESSES, ids=[f"{n}:{c['class'][:60]}" for n, c in FUZZ_WITNESSES])
def test_fuzz_witness_still_shows_its_class(item):
    # Recorded by `vmxaddr fuzz --out` (issue 9's campaigns): a regression check that each minimal
    # witness still separates the two models with the same class and the same answers.
    from vmxaddr.diff import case_divergence
    from vmxaddr.fuzz import answer

    _, w = item
    st = CpuState.from_json(w["state"], CpuState.for_code_size(w["mode"]))
    c = Case(ins(w["bytes"], w["mode"]), st, Policy(**w.get("policy", {})))
    against, model = w["models"]
    encoder = w.get("encoder", "sdm")
    assert case_divergence(c, get(model), get(against), encoder) == w["class"]
    x = cross(c, encoder, get(model), get(against))
    assert answer(x.got) == w["answers"][model] and answer(x.ref) == w["answers"][against]
