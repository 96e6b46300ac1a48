"""Bochs as the hardware oracle (issue 8).

The expected values below are derived by hand from the SDM (Vol. 3C §28.2.5,
"Format of the VM-Exit Instruction-Information Field as Used for ..."; §28.2.1 for
the exit qualification), never by running the encoder under test.  Field positions:
  1:0 scaling, 6:3 reg1, 9:7 address size (0 16-bit, 1 32-bit, 2 64-bit), 10 mem/reg,
  11 LGDT-group operand size, 17:15 segment (0 ES 1 CS 2 SS 3 DS 4 FS 5 GS),
  21:18 index, 22 index invalid, 26:23 base, 27 base invalid, 31:28 reg2,
  29:28 identity (DT: SGDT 0 SIDT 1 LGDT 2 LIDT 3; LDT: SLDT 0 STR 1 LLDT 2 LTR 3).
RDRAND/RDSEED: 6:3 destination register, 12:11 operand size.

All cases of this module run in one Bochs boot (module fixture).  The tests skip
only when bochs/binutils are missing; under CI (env CI set) they fail instead.
"""

from __future__ import annotations

import pytest
from ci_policy import under_ci

from vmxaddr.oracles import bochs as B

pytestmark = pytest.mark.bochs

# masks of SDM-defined bits
SCALE, REG1, ASZ, MEMREG, DTOPS = 0x3, 0xF << 3, 0x7 << 7, 1 << 10, 1 << 11
SEG, INDEX, INDEX_INV, BASE, BASE_INV = 0x7 << 15, 0xF << 18, 1 << 22, 0xF << 23, 1 << 27
REG2, IDENT, RDOPS = 0xF << 28, 0x3 << 28, 0x3 << 11
MEM = ASZ | MEMREG | SEG | INDEX_INV | BASE_INV  # + BASE / INDEX|SCALE when valid
ZERO_REGS = {r: 0 for r in ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi")}

# (id, hex bytes, code size, exit reason, length, expected info, mask, expected qualification
#  on the address-size bits or None for "don't compare")
RAW: list[tuple[str, str, int, int, int, int, int, int | None]] = [
    # VMREAD [EBP-0x28], EAX (0F 78 /r, ModRM 45 = mod 01 reg 000 rm 101, disp8 d8):
    # asz 32 -> 1<<7; rBP base -> default SS (2<<15); base 5<<23; no index (bit 22);
    # bit 10 = 0 (memory); reg2 = ModRM.reg = EAX = 0.  = 0x02c10080.  Qual = -0x28.
    ("vmread-ebp-32", "0f7845d8", 32, 23, 4, 0x02C10080, MEM | BASE | REG2, 0xFFFFFFD8),
    # the same bytes in 16-bit code: rm 101 mod 01 = [DI+disp8]: asz 0, DS (3<<15),
    # base DI 7<<23 (SI/DI as base: the Bochs convention the core defaults to), no index.
    ("vmread-di-16", "0f7845d8", 16, 23, 4, 0x03C18000, MEM | BASE | REG2, 0xFFD8),
    # in 64-bit code: [RBP-0x28], asz 2 -> 2<<7 = 0x100.
    ("vmread-rbp-64", "0f7845d8", 64, 23, 4, 0x02C10100, MEM | BASE | REG2, 0xFFFFFFFFFFFFFFD8),
    # VMREAD EAX, ECX register form (ModRM c8: mod 11 reg 001 rm 000): bit 10 = 1,
    # reg1 = r/m = EAX 0, reg2 = ECX 1<<28.  Qualification 0 (no displacement).
    ("vmread-reg-32", "0f78c8", 32, 23, 3, 0x10000400, MEMREG | REG1 | REG2, 0),
    # VMWRITE with REX.R|REX.B register form in 64-bit (4d 0f 79 c8): reg1 = r8 (8<<3),
    # reg2 = r9 (9<<28), bit 10.
    ("vmwrite-reg-64", "4d0f79c8", 64, 25, 4, 0x90000440, MEMREG | REG1 | REG2, 0),
    # VMPTRLD [EAX] (0F C7 /6, ModRM 30): asz 1, DS, base 0, no index. = 0x00418080
    ("vmptrld-eax-32", "0fc730", 32, 21, 3, 0x00418080, MEM | BASE, 0),
    # 16-bit [BX+SI] (ModRM 30 in 16-bit addressing): base BX 3<<23, index SI 6<<18,
    # scaling 0, DS, asz 0. = 0x01998000
    ("vmptrld-bxsi-16", "0fc730", 16, 21, 3, 0x01998000, MEM | BASE | INDEX | SCALE, 0),
    # VMPTRST [RAX] 64-bit: asz 2 -> 0x00418100
    ("vmptrst-rax-64", "0fc738", 64, 22, 3, 0x00418100, MEM | BASE, 0),
    # VMCLEAR (66 0F C7 /6) and VMXON (F3 0F C7 /6) [EAX] in 32-bit: same as VMPTRLD.
    ("vmclear-eax-32", "660fc730", 32, 19, 4, 0x00418080, MEM | BASE, 0),
    ("vmxon-eax-32", "f30fc730", 32, 27, 4, 0x00418080, MEM | BASE, 0),
    # INVEPT/INVVPID/INVPCID ECX, [EBP-0x28] (66 0F 38 8x, ModRM 4d: reg 001): reg2 = 1.
    ("invept-32", "660f38804dd8", 32, 50, 6, 0x12C10080, MEM | BASE | REG2, 0xFFFFFFD8),
    ("invvpid-32", "660f38814dd8", 32, 53, 6, 0x12C10080, MEM | BASE | REG2, 0xFFFFFFD8),
    ("invpcid-32", "660f38824dd8", 32, 58, 6, 0x12C10080, MEM | BASE | REG2, 0xFFFFFFD8),
    # SGDT/SIDT/LGDT/LIDT [EBP-0x28] (0F 01 /0../3) 16-bit code with 67h (32-bit addressing),
    # no 66h -> operand size 16 (bit 11 = 0); identity in 29:28.
    ("sgdt-16", "670f0145d8", 16, 46, 5, 0x02C10080, MEM | BASE | IDENT | DTOPS, 0xFFFFFFD8),
    ("sidt-16", "670f014dd8", 16, 46, 5, 0x12C10080, MEM | BASE | IDENT | DTOPS, 0xFFFFFFD8),
    ("lgdt-16", "670f0155d8", 16, 46, 5, 0x22C10080, MEM | BASE | IDENT | DTOPS, 0xFFFFFFD8),
    ("lidt-16", "670f015dd8", 16, 46, 5, 0x32C10080, MEM | BASE | IDENT | DTOPS, 0xFFFFFFD8),
    # 64-bit: bit 11 undefined.  LIDT [RSI+RCX*4+0x10] (ModRM 5c, SIB 8e, disp8 10):
    # scaling 2, index RCX 1<<18, base RSI 6<<23, DS, asz 2, identity 3.
    ("lidt-sib-64", "0f015c8e10", 64, 46, 5, 0x33058102, MEM | BASE | INDEX | SCALE | IDENT, 0x10),
    # STR [R8+R13*8] (REX 43 = X|B; ModRM 0c: reg 001 rm 100; SIB e8: ss 11 index 101 base 000):
    # scaling 3, index 13<<18, base 8<<23, DS, asz 2, identity 1.  = 0x14358103
    ("str-rex-64", "430f000ce8", 64, 47, 5, 0x14358103, MEM | BASE | INDEX | SCALE | IDENT, 0),
    # LLDT ECX (0F 00 /2, ModRM d1): bit 10, reg1 = 1<<3, identity 2.  = 0x20000408
    ("lldt-reg-32", "0f00d1", 32, 47, 3, 0x20000408, MEMREG | REG1 | IDENT, 0),
    ("ltr-reg-16", "0f00db", 16, 47, 3, 0x30000418, MEMREG | REG1 | IDENT, 0),
    # SLDT [0x1234] 16-bit (ModRM 06 disp16): no base, no index, DS, asz 0. = 0x08418000
    ("sldt-disp16-16", "0f00063412", 16, 47, 5, 0x08418000, MEM, 0x1234),
    # VMREAD [ECX*4+0x12345678], EAX 32-bit (ModRM 04, SIB 8d: ss 10, index ecx, base 101
    # with mod 00 = none): scaling 2, index 1<<18, base invalid, DS, asz 1. = 0x08058082
    ("vmread-sib-nobase-32", "0f78048d78563412", 32, 23, 8, 0x08058082, MEM | INDEX | SCALE | REG2,
     0x12345678),
    # 32-bit code with 67h: 16-bit addressing, ModRM 46 = [BP+disp8]: SS, base BP 5, asz 0.
    ("vmread-bp-67-32", "670f7846d8", 32, 23, 5, 0x02C10000, MEM | BASE | REG2, 0xFFD8),
    # 64-bit code with 67h: 32-bit addressing [EBP-0x28]: asz 1.
    ("vmread-ebp-67-64", "670f7845d8", 64, 23, 5, 0x02C10080, MEM | BASE | REG2, 0xFFFFFFD8),
    # FS override on [EAX] 32-bit: segment 4<<15. = 0x00420080
    ("vmread-fs-32", "640f7800", 32, 23, 4, 0x00420080, MEM | BASE | REG2, 0),
    # GS override in 64-bit mode takes effect: 5<<15. = 0x00428100
    ("vmread-gs-64", "650f7800", 64, 23, 4, 0x00428100, MEM | BASE | REG2, 0),
    # RDRAND EAX 32-bit (0F C7 /6 mod 11): reg 0, operand size 32 -> 1<<11.
    ("rdrand-32", "0fc7f0", 32, 57, 3, 0x00000800, REG1 | RDOPS, None),
    # RDSEED RCX with REX.W in 64-bit: reg 1<<3, operand size 64 -> 2<<11.
    ("rdseed-rexw-64", "480fc7f9", 64, 61, 4, 0x00001008, REG1 | RDOPS, None),
    # RDSEED ECX 16-bit code without 66h: operand size 16 -> 0.
    ("rdseed-16", "0fc7f9", 16, 61, 3, 0x00000008, REG1 | RDOPS, None),
]


@pytest.fixture(scope="module")
def oracle() -> dict[str, object]:
    missing = B.missing_tools()
    if missing:
        msg = "Bochs oracle needs: " + ", ".join(missing) + " (run scripts/system-deps.sh as root)"
        if under_ci():
            pytest.fail("CI must not skip the Bochs oracle: " + msg)
        pytest.skip(msg)
    raw = [B.Case(bytes.fromhex(h), cs, ZERO_REGS) for _, h, cs, *_ in RAW]
    extra = {
        # 64-bit RIP-relative VMREAD [RIP+0x1000]: base and index invalid; qualification
        # = displacement + address of the next instruction (§28.2.1).
        "riprel": B.Case(bytes.fromhex("0f780500100000"), 64),
        # SDM-open points (notes §2): ignored CS override in 64-bit mode on [RBP-0x28];
        # ignored SS override on [RAX]; 16-bit [SI]
        "cs-ignored-64": B.Case(bytes.fromhex("2e0f7845d8"), 64),
        "ss-ignored-64": B.Case(bytes.fromhex("360f7800"), 64),
        "si-16": B.Case(bytes.fromhex("0f7804"), 16),
        # documented Bochs deviations
        "sgdt-32": B.Case(bytes.fromhex("0f0145d8"), 32),
        "lgdt-66-16": B.Case(bytes.fromhex("660f0155d8"), 16),
        "rdrand-66-32": B.Case(bytes.fromhex("660fc7f0"), 32),
        "rdrand-67-32": B.Case(bytes.fromhex("670fc7f0"), 32),
        "rdrand-67-16": B.Case(bytes.fromhex("670fc7f0"), 16),
        "rdrand-66-64": B.Case(bytes.fromhex("660fc7f0"), 64),
        # XSAVES/XRSTORS [EDI] with EDX:EAX = all ones: no IA32_XSS bit exists in Bochs 2.7
        "xsaves-32": B.Case(bytes.fromhex("0fc72f"), 32, {"eax": 0xFFFFFFFF, "edx": 0xFFFFFFFF, "edi": 0x1000}),
        "xrstors-64": B.Case(bytes.fromhex("0fc71f"), 64, {"eax": 0xFFFFFFFF, "edx": 0xFFFFFFFF, "edi": 0x1000}),
        # CPL 3 (SDM 26.1.1: privilege faults before VM exits; VMX instructions exit first)
        "cpl3-vmptrld-32": B.Case(bytes.fromhex("0fc730"), 32, cpl=3),
        "cpl3-sgdt-64": B.Case(bytes.fromhex("0f0145d8"), 64, cpl=3),
        "cpl3-lgdt-32": B.Case(bytes.fromhex("0f0155d8"), 32, cpl=3),
        "cpl3-ltr-reg-16": B.Case(bytes.fromhex("0f00d9"), 16, cpl=3),
        "cpl3-invpcid-64": B.Case(bytes.fromhex("660f388245d8"), 64, cpl=3),
    }
    coverage = B.coverage_cases()
    randoms = B.random_cases(1500, seed=8)
    cases = raw + list(extra.values()) + coverage + randoms
    run = B.boot(cases, timeout=240)
    n_raw, n_extra = len(raw), len(extra)
    return {
        "run": run,
        "raw": run.records[:n_raw],
        "extra": dict(zip(extra, run.records[n_raw:n_raw + n_extra], strict=True)),
        "coverage": (coverage, run.records[n_raw + n_extra:n_raw + n_extra + len(coverage)]),
        "random": (randoms, run.records[n_raw + n_extra + len(coverage):]),
    }


def test_vmm_reports_its_controls(oracle: dict) -> None:
    run: B.BochsRun = oracle["run"]
    proc2_in_use = int(run.cap.split()[1], 16)
    # descriptor-table exiting (2), RDRAND exiting (11), enable INVPCID (12), RDSEED exiting (16)
    for bit in (2, 11, 12, 16):
        assert proc2_in_use >> bit & 1, f"secondary control bit {bit} not available"
    assert not run.extra


@pytest.mark.parametrize("idx", range(len(RAW)), ids=[r[0] for r in RAW])
def test_raw_against_sdm(oracle: dict, idx: int) -> None:
    _name, _hex, cs, reason, length, info, mask, qual = RAW[idx]
    rec: B.Record | None = oracle["raw"][idx]
    assert rec is not None, "no VM exit"
    # an exception exit here would mean Bochs touched the (unmapped) operand first
    assert rec.basic_reason == reason, f"exit reason {rec.basic_reason} intr {rec.interruption_info:#x}"
    assert rec.length == length
    if mask & IDENT and reason == 46 and cs != 64:
        # Bochs never sets the LGDT-group operand-size bit (known-oracle-issues.md);
        # these cases expect 16-bit (0), so the bit is still checked.
        assert info & DTOPS == 0
    assert rec.instruction_info & mask == info, f"{rec.instruction_info:#010x} & {mask:#010x}"
    if qual is not None:
        # only the bits within the operand's address size are defined (§28.2.1); the
        # address size is the one written into the expected info above
        width = {0: 16, 1: 32, 2: 64}[info >> 7 & 7] if mask & ASZ else 64
        assert rec.exit_qualification & ((1 << width) - 1) == qual


def test_riprelative_qualification(oracle: dict) -> None:
    rec = oracle["extra"]["riprel"]
    assert rec.basic_reason == 23 and rec.length == 7
    # base invalid (bit 27), index invalid (22), DS, asz 64: 0x08418100
    assert rec.instruction_info & (MEM | REG2) == 0x08418100
    assert rec.exit_qualification == 0x1000 + rec.guest_rip + 7


def test_open_points_as_bochs_reports_them(oracle: dict) -> None:
    ex = oracle["extra"]
    # ignored CS override on [RBP-0x28] in 64-bit mode: Bochs reports SS (the default), 0x02c10100
    assert ex["cs-ignored-64"].instruction_info & (MEM | BASE) == 0x02C10100
    # ignored SS override on [RAX]: Bochs reports DS: 0x00418100
    assert ex["ss-ignored-64"].instruction_info & (MEM | BASE) == 0x00418100
    # 16-bit [SI]: Bochs reports SI as base (6<<23), index invalid: 0x03418000
    assert ex["si-16"].instruction_info & (MEM | BASE | INDEX) == 0x03418000


def test_bochs_deviation_lgdt_group_operand_size(oracle: dict) -> None:
    ex = oracle["extra"]
    # SDM: bit 11 = 1 for a 32-bit operand size (32-bit code, or 66h in 16-bit code).
    # Bochs 2.7 leaves it 0 (docs/known-oracle-issues.md).
    assert ex["sgdt-32"].instruction_info & DTOPS == 0
    assert ex["lgdt-66-16"].instruction_info & DTOPS == 0


def test_bochs_deviation_rdrand_operand_size(oracle: dict) -> None:
    ex = oracle["extra"]
    # SDM: 66h -> 16-bit operand in 32-bit code (0); Bochs reports 32 (1<<11).
    assert ex["rdrand-66-32"].instruction_info & RDOPS == 1 << 11
    # SDM: 67h does not change the operand size (32 -> 1<<11); Bochs reports 16 (0).
    assert ex["rdrand-67-32"].instruction_info & RDOPS == 0
    # 16-bit code with 67h: SDM 16 (0); Bochs 32 (1<<11).
    assert ex["rdrand-67-16"].instruction_info & RDOPS == 1 << 11
    # 64-bit with 66h: SDM 16 (0); Bochs 32.
    assert ex["rdrand-66-64"].instruction_info & RDOPS == 1 << 11


def test_xsaves_xrstors_do_not_exit_in_bochs(oracle: dict) -> None:
    # No IA32_XSS bit is supported, so EDX:EAX & IA32_XSS & bitmap = 0 and the instruction
    # runs: its write/read of the unmapped area faults (#PF, vector 14, or #GP) instead.
    for key in ("xsaves-32", "xrstors-64"):
        rec = oracle["extra"][key]
        assert rec.basic_reason == 0
        assert rec.interruption_info & 0x800000FF in (0x8000000E, 0x8000000D)


def _assert_agree(cases: list[B.Case], records: list[B.Record | None]) -> None:
    comparisons = B.compare(cases, records)
    bad = [c for c in comparisons if not c.ok]
    detail = "\n".join(f"{c.code_size}-bit {c.code.hex()} {c.mnemonic}: {c.differences}" for c in bad[:20])
    assert not bad, f"{len(bad)} of {len(comparisons)} disagree with the core:\n{detail}"


def test_every_instruction_codesize_form_agrees_with_core(oracle: dict) -> None:
    cases, records = oracle["coverage"]
    assert len(cases) > 3000
    _assert_agree(cases, records)


def test_random_encodings_agree_with_core(oracle: dict) -> None:
    cases, records = oracle["random"]
    _assert_agree(cases, records)


def test_bochs_undefined_bits(oracle: dict) -> None:
    """What Bochs writes into the SDM's undefined bits (documented in known-oracle-issues.md)."""
    cases, records = oracle["coverage"]
    from vmxaddr.decode import decode

    for case, rec in zip(cases, records, strict=True):
        assert rec is not None
        instr = decode(case.code, case.code_size)
        asz = instr.operand.address_size if instr.operand else None
        if asz is not None and case.code_size != 64:
            # outside 64-bit mode: the qualification is masked to the address size
            assert rec.exit_qualification >> asz == 0
        if asz == 32 and case.code_size == 64:
            # 67h in 64-bit mode: the displacement sign-extended to 64 bits (RIP-relative:
            # disp + next RIP computed in 64 bits)
            low = rec.exit_qualification & 0xFFFFFFFF
            upper = rec.exit_qualification >> 32
            if not instr.operand.rip_relative:
                assert upper == (0xFFFFFFFF if low >> 31 else 0)


def test_bochs_undefined_info_bits_pattern(oracle: dict) -> None:
    """Bochs writes only two undefined instruction-information bits: bit 31 = REX.R for the
    descriptor-table layouts in 64-bit code, bit 10 for RDRAND/RDSEED."""
    from vmxaddr.decode import decode

    cases, records = oracle["coverage"]
    for c in B.compare(cases, records):
        instr = decode(c.code, c.code_size)
        allowed = 0
        if instr.spec.layout.value in ("dt", "ldt") and instr.rex & 4:
            allowed = 1 << 31
        if instr.spec.layout.value == "rdrand":
            allowed = 1 << 10
        assert c.undefined_info & ~allowed == 0, (c.code.hex(), hex(c.undefined_info))
        if instr.spec.layout.value == "rdrand":
            assert c.undefined_info == 1 << 10


@pytest.mark.slow
def test_crosscheck_10000_random_encodings() -> None:
    """The issue's acceptance campaign: 10 000 random encodings, 0 unexplained."""
    missing = B.missing_tools()
    if missing:  # under CI=true a skip fails (tests/ci_policy.py), with --run-slow too
        pytest.skip("Bochs oracle needs: " + ", ".join(missing) + " (run scripts/system-deps.sh as root)")
    summary = B.crosscheck_bochs(10000, seed=2026)
    assert summary["cases"] == 10000
    assert summary["unexplained"] == 0, summary["disagreements"][:10]


def test_cpl3_privilege_before_exit(oracle: dict) -> None:
    ex = oracle["extra"]
    # VMPTRLD at CPL 3 in VMX non-root: exits (the VMX-instruction CPL check comes after
    # the non-root exit, Vol. 3C ch. 31 pseudocode); same info as at CPL 0.
    assert ex["cpl3-vmptrld-32"].basic_reason == 21
    assert ex["cpl3-vmptrld-32"].instruction_info & (MEM | BASE) == 0x00418080
    # SGDT is not privileged (no UMIP): exits with descriptor-table exiting
    assert ex["cpl3-sgdt-64"].basic_reason == 46
    # LGDT and LTR at CPL 3: #GP(0) before the exit -> exception exit, vector 13,
    # hardware exception (type 3 << 8), error code valid (bit 11), valid (bit 31)
    for key in ("cpl3-lgdt-32", "cpl3-ltr-reg-16"):
        assert ex[key].basic_reason == 0
        assert ex[key].interruption_info == 0x80000B0D
    # INVPCID at CPL 3: SDM #GP(0) first; Bochs 2.7 exits (known-oracle-issues.md 1.5)
    assert ex["cpl3-invpcid-64"].basic_reason == 58


def test_cli_crosscheck_bochs(oracle: dict, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from vmxaddr.cli import main

    assert main(["crosscheck", "--oracle", "bochs", "-n", "300", "--seed", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 300 and summary["unexplained_cases"] == 0 and summary["details"]["boots"] == 1


def test_rdrand_opsize_is_excused_only_when_ours_follows_the_sdm() -> None:
    """The Bochs RDRAND operand-size explanation must not hide a wrong operand size of ours."""
    from vmxaddr.decode import decode
    from vmxaddr.exitinfo import F_RDRAND_OPSIZE

    # 66 0F C7 F0 in 32-bit code: RDRAND AX. SDM: operand size 16 -> bits 12:11 = 0. Bochs 2.7
    # ignores 66h and reports 32 -> 1 (0x800), with its bit 10 set.
    instr = decode(bytes.fromhex("660fc7f0"), 32)
    assert B.sdm_rdrand_opsize(instr) == 16 and B.bochs_rdrand_opsize(instr) == 32
    bochs_info = 0x800 & F_RDRAND_OPSIZE
    assert B._known_deviation(instr, "instruction_info", bochs_info, 0x000) == "bochs-rdrand-opsize"
    # had our encoder said 64 (2 << 11), the same Bochs value is a disagreement to look at
    assert B._known_deviation(instr, "instruction_info", bochs_info, 0x1000) is None
    # by hand, the other rows: 48 0F C7 F0 (64-bit) RDRAND RAX: 64; 0F C7 F0 in 16-bit code: 16;
    # 66 0F C7 F0 in 16-bit code: 32; 66 48 0F C7 F0 (64-bit): REX.W wins, 64
    for hex_, cs, size in (("480fc7f0", 64, 64), ("0fc7f0", 16, 16), ("660fc7f0", 16, 32), ("66480fc7f0", 64, 64),
                           ("0fc7f0", 64, 32), ("660fc7f0", 64, 16)):
        assert B.sdm_rdrand_opsize(decode(bytes.fromhex(hex_), cs)) == size, hex_
