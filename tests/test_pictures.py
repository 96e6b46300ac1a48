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
from vmxaddr.pictures import BOX_H, CELL, MARGIN, ROW_BITS, field_picture, layout_picture, layouts, picture

ROOT = Path(__file__).resolve().parents[1]
NS = "{http://www.w3.org/2000/svg}"

_spec = importlib.util.spec_from_file_location("docs_pictures", ROOT / "docs" / "tools" / "pictures.py")
assert _spec and _spec.loader
pictures_tool = importlib.util.module_from_spec(_spec)
sys.modules["docs_pictures"] = pictures_tool
_spec.loader.exec_module(pictures_tool)


def _rows(root: ET.Element) -> list[float]:
    return sorted({float(r.get("y", 0)) for r in root.iter(f"{NS}rect") if r.get("height") == str(BOX_H)})


def _boxes(svg_text: str) -> dict[tuple[int, int], dict[str, str]]:
    """(hi, lo) -> attributes and label of each bit-field box, found from the geometry alone:
    rows of 16 bits, the highest first; the bit under x is row_hi - (x - MARGIN) / CELL. A field
    split over two rows (its two pieces meet at a row boundary and carry the same label) counts
    once, with its full range. The label is the 11-px text drawn inside the box or under it."""
    root = ET.fromstring(svg_text)
    ys = _rows(root)
    width = len(ys) * ROW_BITS
    texts = [(float(t.get("x", 0)), float(t.get("y", 0)), t.text or "") for t in root.iter(f"{NS}text")
             if t.get("font-size") == "11"]
    pieces = []
    for r in root.iter(f"{NS}rect"):
        if r.get("height") != str(BOX_H):
            continue
        row = ys.index(float(r.get("y", 0)))
        x, y, w = float(r.get("x", 0)), float(r.get("y", 0)), float(r.get("width", 0))
        hi = width - 1 - row * ROW_BITS - round((x - MARGIN) / CELL)
        lo = hi - round(w / CELL) + 1
        label = next(t for tx, ty, t in texts if x < tx < x + w and y < ty <= y + BOX_H + 14)
        pieces.append((hi, lo, label, dict(r.attrib)))
    pieces.sort(reverse=True)
    out: dict[tuple[int, int], dict[str, str]] = {}
    prev = None
    for hi, lo, label, attrs in pieces:
        if prev and prev[1] == hi + 1 and (hi + 1) % ROW_BITS == 0 and prev[2] == label:
            del out[(prev[0], prev[1])]
            hi = prev[0]
        out[(hi, lo)] = {**attrs, "label": label}
        prev = (hi, lo, label)
    return out


def _abbreviations(svg_text: str) -> dict[str, str]:
    """The picture's own key to its short labels ("BI = base invalid; ...")."""
    lines = [t.text or "" for t in ET.fromstring(svg_text).iter(f"{NS}text") if t.get("font-size") == "11"]
    joined = " ".join(" ".join(lines).split())
    return {k: v for k, v in re.findall(r"(\S+) = ([A-Za-z][A-Za-z0-9/ ]*?)(?=;|$| \S+ = )", joined)}


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


# The SDM's tables, transcribed by hand (tests/test_layouts.py cites each: SDM Vol. 3C Tables
# 27-5, 27-8 ... 27-14 of the edition docs/index.md names): (hi, lo) -> (name, drawing), the
# drawing "U" for always undefined (hatched), "C" for undefined under a condition (dashed), "D"
# for always defined (solid).
_MEMORY = {(27, 27): ("base invalid", "D"), (26, 23): ("base", "C"), (22, 22): ("index invalid", "D"),
           (21, 18): ("index", "C"), (17, 15): ("segment", "D"), (9, 7): ("address size", "D"),
           (1, 0): ("scaling", "C")}
