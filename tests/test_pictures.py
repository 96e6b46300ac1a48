"""The pictures (issue 17): drawn from vmxaddr's tables, kept fresh in docs/pictures/, and
saying what the SDM's tables say.

Expected values below come from SDM Vol. 3C, "Information for VM Exits Due to Instruction
Execution", table "Format of the VM-Exit Instruction-Information Field as Used for VMREAD and
VMWRITE" (27-14 in the edition the docs name), worked by hand as stated at each test.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmxaddr.cli import main
from vmxaddr.exitinfo import InfoField
from vmxaddr.isa import Layout
from vmxaddr.pictures import CELL, MARGIN, ROW_BITS, across_layouts_picture, field_picture, layout_picture, layouts

ROOT = Path(__file__).resolve().parents[1]
NS = "{http://www.w3.org/2000/svg}"

_spec = importlib.util.spec_from_file_location("docs_pictures", ROOT / "docs" / "tools" / "pictures.py")
assert _spec and _spec.loader
pictures_tool = importlib.util.module_from_spec(_spec)
sys.modules["docs_pictures"] = pictures_tool
_spec.loader.exec_module(pictures_tool)


def _boxes(svg_text: str) -> dict[tuple[int, int], dict[str, str]]:
    """(hi, lo) -> attributes of each bit-field box (a field split over two rows of a 64-bit
    picture gives one box per row)."""
    root = ET.fromstring(svg_text)
    rects = [r for r in root.iter(f"{NS}rect") if r.get("height") == "34"]
    ys = sorted({float(r.get("y", 0)) for r in rects})
    width = len(ys) * ROW_BITS  # rows of 32 bits, the highest first
    out = {}
    for r in rects:
        row = ys.index(float(r.get("y", 0)))
        x, w = float(r.get("x", 0)), float(r.get("width", 0))
        hi = width - 1 - row * ROW_BITS - round((x - MARGIN) / CELL)
        lo = hi - round(w / CELL) + 1
        out[(hi, lo)] = dict(r.attrib)
    return out


def _digits(svg_text: str) -> str:
    """The bit values drawn in the boxes (bold 13-pixel text), top to bottom, left to right,
    following the translations of embedded pictures."""
    cells: list[tuple[float, float, str]] = []

    def walk(el: ET.Element, dy: float) -> None:
        m = re.match(r"translate\(([-\d.]+),([-\d.]+)\)", el.get("transform", ""))
        dy += float(m.group(2)) if m else 0.0
        if el.tag == f"{NS}text" and el.get("font-size") == "13" and el.get("font-weight") == "bold" \
                and el.text in ("0", "1"):
            cells.append((float(el.get("y", 0)) + dy, float(el.get("x", 0)), el.text))
        for child in el:
            walk(child, dy)

    walk(ET.fromstring(svg_text), 0.0)
    return "".join(d for _y, _x, d in sorted(cells))


def test_docs_pictures_are_fresh() -> None:
    problems = pictures_tool.stale()
    assert not problems, f"{problems}: run `python docs/tools/pictures.py` and commit docs/pictures/"


def test_every_layout_has_a_picture_shown_by_a_page() -> None:
    shown = "".join(p.read_text() for p in (ROOT / "docs").rglob("*.md"))
    for lay in layouts():
        assert f"(pictures/layout-{lay.value}.svg)" in shown, (
            f"no docs page shows pictures/layout-{lay.value}.svg (add it under the layout's heading "
            "in docs/instruction-information.md)")
    for name, _argv in pictures_tool.EXAMPLES:
        assert f"(pictures/{name})" in shown, f"no docs page shows pictures/{name}"


@pytest.mark.parametrize("layout", layouts(), ids=lambda lay: lay.value)
def test_layout_pictures_cover_every_bit_once(layout: Layout) -> None:
    boxes = _boxes(str(layout_picture(layout)))
    bits = sorted(b for hi, lo in boxes for b in range(lo, hi + 1))
    assert bits == list(range(32)), f"{layout.value}: bits drawn {bits}"


def test_vmread_layout_matches_the_sdm_table() -> None:
    # The SDM's VMREAD/VMWRITE table: 1:0 scaling, 2 undefined, 6:3 reg1 (undefined for a memory
    # operand), 9:7 address size, 10 mem/reg, 14:11 undefined, 17:15 segment, 21:18 index,
    # 22 index invalid, 26:23 base, 27 base invalid, 31:28 reg2.
    svg = str(layout_picture(Layout.VMREAD))
    boxes = _boxes(svg)
    assert sorted(boxes) == sorted([(1, 0), (2, 2), (6, 3), (9, 7), (10, 10), (14, 11), (17, 15),
                                    (21, 18), (22, 22), (26, 23), (27, 27), (31, 28)])
    always = {k for k, a in boxes.items() if a["fill"] == "url(#hatch-undefined)"}
    assert always == {(2, 2), (14, 11)}
    # reg2 and mem/reg are always defined; everything else depends on bit 10 (and 22/27).
    solid = {k for k, a in boxes.items() if "stroke-dasharray" not in a and k not in always}
    assert solid == {(31, 28), (10, 10)}
    assert "reg1            defined only when mem/reg = register" in svg
    assert "index           undefined when index invalid = invalid or mem/reg = register" in svg


def test_decode_svg_draws_the_readme_example(tmp_path: Path) -> None:
    # VMREAD [EBP-0x28], EAX, 32-bit: base EBP = 5 << 23, no index (bit 22), segment SS = 2 << 15,
    # address size 32 = 1 << 7, reg2 EAX = 0: 0x02800000 | 0x400000 | 0x10000 | 0x80 = 0x02c10080.
    out = tmp_path / "f.svg"
    assert main(["decode", "--mode", "32", "--svg", str(out), "0f7845d8"]) == 0
    svg = out.read_text()
    assert _digits(svg) == format(0x02C10080, "032b")
    boxes = _boxes(svg)
    # Undefined for this operand: index and scaling (bit 22 = 1), reg1 (a memory operand);
    # always: 14:11 and 2.
    here = {k for k, a in boxes.items() if a["fill"] == "url(#hatch-undefined-here)"}
    always = {k for k, a in boxes.items() if a["fill"] == "url(#hatch-undefined)"}
    assert here == {(21, 18), (6, 3), (1, 0)}
    assert always == {(14, 11), (2, 2)}


def test_explain_svg_adds_the_flow(tmp_path: Path) -> None:
    out = tmp_path / "e.svg"
    assert main(["explain", "--mode", "32", "--reg", "ebp=0x1000", "--svg", str(out), "0f7845d8"]) == 0
    texts = [t.text or "" for t in ET.fromstring(out.read_text()).iter(f"{NS}text")]
    headings = [t.text for t in ET.fromstring(out.read_text()).iter(f"{NS}text")
                if t.get("font-size") == "12" and t.get("font-weight") == "bold"]
    stages = [t for t in headings if t in ("bytes", "fields", "displacement", "effective address", "segment",
                                        "linear address", "checks", "outcome")]
    assert stages == ["bytes", "fields", "displacement", "effective address", "segment", "linear address",
                      "checks", "outcome"]
    # EBP 0x1000 + (-0x28) = 0xfd8 (SDM Vol. 1 'Specifying an Offset'), SS base 0: linear 0xfd8.
    assert "EA = 0xfd8" in texts and "linear = 0xfd8" in texts


def test_explain_svg_marks_unreached_stages(tmp_path: Path) -> None:
    # A register operand (VMREAD EAX, ECX: mod = 11) has no address: the address stages are not reached.
    out = tmp_path / "r.svg"
    assert main(["explain", "--mode", "32", "--svg", str(out), "0f 78 c8"]) == 0
    texts = [t.text or "" for t in ET.fromstring(out.read_text()).iter(f"{NS}text")]
    assert texts.count("not reached") == 4  # displacement, EA, segment, linear


def test_svg_to_stdout_and_unwritable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--mode", "32", "--svg", "-", "0f7845d8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<svg ") and ET.fromstring(out).tag == f"{NS}svg"
    assert main(["decode", "--mode", "32", "--svg", str(tmp_path / "no" / "x.svg"), "0f7845d8"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"vmxaddr decode: error: cannot write .*x\.svg: No such file or directory\n", err)


def _wide_fields(x: int, instruction: str) -> list[InfoField]:
    """A made-up 64-bit field for the drawing: 63:40 reserved, 39:24 'wide' (crossing the row
    boundary at bit 32), 23 'flag', 22:0 reserved; 'wide' is undefined when 'flag' is 1."""
    flag = bool(x >> 23 & 1)
    return [InfoField("reserved", 63, 40, x >> 40, "", False),
            InfoField("wide", 39, 24, x >> 24 & 0xFFFF, hex(x >> 24 & 0xFFFF), not flag),
            InfoField("flag", 23, 23, int(flag), str(int(flag)), True),
            InfoField("reserved", 22, 0, x & 0x7FFFFF, "", False)]


def test_a_64_bit_field_is_drawn_in_two_rows() -> None:
    svg = str(across_layouts_picture(_wide_fields, "wide", "made up"))
    boxes = _boxes(svg)
    # 'wide' (39:24) is split at the row boundary into 39:32 (second half of row 1) and 31:24.
    assert sorted(boxes) == [(22, 0), (23, 23), (31, 24), (39, 32), (63, 40)]
    assert boxes[(39, 32)]["stroke-dasharray"] == "4,3"  # conditional, in every layout
    assert boxes[(63, 40)]["fill"] == "url(#hatch-undefined)"
    valued = str(field_picture(0x12_3456_0000_0000 | 0xABCD << 24, "vmread", "v", _wide_fields))
    assert _digits(valued) == format(0x12_3456_0000_0000 | 0xABCD << 24, "064b")


def test_pictures_of_random_cases_are_well_formed_and_show_the_bits() -> None:
    # 300 generated cases through every consumer model in turn: each explain picture parses as
    # SVG, its field shows exactly the bits of the instruction-information value, and its flow
    # ends in the outcome the model gave.
    import random

    from vmxaddr.case import Case
    from vmxaddr.gen import RandomChooser, gen_encoding, gen_policy, gen_state
    from vmxaddr.models import REGISTRY
    from vmxaddr.pictures import explain_picture

    ch = RandomChooser(random.Random(17))
    consumers = [m for m in REGISTRY.values() if m.kind == "consumer"]
    for n in range(300):
        raw, cs = gen_encoding(ch)
        case = Case.from_bytes(raw, gen_state(ch, cs), gen_policy(ch))
        model = consumers[n % len(consumers)]
        exit = case.exit
        result = case.run(model.function, explain=True)
        svg = str(explain_picture(case, exit, result, model.name))
        root = ET.fromstring(svg)
        ext = "" if exit.extended_info is None else format(exit.extended_info, "064b")
        assert _digits(svg) == format(exit.instruction_info, "032b") + ext, raw.hex()
        texts = [t.text or "" for t in root.iter(f"{NS}text")]
        verdict = {"ok": "no fault"}.get(result.outcome.kind, result.outcome.short())
        assert any(t.startswith(verdict) for t in texts[texts.index("outcome"):]), (raw.hex(), model.name)


def test_apx_extended_layout_picture_has_the_series_positions() -> None:
    # The extended field's layout (KVM's "Enable APX for guests" v2, patch 04/16, quoted in
    # vmxaddr/apx.py): reserved 15:12, 23:21, 31:29, 39:37, 63:45; reg2 44:40, base 36:32,
    # index 28:24, reg1 20:16, base/index invalid 11/10, segment 9:7, operand size 6:5,
    # mem/reg 4, address size 3:2, scaling 1:0. Two rows of 32 bits; no field crosses bit 32.
    from vmxaddr.pictures import extended_layout_picture

    boxes = _boxes(str(extended_layout_picture()))
    assert sorted(boxes) == sorted([(63, 45), (44, 40), (39, 37), (36, 32), (31, 29), (28, 24), (23, 21),
                                    (20, 16), (15, 12), (11, 11), (10, 10), (9, 7), (6, 5), (4, 4),
                                    (3, 2), (1, 0)])
    hatched = {k for k, a in boxes.items() if a["fill"] == "url(#hatch-undefined)"}
    assert hatched == {(63, 45), (39, 37), (31, 29), (23, 21), (15, 12)}


def test_decode_svg_draws_the_extended_field_too(tmp_path: Path) -> None:
    # VMPTRLD [RAX] in 64-bit code on an APX processor: the extended field is address size
    # 64-bit (2 << 2), segment DS (3 << 7), no index (1 << 10), base RAX (0 << 32) = 0x588.
    out = tmp_path / "x.svg"
    assert main(["decode", "--mode", "64", "--apx", "--svg", str(out), "0fc730"]) == 0
    svg = out.read_text()
    # 32-bit field: base RAX, no index (1 << 22), DS (3 << 15), 64-bit (2 << 7) = 0x00418100.
    assert _digits(svg) == format(0x00418100, "032b") + format(0x588, "064b")
    assert "extended instruction information (APX, VMCS 0x2406) 0x0000000000000588" in svg
