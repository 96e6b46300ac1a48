"""The one layout table (vmxaddr.layouts) against the SDM's tables, and the reader's use of it.

Every expected row below is transcribed from the SDM's own table, not from vmxaddr: SDM Vol. 3C,
"Information for VM Exits Due to Instruction Execution", the tables "Format of the VM-Exit
Instruction-Information Field as Used for ..." (27-8 … 27-14 in the edition docs/index.md names,
where "VM Exits" is chapter 27), and "Exit Qualification for I/O Instructions" (27-5). Each row:
(high bit, low bit, the SDM's content, the SDM's "Undefined for ..." conditions as tags:
"reg" = register instructions (bit 10 set), "mem" = memory instructions (bit 10 clear),
"noidx" = no index register (bit 22 set), "nobase" = no base register (bit 27 set),
"64" = VM exits from 64-bit mode, "ins" = VM exits due to execution of INS, "U" = undefined).
"""

from __future__ import annotations

import json

import pytest

from vmxaddr import layouts
from vmxaddr.cli import main

# Common rows of the memory layouts, worded as every table words them.
_MEM = [(27, 27, "base invalid", ()), (26, 23, "base", ("nobase",)), (22, 22, "index invalid", ()),
        (21, 18, "index", ("noidx",)), (17, 15, "segment", ())]

SDM: dict[str, list[tuple[int, int, str, tuple[str, ...]]]] = {
    # Table 27-13 (VMCLEAR, VMPTRLD, VMPTRST, VMXON, XRSTORS, XSAVES): 1:0 scaling (undefined with
    # no index), 6:2 undefined, 9:7 address size, 10 cleared to 0, 14:11 undefined, 17:15
    # segment, 21:18 IndexReg, 22, 26:23 BaseReg, 27, 31:28 undefined.
    "vmptr": [(31, 28, "undefined", ("U",)), *_MEM, (14, 11, "undefined", ("U",)), (10, 10, "cleared to 0", ()),
              (9, 7, "address size", ()), (6, 2, "undefined", ("U",)), (1, 0, "scaling", ("noidx",))],
    # Table 27-14 (VMREAD, VMWRITE): 2 undefined, 6:3 Reg1 "undefined for memory instructions
    # (bit 10 is clear)", 10 Mem/Reg, 31:28 Reg2; every memory field also "undefined for register
    # instructions (bit 10 is set)".
    "vmread": [(31, 28, "reg2", ())] + [(h, lo, n, ("reg", *c)) for h, lo, n, c in _MEM]
              + [(14, 11, "undefined", ("U",)), (10, 10, "mem/reg", ()), (9, 7, "address size", ("reg",)),
                 (6, 3, "reg1", ("mem",)), (2, 2, "undefined", ("U",)), (1, 0, "scaling", ("reg", "noidx"))],
    # Table 27-9 (INVEPT, INVPCID, INVVPID): as 27-13 but 31:28 Reg2.
    "inv": [(31, 28, "reg2", ()), *_MEM, (14, 11, "undefined", ("U",)), (10, 10, "cleared to 0", ()),
            (9, 7, "address size", ()), (6, 2, "undefined", ("U",)), (1, 0, "scaling", ("noidx",))],
    # Table 27-10 (LIDT, LGDT, SIDT, SGDT): 11 operand size (0: 16-bit, 1: 32-bit) "Undefined for
    # VM exits from 64-bit mode", 14:12 undefined, 29:28 instruction identity, 31:30 undefined.
    "dt": [(31, 30, "undefined", ("U",)), (29, 28, "identity", ()), *_MEM, (14, 12, "undefined", ("U",)),
           (11, 11, "operand size", ("64",)), (10, 10, "cleared to 0", ()), (9, 7, "address size", ()),
           (6, 2, "undefined", ("U",)), (1, 0, "scaling", ("noidx",))],
    # Table 27-11 (LLDT, LTR, SLDT, STR): as 27-14 with 31:30 undefined, 29:28 identity.
    "ldt": [(31, 30, "undefined", ("U",)), (29, 28, "identity", ())] + [(h, lo, n, ("reg", *c)) for h, lo, n, c in _MEM]
           + [(14, 11, "undefined", ("U",)), (10, 10, "mem/reg", ()), (9, 7, "address size", ("reg",)),
              (6, 3, "reg1", ("mem",)), (2, 2, "undefined", ("U",)), (1, 0, "scaling", ("reg", "noidx"))],
    # Table 27-12 (RDRAND, RDSEED): 2:0 undefined, 6:3 destination register, 10:7 undefined,
    # 12:11 operand size (0 16-bit, 1 32-bit, 2 64-bit), 31:13 undefined.
    "rdrand": [(31, 13, "undefined", ("U",)), (12, 11, "operand size", ()), (10, 7, "undefined", ("U",)),
               (6, 3, "reg", ()), (2, 0, "undefined", ("U",))],
    # Table 27-8 (INS, OUTS): 6:0 undefined, 9:7 address size, 14:10 undefined, 17:15 segment
    # "Undefined for VM exits due to execution of INS", 31:18 undefined.
    "io": [(31, 18, "undefined", ("U",)), (17, 15, "segment", ("ins",)), (14, 10, "undefined", ("U",)),
           (9, 7, "address size", ()), (6, 0, "undefined", ("U",))],
    # Not in an SDM edition we could read (docs/tpause-umwait.md, docs/loadiwkey.md): Reg1 at 6:3
    # (Bochs gen_instruction_info(), KVM vmx_get_instr_info_reg()), Reg2 at 31:28 for LOADIWKEY.
    "reg": [(31, 7, "undefined", ("U",)), (6, 3, "reg1", ()), (2, 0, "undefined", ("U",))],
    "loadiwkey": [(31, 28, "reg2", ()), (27, 7, "undefined", ("U",)), (6, 3, "reg1", ()),
                  (2, 0, "undefined", ("U",))],
    # Table 27-5 (I/O instructions): 2:0 size of access, 3 direction, 4 string instruction,
    # 5 REP prefixed, 6 operand encoding, 15:7 reserved (cleared to 0), 31:16 port number,
    # 63:32 reserved (cleared to 0).
    "io-qualification": [(63, 32, "reserved", ("U",)), (31, 16, "port", ()), (15, 7, "reserved", ("U",)),
                         (6, 6, "operand encoding", ()), (5, 5, "REP prefixed", ()),
                         (4, 4, "string instruction", ()), (3, 3, "direction", ()), (2, 0, "size of access", ())],
}

