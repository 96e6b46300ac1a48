"""The generated instruction pages (issue 25 items 1 and 4; docs/tools/instruction_pages.py):
one per instruction of vmxaddr.isa.SPECS, their encodings decoded by vmxaddr on every build,
their worked examples computed by the SDM model and checked here against values derived by hand
(each derivation written at its assertion), and the SDM edition on every page of the built site.
The browser side (no console error on these pages, the index's sorting, the screenshots) is in
tests/test_site.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from docs_tool import load as _load

from vmxaddr.isa import SPECS

ROOT = Path(__file__).resolve().parents[1]



pages_mod = _load("docs_instruction_pages", ROOT / "docs" / "tools" / "instruction_pages.py")
facts = pages_mod._tool("instruction_facts")
refresh = _load("docs_refresh", ROOT / "docs" / "tools" / "refresh.py")


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return dict(pages_mod.pages("EDITION"))


def test_a_page_for_every_instruction_and_an_index(generated: dict[str, str]) -> None:
    for m in SPECS:
        text = generated[f"instruction/{m}.md"]
        assert text.startswith(f"# {m.upper()}\n")
        assert f"**{SPECS[m].exit_reason}**" in text  # the exit reason, from the table
        assert f"instruction/pictures/{m}-layout.svg" in generated
        assert text.count("▶ Try this case in your browser") == 3
        for section in ("## Encodings", "## The instruction-information field", "## Faults in each mode and at each CPL",
                        "## The order of checks", "## Worked examples", "## KVM's history for it", "## The peers"):
            assert section in text, (m, section)
    index = generated["instruction/index.md"]
    assert sorted(re.findall(r'href="(\w+)\.html"', index)) == sorted(SPECS)


def test_encodings_decode_as_their_instruction() -> None:
    # Every encoding form on the pages is decoded by vmxaddr on each build; a wrong entry is caught.
    assert [p for m in SPECS for p in facts.check_encodings(m)] == []
    saved = facts.ENCODINGS["vmptrst"]
    try:
        facts.ENCODINGS["vmptrst"] = [("NP 0F C7 /6", "wrong", "0f c7 M6")]  # /6 is VMPTRLD
        assert any("decodes as vmptrld" in p for p in facts.check_encodings("vmptrst"))
    finally:
        facts.ENCODINGS["vmptrst"] = saved


def test_apx_only_in_legacy_maps_0_and_1() -> None:
    # REX2 can name map 0 or 1 only (APX spec): 0F 38 (map 2) and VEX are out of reach.
    assert facts.apx_allowed("vmread") and facts.apx_allowed("vmptrld") and facts.apx_allowed("ins")
    assert not facts.apx_allowed("invept") and not facts.apx_allowed("invpcid") and not facts.apx_allowed("loadiwkey")
    assert not facts.apx_allowed("rdmsr")


def _examples(m: str) -> list[Any]:
    return list(facts.examples(m))


def test_vmread_examples_by_hand() -> None:
    ex = _examples("vmread")
    # 1: 0F 78 43 40 = VMREAD [EBX + 0x40], EAX (ModRM 0x43: mod 01, reg 000 = EAX, rm 011 = EBX;
    # disp8 0x40). EBX = 0x1000: EA = 0x1000 + 0x40 = 0x1040; DS base 0, so linear 0x1040 (SDM
    # Vol. 1 "Specifying an Offset"). Instruction information (VMREAD/VMWRITE table): address
    # size 32-bit 1 << 7 = 0x80, segment DS 3 << 15 = 0x18000, no index 1 << 22 = 0x400000, base
    # EBX 3 << 23 = 0x1800000, Reg2 = EAX 0 << 28: 0x01c18080. Exit qualification = disp = 0x40.
    a = ex[0].answer
    assert ex[0].argv[-1] == "0f784340"
    assert (a["effective_address"], a["linear_address"], a["instruction_info"], a["outcome"]["verdict"]) == \
        ("0x1040", "0x1040", "0x01c18080", "no fault")
    assert int(a["exit_qualification"], 16) == 0x40
    # 2: the same bytes in 64-bit code, RBX = 0x7fffffff0000: EA 0x7fffffff0040, canonical (bit
    # 47 = 0), 8 bytes to 0x7fffffff0047: no fault; address size 64-bit 2 << 7 = 0x100:
    # 0x01c18100.
    a = ex[1].answer
    assert (a["linear_address"], a["instruction_info"], a["outcome"]["verdict"]) == ("0x7fffffff0040", "0x01c18100", "no fault")
    # 3: 0F 78 07 in 16-bit code = VMREAD [BX], AX (rm 111 = BX); 4 bytes outside 64-bit mode
    # (SDM VMREAD). BX = 0x1000 - 4 + 1 = 0xffd: the last byte is 0x1000 > DS limit 0xfff:
    # #GP(0) (DS is not SS; SDM Vol. 3A "Limit Checking").
    a = ex[2].answer
    assert "bx=0xffd" in ex[2].argv and a["outcome"]["verdict"] == "#GP(0)" and a["outcome"]["rule"] == "limit"


def test_lgdt_and_xsaves_examples_by_hand() -> None:
    # LGDT [EBX + 0x40] (0F 01 53 40: ModRM mod 01, /2, rm EBX), 32-bit code: the VMREAD fields
    # above (0x01c18080, no Reg2 here: bits 31:30 undefined, 0) plus operand size 32-bit at bit 11
    # (0x800; this edition's position) and identity LGDT = 2 at bits 29:28 (0x20000000):
    # 0x21c18880.
    a = _examples("lgdt")[0].answer
    assert (a["instruction_info"], a["linear_address"]) == ("0x21c18880", "0x1040")
    # XSAVES [BX] in 16-bit code, 576 bytes, 64-byte alignment: the lowest 64-aligned start whose
    # last byte passes 0xfff is 0xe00 (0xe00 + 575 = 0x103f); 0xe00 is aligned, so the fault is
    # the limit's: #GP(0).
    ex = _examples("xsaves")[2]
    assert "bx=0xe00" in ex.argv and ex.answer["outcome"]["verdict"] == "#GP(0)" and ex.answer["outcome"]["rule"] == "limit"


def test_ins_examples_by_hand() -> None:
    # INSD (6D) in 32-bit code writes ES:[EDI], 4 bytes: EDI = 0x1000 -> linear 0x1000, no fault;
    # with ES limit 0xfff and EDI = 0xffe the last byte 0x1001 is beyond it: #GP(0).
    ex = _examples("ins")
    assert ex[0].answer["linear_address"] == "0x1000" and ex[0].answer["outcome"]["verdict"] == "no fault"
    assert ex[2].answer["outcome"]["verdict"] == "#GP(0)"


def _table(m: str) -> dict[tuple[str, int], str]:
    return {(mode, cpl): a["outcome"]["verdict"] for mode, cpl, a in facts.fault_table(m) if a.get("ok")}


def test_fault_tables_by_the_sdm() -> None:
    # VMX instructions: #UD in real, virtual-8086 and compatibility mode (VMREAD's Operation:
    # #UD if CR0.PE = 0, RFLAGS.VM = 1, or IA32_EFER.LMA = 1 and CS.L = 0); at CPL > 0 #GP(0).
    t = _table("vmread")
    assert t[("real", 0)] == t[("virtual-8086", 3)] == t[("compatibility", 0)] == "#UD"
    assert t[("protected", 0)] == "no fault" and t[("protected", 3)] == t[("64-bit", 3)] == "#GP(0)"
    # SLDT: not recognized in real-address and virtual-8086 mode (#UD); any CPL otherwise.
    t = _table("sldt")
    assert t[("real", 0)] == t[("virtual-8086", 3)] == "#UD" and t[("protected", 3)] == "no fault"
    # LGDT: valid in real mode; privileged: CPL 3 (also virtual-8086 mode) is #GP(0).
    t = _table("lgdt")
    assert t[("real", 0)] == "no fault" and t[("virtual-8086", 3)] == t[("protected", 3)] == "#GP(0)"
    # INVPCID: #GP(0) in virtual-8086 mode (its "Virtual-8086 Mode Exceptions").
    assert _table("invpcid")[("virtual-8086", 3)] == "#GP(0)"


def test_worked_examples_equal_the_command_line(generated: dict[str, str]) -> None:
    # The pages' outputs come from vmxaddr.web (the Try page's path); the command line, run
    # in-process, must print the same for every example of every page.
    n = 0
    for m in SPECS:
        text = generated[f"instruction/{m}.md"]
        for cmd, out in re.findall(r"```console\n\$ vmxaddr (.+?)\n```\n\n```text\n(.*?)\n```", text, re.S):
            assert refresh.run(cmd.split()) == refresh.normalise(out), (m, cmd)
            n += 1
    assert n == 3 * len(SPECS)


def test_edition_notes_where_editions_differ(generated: dict[str, str]) -> None:
    for m in ("lgdt", "lidt", "sgdt", "sidt"):
        assert "bits 13:12" in generated[f"instruction/{m}.md"] and "bit 11" in generated[f"instruction/{m}.md"]
    assert "bits 13:12" not in generated["instruction/vmread.md"]