_REG_FORM = {k: (n, "D" if n == "mem/reg" else "C") for k, (n, _) in _MEMORY.items()}
SDM_PICTURES: dict[str, dict[tuple[int, int], tuple[str, str]]] = {
    "vmptr": {**_MEMORY, (31, 28): ("undefined", "U"), (14, 11): ("undefined", "U"), (10, 10): ("cleared to 0", "D"),
              (6, 2): ("undefined", "U")},
    "vmread": {**_REG_FORM, (31, 28): ("reg2", "D"), (14, 11): ("undefined", "U"), (10, 10): ("mem/reg", "D"),
               (6, 3): ("reg1", "C"), (2, 2): ("undefined", "U")},
    "inv": {**_MEMORY, (31, 28): ("reg2", "D"), (14, 11): ("undefined", "U"), (10, 10): ("cleared to 0", "D"),
            (6, 2): ("undefined", "U")},
    "dt": {**_MEMORY, (31, 30): ("undefined", "U"), (29, 28): ("identity", "D"), (14, 12): ("undefined", "U"),
           (11, 11): ("operand size", "C"), (10, 10): ("cleared to 0", "D"), (6, 2): ("undefined", "U")},
    "ldt": {**_REG_FORM, (31, 30): ("undefined", "U"), (29, 28): ("identity", "D"), (14, 11): ("undefined", "U"),
            (10, 10): ("mem/reg", "D"), (6, 3): ("reg1", "C"), (2, 2): ("undefined", "U")},
    "rdrand": {(31, 13): ("undefined", "U"), (12, 11): ("operand size", "D"), (10, 7): ("undefined", "U"),
               (6, 3): ("reg", "D"), (2, 0): ("undefined", "U")},
    "io": {(31, 18): ("undefined", "U"), (17, 15): ("segment", "C"), (14, 10): ("undefined", "U"),
           (9, 7): ("address size", "D"), (6, 0): ("undefined", "U")},
    "reg": {(31, 7): ("undefined", "U"), (6, 3): ("reg1", "D"), (2, 0): ("undefined", "U")},
    "loadiwkey": {(31, 28): ("reg2", "D"), (27, 7): ("undefined", "U"), (6, 3): ("reg1", "D"), (2, 0): ("undefined", "U")},
    # Table 27-5: the reserved ranges are drawn hatched (cleared to 0, nothing to read).
    "io-qualification": {(63, 32): ("reserved", "U"), (31, 16): ("port", "D"), (15, 7): ("reserved", "U"),
                         (6, 6): ("operand encoding", "D"), (5, 5): ("REP prefixed", "D"),
                         (4, 4): ("string instruction", "D"), (3, 3): ("direction", "D"), (2, 0): ("size of access", "D")},
}
# vmread's memory fields are undefined for a register operand too, so all but mem/reg are dashed
SDM_PICTURES["vmread"][(17, 15)] = SDM_PICTURES["ldt"][(17, 15)] = ("segment", "C")


def _drawing(attrs: dict[str, str]) -> str:
    if attrs["fill"] == "url(#hatch-undefined)":
        return "U"
    return "C" if attrs.get("stroke-dasharray") == "4,3" else "D"


@pytest.mark.parametrize("name", sorted(SDM_PICTURES))
def test_layout_picture_is_the_sdm_table(name: str) -> None:
    svg = str(picture(name))
    boxes = _boxes(svg)
    keys = _abbreviations(svg)
    got = {k: (keys.get(a["label"], a["label"]), _drawing(a)) for k, a in boxes.items()}
    assert got == SDM_PICTURES[name]


def test_every_layout_has_a_checked_picture() -> None:
    assert {lay.value for lay in layouts()} | {"io-qualification"} == set(SDM_PICTURES)