_TAG = {("mem/reg", 1): "reg", ("mem/reg", 0): "mem", ("index invalid", 1): "noidx", ("base invalid", 1): "nobase"}


def _tags(f: layouts.Field) -> tuple[str, ...]:
    if f.kind in ("undefined", "reserved"):
        return ("U",)
    out = []
    for w in f.undefined_when:
        out.append(_TAG[w.field, w.value] if w.field else "64" if w.mode == 64 else w.instruction)
    return tuple(out)


@pytest.mark.parametrize("name", sorted(SDM))
def test_table_is_the_sdm_table(name: str) -> None:
    table = layouts.ALL[name]
    got = [(f.hi, f.lo, f.name, _tags(f)) for f in table.fields]
    assert got == SDM[name]


def test_every_instruction_layout_is_in_the_table_and_checked() -> None:
    from vmxaddr.isa import Layout

    assert {lay.value for lay in Layout} == set(layouts.INSTRUCTION_INFO) == set(SDM) - {"io-qualification"}


def test_enumerations_are_the_sdms() -> None:
    # "0: 16-bit 1: 32-bit 2: 64-bit", "0: ES 1: CS 2: SS 3: DS 4: FS 5: GS", identity "0: SGDT
    # 1: SIDT 2: LGDT 3: LIDT" / "0: SLDT 1: STR 2: LLDT 3: LTR", I/O size "0 = 1-byte 1 = 2-byte
    # 3 = 4-byte", direction "0 = OUT 1 = IN", operand encoding "0 = DX 1 = immediate".
    from vmxaddr.isa import SEGMENTS

    assert layouts.ADDRESS_SIZES == ("16-bit", "32-bit", "64-bit")
    assert layouts.SEGMENTS == SEGMENTS == ("es", "cs", "ss", "ds", "fs", "gs")
    assert layouts.field(layouts.INSTRUCTION_INFO["dt"], "identity").values == ("sgdt", "sidt", "lgdt", "lidt")
    assert layouts.field(layouts.INSTRUCTION_INFO["ldt"], "identity").values == ("sldt", "str", "lldt", "ltr")
    assert layouts.field(layouts.INSTRUCTION_INFO["dt"], "operand size").values == ("16-bit", "32-bit")
    q = layouts.IO_QUALIFICATION
    assert layouts.field(q, "size of access").values == ("1 byte", "2 bytes", "", "4 bytes")
    assert layouts.field(q, "direction").values == ("OUT", "IN")
    assert layouts.field(q, "operand encoding").values == ("DX", "immediate")


def test_apx_extended_positions_are_the_series() -> None:
    # KVM "Enable APX for guests" v2, patch 04/16 struct ext_insn_info (vmxaddr/apx.py): scaling
    # 1:0, address size 3:2, mem/reg 4, operand size 6:5, segment 9:7, index invalid 10, base
    # invalid 11, reg1 20:16, index 28:24, base 36:32, reg2 44:40; the rest reserved.
    got = {f.name: (f.hi, f.lo) for f in layouts.EXTENDED_POSITIONS if f.kind != "reserved"}
    assert got == {"scaling": (1, 0), "address size": (3, 2), "mem/reg": (4, 4), "operand size": (6, 5),
                   "segment": (9, 7), "index invalid": (10, 10), "base invalid": (11, 11), "reg1": (20, 16),
                   "index": (28, 24), "base": (36, 32), "reg2": (44, 40)}
    # The LGDT group's operand size moves with its condition: undefined from 64-bit mode there too.
    dt = layouts.EXTENDED["dt"]
    assert [w.mode for w in layouts.field(dt, "operand size").undefined_when] == [64]
    # the identity has no place in the extended field; RDRAND's register is reg1 there
    assert "identity" not in {f.name for f in dt.fields}
    assert layouts.field(layouts.EXTENDED["rdrand"], "reg1").kind == "gpr"


def test_layouts_is_a_leaf_module() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(layouts.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
        [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("vmxaddr")], imported


# -- issue 21 §4: LGDT group bit 11 is undefined for exits from 64-bit *mode* ----------------------
# 67 0F 01 00 in 64-bit code: SGDT [EAX] with a 32-bit address size (the 67 prefix). The exit
# comes from 64-bit mode, so Table 27-10's "Undefined for VM exits from 64-bit mode" applies to
# bit 11 whatever the address size. In 32-bit code 0F 01 10 (LGDT [EAX]) the operand size is
# 32-bit: bit 11 = 1 and defined.

def test_dt_operand_size_undefined_from_64_bit_mode_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--mode", "64", "670f0100"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "operand size" in ln)
    assert line.lstrip().startswith("~") and "undefined here" in line
    assert main(["decode", "--mode", "32", "0f0110"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "operand size" in ln)
    assert not line.lstrip().startswith("~") and line.rstrip().endswith("32-bit")


def _field(rows: list[dict[str, object]], name: str) -> dict[str, object]:
    return next(r for r in rows if r["name"] == name)


def test_dt_operand_size_undefined_from_64_bit_mode_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--json", "--mode", "64", "670f0100"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert _field(obj["instruction_info_fields"], "operand size") == {
        "name": "operand size", "bits": "11", "value": 0, "meaning": "16-bit", "defined": False}
    assert main(["decode", "--json", "--mode", "32", "0f0110"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert _field(obj["instruction_info_fields"], "operand size")["defined"] is True


def test_dt_operand_size_undefined_from_64_bit_mode_picture_and_web(capsys: pytest.CaptureFixture[str]) -> None:
    import xml.etree.ElementTree as ET

    from vmxaddr.web import answer

    assert main(["decode", "--mode", "64", "--svg", "-", "670f0100"]) == 0
    root = ET.fromstring(capsys.readouterr().out)
    box = next(r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("data-field") == "operand size")
    assert box.get("fill") == "url(#hatch-undefined-here)"
    out = json.loads(answer(json.dumps({"bytes": "670f0100", "mode": "64"})))
    assert _field(out["case"]["instruction_info_fields"], "operand size")["defined"] is False
    assert 'data-field="operand size"' in out["field_svg"]
    box = ET.fromstring(out["field_svg"])
    rect = next(r for r in box.iter("{http://www.w3.org/2000/svg}rect") if r.get("data-field") == "operand size")
    assert rect.get("fill") == "url(#hatch-undefined-here)"


def test_dt_operand_size_defined_mask_from_64_bit_mode() -> None:
    # The encoder's defined mask (what fuzzing and the trace checker compare) follows the mode too.
    from vmxaddr.decode import decode
    from vmxaddr.exitinfo import defined_mask

    assert not defined_mask(decode(bytes.fromhex("670f0100"), 64)) & 1 << 11
    assert defined_mask(decode(bytes.fromhex("0f0110"), 32)) & 1 << 11