def test_conditions_are_worded_as_the_sdm() -> None:
    svg = " ".join(" ".join(t.text or "" for t in ET.fromstring(str(layout_picture(Layout.VMREAD))).iter(f"{NS}text")
                            ).split())
    # Table 27-14: Reg1 "Undefined for memory instructions (bit 10 is clear)"; IndexReg "Undefined
    # for register instructions (bit 10 is set) and for ... no index register (... bit 22 is set)".
    assert "6:3 reg1: undefined for memory instructions (bit 10 is clear)" in svg
    assert ("21:18 index: undefined for register instructions (bit 10 is set) and for no index register "
            "(bit 22 is set)") in svg
    dt = " ".join(" ".join(t.text or "" for t in ET.fromstring(str(picture("dt"))).iter(f"{NS}text")).split())
    assert "11 operand size: undefined for VM exits from 64-bit mode" in dt  # Table 27-10


def _explain_svg(argv: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--svg", "-"]) == 0
    return out.getvalue()


@pytest.mark.parametrize("name", [*sorted(SDM_PICTURES), "apx-extended", "apx-extended:vmread", "explain", "decode"])
def test_pictures_fit_a_phone(name: str) -> None:
    # Issue 25 §5: readable 390 px wide without shrinking text below 10 px: the natural width
    # must fit 390 px (so it is shown at scale >= 1) and no text is smaller than 10 px.
    if name == "explain":
        svg = _explain_svg(["explain", "--mode", "64", "--reg", "r21=0x5000", "--reg", "r20=0x10", "d5 b4 c7 74 25 08"])
    elif name == "decode":
        svg = _explain_svg(["decode", "--mode", "64", "26 64 4c 0f 78 44 a5 f0"])
    else:
        svg = str(picture(name))
    root = ET.fromstring(svg)
    assert float(root.get("width", 0)) <= 390
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    sizes = {float(t.get("font-size", 0)) for t in root.iter(f"{NS}text")}
    assert min(sizes) >= 10
    for t in root.iter(f"{NS}text"):  # monospace text, 0.6 em a character, stays within the width
        size = float(t.get("font-size", 0))
        x = float(t.get("x", 0))
        left = x - (len(t.text or "") * size * 0.6 / 2 if t.get("text-anchor") == "middle" else 0)
        assert left + len(t.text or "") * size * 0.6 <= float(root.get("width", 0)) + 1, t.text


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


def _wide_fields(x: int, instruction: str, code_size: int | None = None) -> list[InfoField]:
    """A made-up 64-bit field for the drawing: 63:40 reserved, 39:24 'wide' (crossing the row
    boundary at bit 32), 23 'flag', 22:0 reserved; 'wide' is undefined when 'flag' is 1."""
    flag = bool(x >> 23 & 1)
    return [InfoField("reserved", 63, 40, x >> 40, "", False),
            InfoField("wide", 39, 24, x >> 24 & 0xFFFF, hex(x >> 24 & 0xFFFF), not flag),
            InfoField("flag", 23, 23, int(flag), str(int(flag)), True),
            InfoField("reserved", 22, 0, x & 0x7FFFFF, "", False)]


def test_a_64_bit_field_is_drawn_in_four_rows_of_16() -> None:
    value = 0x12_3456_0000_0000 | 0xABCD << 24
    svg = str(field_picture(value, "vmread", "v", _wide_fields))
    assert len(_rows(ET.fromstring(svg))) == 4
    # 'wide' (39:24) crosses the row boundary at bit 32 and is drawn as 39:32 and 31:24, merged
    # back by its label; 'reserved' (63:40) spans rows 63:48 and 47:40.
    assert sorted(_boxes(svg)) == [(22, 0), (23, 23), (39, 24), (63, 40)]
    assert _digits(svg) == format(value, "064b")


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
    # mem/reg 4, address size 3:2, scaling 1:0. In rows of 16, 63:45 is drawn as 63:48 and
    # 47:45, merged back; no other field crosses a row boundary.
    boxes = _boxes(str(picture("apx-extended")))
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
    words = " ".join(t.text or "" for t in ET.fromstring(svg).iter(f"{NS}text"))  # the heading is wrapped
    assert "extended instruction information (APX, VMCS 0x2406) 0x0000000000000588" in words
