"""Pictures, generated from vmxaddr's own tables, never drawn by hand.

* `picture(name)`: any layout of vmxaddr.layouts by name — an instruction-information layout
  ("vmptr", "vmread", "inv", "dt", "ldt", "rdrand", "io", "reg", "loadiwkey"), the I/O exit
  qualification ("io-qualification"), APX's extended field ("apx-extended", every layout's use
  of it, or "apx-extended:<layout>"): field names, bit ranges, the bits the SDM leaves
  undefined, always or under the condition its table states. Every field comes from the one
  table (vmxaddr.layouts); nothing here restates a position.
* `field_picture(info, instruction)`: one instruction's field with its values filled in
  (`vmxaddr decode --svg`).
* `flow_picture(case, exit, result)`: the computation as a flow, bytes -> fields ->
  displacement -> effective address -> segment -> linear address -> checks -> outcome
  (`vmxaddr explain --svg`, under the field picture).

Readable on a phone: the bit fields are drawn 16 bits to a row (a 32-bit field in two rows, a
64-bit one in four) and the text is wrapped to the drawing's width, so the natural width is
`WIDTH` (372 px) and no text is smaller than 10 px when the picture is shown 390 px wide.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmxaddr import layouts as lay_tables
from vmxaddr.apx import VMCS_EXTENDED_INSTRUCTION_INFO, fields_extended
from vmxaddr.bytemap import breakdown
from vmxaddr.bytemap import picture as bytes_picture
from vmxaddr.case import Case
from vmxaddr.exitinfo import ExitInfo, InfoField, fields
from vmxaddr.isa import SPECS, Layout
from vmxaddr.models.base import Result, Step
from vmxaddr.svg import Svg, text_width

CELL = 22  # pixels per bit
ROW_BITS = 16  # bits per row
MARGIN = 10
WIDTH = 2 * MARGIN + ROW_BITS * CELL  # 372: fits a 390-px phone at scale 1
ROW_H = 72  # a row of boxes with its bit numbers and, under the values, the labels
BOX_Y, BOX_H = 14, 30  # the box within its row
LEGEND_SIZE = 11
LEGEND_LINE = 15
TITLE_SIZE = 13
FOOTER_SIZE = 10  # the smallest text drawn anywhere

DEFINED_FILL = "#e8f1fb"
CONDITIONAL_FILL = "#f4f8fd"
UNDEFINED_HATCH = ("hatch-undefined", "#b8b8b8", "#f2f2f2")
UNDEFINED_HERE_HATCH = ("hatch-undefined-here", "#e3c98f", "#fffaf0")

# Short labels for fields too narrow for their names (others get their initials).
ABBREVIATIONS = {"base invalid": "BI", "index invalid": "II", "address size": "asz", "mem/reg": "M/R",
                 "cleared to 0": "0", "operand size": "os", "undefined": "u", "scaling": "sc",
                 "segment": "seg", "identity": "id", "index": "idx", "reserved": "rsv", "reg1": "r1",
                 "reg2": "r2", "size of access": "size", "direction": "dir", "string instruction": "S",
                 "REP prefixed": "R", "operand encoding": "E"}

UNDEFINED_NAMES = ("undefined", "reserved")


# -- what the tables say about a layout ---------------------------------------------------------

def layouts() -> list[Layout]:
    """Every layout some instruction of the table uses, in the table's order of layouts."""
    used = {s.layout for s in SPECS.values()}
    return [lay for lay in Layout if lay in used]


def picture_names() -> list[str]:
    """Every name `picture` draws: the instruction-information layouts, the I/O qualification,
    the APX extended field (all layouts) and the extended field per layout."""
    return ([lay.value for lay in layouts()] + [lay_tables.IO_QUALIFICATION.name, "apx-extended"]
            + [f"apx-extended:{lay.value}" for lay in layouts()])


FieldsFn = Callable[..., list[InfoField]]
"""A field's decoder: (value, instruction[, code_size]) -> labelled bit fields, most
significant first (vmxaddr.exitinfo.fields; vmxaddr.apx.fields_extended)."""


def instructions_of(layout: Layout) -> list[str]:
    """The instructions whose instruction information has `layout`."""
    return [m for m, s in SPECS.items() if s.layout is layout]


@dataclass(frozen=True)
class LayoutField:
    """One field of a drawn layout: its bits, and whether the SDM defines it always, never or on a
    condition."""
    name: str
    hi: int
    lo: int
    kind: str  # "defined", "undefined" (always) or "conditional"
    condition: str = ""  # for "conditional": when the bits are undefined (or which layouts use them)


def layout_fields(table: lay_tables.Layout) -> list[LayoutField]:
    """The table's fields, most significant first, each with when the SDM leaves it undefined
    (read from the table's conditions, in the SDM's words)."""
    out = []
    for f in table.fields:
        if f.kind in UNDEFINED_NAMES:
            out.append(LayoutField(f.name, f.hi, f.lo, "undefined"))
        elif f.undefined_when:
            out.append(LayoutField(f.name, f.hi, f.lo, "conditional",
                                   "undefined for " + " and for ".join(w.text for w in f.undefined_when)))
        else:
            out.append(LayoutField(f.name, f.hi, f.lo, "defined"))
    return out


def layout_title(layout: Layout) -> str:
    """The SDM's title for the layout's table, naming its instructions."""
    names = [m.upper() for m in instructions_of(layout)]
    return ("Format of the VM-exit instruction-information field as used for "
            + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]))


def extended_fields() -> list[LayoutField]:
    """APX's extended field, every layout at once: a position is "defined" where every layout
    defines it unconditionally, "undefined" where none uses it, else "conditional" with the
    layouts that use it."""
    out = []
    per = {name: {(f.name, f.hi, f.lo): f for f in t.fields} for name, t in lay_tables.EXTENDED.items()
           if name in {lay.value for lay in layouts()}}
    for pos in lay_tables.EXTENDED_POSITIONS:
        key = (pos.name, pos.hi, pos.lo)
        used = {name: fs[key] for name, fs in per.items() if fs[key].kind not in UNDEFINED_NAMES}
        if not used:
            out.append(LayoutField(pos.name, pos.hi, pos.lo, "undefined"))
        elif len(used) == len(per) and not any(f.undefined_when for f in used.values()):
            out.append(LayoutField(pos.name, pos.hi, pos.lo, "defined"))
        else:
            some = any(f.undefined_when for f in used.values())
            out.append(LayoutField(pos.name, pos.hi, pos.lo, "conditional", "used by " + ", ".join(used)
                                   + ("; undefined under the same conditions as in the 32-bit field" if some else "")))
    return out


def picture(name: str) -> Svg:
    """The picture of any layout by name (see `picture_names`); KeyError for an unknown name."""
    if name == "apx-extended":
        return extended_layout_picture()
    if name == lay_tables.IO_QUALIFICATION.name:
        t = lay_tables.IO_QUALIFICATION
        return _layout_svg("Exit qualification for I/O instructions (INS, OUTS; 64 bits)", layout_fields(t),
                           f"{t.source}; drawn from vmxaddr.layouts", 64)
    if name.startswith("apx-extended:"):
        lay = Layout(name.split(":", 1)[1])
        t = lay_tables.EXTENDED[lay.value]
        return _layout_svg(f"APX extended instruction information (VMCS {VMCS_EXTENDED_INSTRUCTION_INFO:#06x}) as "
                           f"used for {', '.join(m.upper() for m in instructions_of(lay))}", layout_fields(t),
                           "drawn from vmxaddr.layouts.EXTENDED", 64)
    return layout_picture(Layout(name))


def layout_name_of(mnemonic: str) -> str:
    """The layout name `picture` takes for an instruction (its instruction-information layout;
    for INS and OUTS draw "io-qualification" too)."""
    return SPECS[mnemonic].layout.value


def layout_picture(layout: Layout) -> Svg:
    """The layout as the SDM's table gives it: names, bit ranges, undefined bits."""
    t = lay_tables.INSTRUCTION_INFO[layout.value]
    return _layout_svg(layout_title(layout), layout_fields(t), f"{t.source}; drawn from vmxaddr.layouts", 32)


def extended_layout_picture() -> Svg:
    """APX's 64-bit extended instruction-information field (vmxaddr.apx): the same positions for
    every layout, each field marked with the layouts that use it."""
    return _layout_svg(f"The APX extended instruction-information field (64 bits, VMCS "
                       f"{VMCS_EXTENDED_INSTRUCTION_INFO:#06x})", extended_fields(),
                       "drawn from vmxaddr.layouts.EXTENDED_POSITIONS", 64)


# -- the bit-field drawing, shared by every field picture ---------------------------------------

@dataclass(frozen=True)
class _Box:
    name: str
    hi: int
    lo: int
    style: str  # "defined", "conditional", "undefined", "undefined-here"
    value: int | None = None


def _label(name: str, room: float, size: float) -> str:
    if text_width(name, size) <= room - 4:
        return name
    short = ABBREVIATIONS.get(name) or "".join(w[0] for w in name.replace("/", " ").split()).upper()
    while short and text_width(short, size) > room - 2:
        short = short[:-1]
    return short


def _draw_bits(svg: Svg, boxes: list[_Box], top: float, with_values: bool, width_bits: int
               ) -> tuple[float, dict[str, str]]:
    """Draw the boxes in rows of ROW_BITS bits from `top` (a field crossing a row boundary is
    drawn in each row); return the y below them and the abbreviations used (label -> name)."""
    rows = (width_bits + ROW_BITS - 1) // ROW_BITS
    fills = {"defined": DEFINED_FILL, "conditional": CONDITIONAL_FILL,
             "undefined": svg.hatch(*UNDEFINED_HATCH), "undefined-here": svg.hatch(*UNDEFINED_HERE_HATCH)}
    used: dict[str, str] = {}
    for r in range(rows):
        row_hi = width_bits - 1 - r * ROW_BITS
        row_lo = max(0, row_hi - ROW_BITS + 1)
        y = top + r * ROW_H
        for b in boxes:
            hi, lo = min(b.hi, row_hi), max(b.lo, row_lo)
            if hi < lo:
                continue
            x = MARGIN + (row_hi - hi) * CELL
            w = (hi - lo + 1) * CELL
            dash = "4,3" if b.style == "conditional" else None
            svg.rect(x, y + BOX_Y, w, BOX_H, fill=fills[b.style], stroke="#333333", stroke_width=1,
                     stroke_dasharray=dash, data_field=b.name, data_bits=_bits(b.hi, b.lo))
            svg.text(x + CELL / 2, y + 10, str(hi), 10, text_anchor="middle", fill="#555555")
            if hi != lo:
                svg.text(x + w - CELL / 2, y + 10, str(lo), 10, text_anchor="middle", fill="#555555")
            for bit in range(lo, hi):  # thin ticks between the bits of a field
                bx = MARGIN + (row_hi - bit) * CELL
                svg.line(bx, y + BOX_Y + BOX_H - 6, bx, y + BOX_Y + BOX_H, stroke="#999999", stroke_width=1)
            label = _label(b.name, w, 11)
            if label != b.name:
                used[label] = b.name
            if with_values and b.value is not None:
                for bit in range(lo, hi + 1):
                    bx = MARGIN + (row_hi - bit) * CELL + CELL / 2
                    svg.text(bx, y + BOX_Y + 20, str(b.value >> (bit - b.lo) & 1), 13, text_anchor="middle",
                             font_weight="bold")
                svg.text(x + w / 2, y + BOX_Y + BOX_H + 13, label, 11, text_anchor="middle")
            else:
                svg.text(x + w / 2, y + BOX_Y + 20, label, 11, text_anchor="middle")
    return top + rows * ROW_H, used


def _legend_swatches(svg: Svg, y: float, items: list[tuple[str, str, str | None]]) -> float:
    x = float(MARGIN)
    for fill, words, dash in items:
        need = 24 + text_width(words, LEGEND_SIZE)
        if x > MARGIN and x + need > WIDTH - MARGIN:  # wrap: the legend stays within the width
            x, y = float(MARGIN), y + LEGEND_LINE
        svg.rect(x, y - 10, 18, 12, fill=fill, stroke="#333333", stroke_width=1, stroke_dasharray=dash)
        svg.text(x + 24, y, words, LEGEND_SIZE)
        x += need + 16
    return y + LEGEND_LINE


def _bits(hi: int, lo: int) -> str:
    return f"{hi}:{lo}" if hi != lo else str(hi)


def _wrap(text: str, size: float, indent: str = "") -> list[str]:
    """`text` in lines that fit the drawing's width at `size` px (monospace)."""
    chars = int((WIDTH - 2 * MARGIN) / (size * 0.62))  # a little room for bold and font metrics
    return textwrap.wrap(text, chars, subsequent_indent=indent, drop_whitespace=True,
                         break_on_hyphens=False) or [""]


def _layout_svg(title: str, lf: list[LayoutField], footer: str, width_bits: int) -> Svg:
    boxes = [_Box(f.name, f.hi, f.lo, f.kind) for f in lf]
    lines = [f"{_bits(f.hi, f.lo):>5} {f.name}" + {"defined": "", "conditional": ": " + f.condition,
                                                  "undefined": "" if f.name in UNDEFINED_NAMES else ": undefined"}[f.kind]
             for f in lf]
    return _field_svg(title, boxes, lines, with_values=False, footer=footer, width_bits=width_bits)


def exit_fields_picture(exit: ExitInfo, heading: str, code_size: int | None = None) -> Svg:
    """The instruction-information field of an exit, values filled in, and under it the APX
    extended field when the exit has one (`vmxaddr decode --svg`). `code_size`: the mode the
    exit came from (the LGDT group's operand size is undefined from 64-bit mode)."""
    field = field_picture(exit.instruction_info, exit.instruction, heading, code_size=code_size)
    if exit.extended_info is None:
        return field
    ext = field_picture(exit.extended_info, exit.instruction,
                        f"extended instruction information (APX, VMCS {VMCS_EXTENDED_INSTRUCTION_INFO:#06x}) "
                        f"{exit.extended_info:#018x}", fields_extended, code_size)
    svg = Svg(max(field.width, ext.width), field.height + ext.height, heading)
    svg.embed(field, 0, 0)
    svg.embed(ext, 0, field.height)
    return svg


def decode_picture(instr: Any, exit: ExitInfo, bytemap: Any = None) -> Svg:
    """`vmxaddr decode --svg`: the bytes taken apart (vmxaddr.bytemap), then the fields."""
    heading = f"{instr.text()}: instruction information {exit.instruction_info:#010x}"
    top = bytes_picture(bytemap or breakdown(instr), f"{instr.text()}: the bytes {instr.raw.hex(' ')}")
    fields_svg = exit_fields_picture(exit, heading, instr.code_size)
    svg = Svg(max(top.width, fields_svg.width), top.height + fields_svg.height, heading)
    svg.embed(top, 0, 0)
    svg.embed(fields_svg, 0, top.height)
    return svg


def field_picture(info: int, instruction: str, heading: str = "", fields_fn: FieldsFn = fields,
                  code_size: int | None = None) -> Svg:
    """One instruction's field with its values: undefined bits hatched, the ones undefined only
    for this operand (or this mode) in a lighter hatch."""
    fs = fields_fn(info, instruction, code_size)
    boxes = []
    lines = []
    for f in fs:
        always = not f.defined and not f.meaning  # undefined or reserved in this layout, whatever the value
        style = "defined" if f.defined else ("undefined" if always else "undefined-here")
        boxes.append(_Box(f.name, f.hi, f.lo, style, f.value))
        width = f.hi - f.lo + 1
        meaning = f.meaning if f.defined else (
            ("" if f.name in UNDEFINED_NAMES else "undefined in this layout") if always
            else f"({f.meaning}: undefined here)")
        value = f"{f.value:0{width}b}" if width <= 8 else f"{f.value:#x}"
        lines.append(f"{_bits(f.hi, f.lo):>5} {f.name} = {value}" + (f": {meaning}" if meaning else ""))
    title = heading or f"{instruction.upper()}: instruction information {info:#010x}"
    width_bits = 64 if max(f.hi for f in fs) >= 32 else 32
    return _field_svg(title, boxes, lines, with_values=True,
                      footer=f"layout '{SPECS[instruction].layout.value}', drawn from vmxaddr.layouts",
                      width_bits=width_bits)


def _field_svg(title: str, boxes: list[_Box], lines: list[str], with_values: bool, footer: str,
               width_bits: int) -> Svg:
    svg = Svg(WIDTH, 0, title)
    y = 6.0
    for ln in _wrap(title, TITLE_SIZE):
        y += TITLE_SIZE + 4
        svg.text(MARGIN, y, ln, TITLE_SIZE, font_weight="bold")
    y, abbrevs = _draw_bits(svg, boxes, y + 8, with_values, width_bits)
    if with_values:
        y = _legend_swatches(svg, y + 4, [(DEFINED_FILL, "defined", None),
                                         (svg.hatch(*UNDEFINED_HATCH), "undefined", None),
                                         (svg.hatch(*UNDEFINED_HERE_HATCH), "undefined for this operand", None)])
    else:
        y = _legend_swatches(svg, y + 4, [(DEFINED_FILL, "defined", None),
                                         (svg.hatch(*UNDEFINED_HATCH), "undefined", None),
                                         (CONDITIONAL_FILL, "undefined under a condition", "4,3")])
    if abbrevs:
        lines = [*lines, "; ".join(f"{k} = {v}" for k, v in sorted(abbrevs.items()))]
    y += 6
    for text in lines:
        for ln in _wrap(text, LEGEND_SIZE, "      "):
            svg.text(MARGIN, y + LEGEND_SIZE, ln, LEGEND_SIZE, style="white-space:pre")
            y += LEGEND_LINE
    y += 6
    for ln in _wrap(footer, FOOTER_SIZE):
        svg.text(MARGIN, y + FOOTER_SIZE, ln, FOOTER_SIZE, fill="#666666")
        y += FOOTER_SIZE + 3
    svg.height = y + 10
    return svg


# -- the computation as a flow ------------------------------------------------------------------

FLOW_WIDTH = WIDTH  # as narrow as the field pictures: readable on a phone
WRAP = int((WIDTH - 2 * MARGIN - 16) / (11 * 0.62))  # characters per line of step text (11 px)
OUTCOME_FILL = {"ok": "#dff3e3", "fault": "#fbe0e0", "implementation-specific": "#fff1cc"}

_STAGE_OF = {"displacement": "displacement", "effective-address": "effective address", "segment": "segment",
             "linear-address": "linear address", "register-operand": "fields", "extended-info": "fields"}


def _stages(case: Case, exit: ExitInfo, result: Result) -> list[tuple[str, str, list[Step]]]:
    """(stage, headline, steps) in the order bytes -> fields -> displacement -> effective
    address -> segment -> linear address -> checks; a stage no step reached has no steps."""
    ins = case.instruction
    grouped: dict[str, list[Step]] = {}
    for s in result.steps:
        grouped.setdefault(_STAGE_OF.get(s.name, "checks"), []).append(s)
    fs = [f for f in fields(exit.instruction_info, exit.instruction, ins.code_size) if f.defined]
    summary = ", ".join(f"{f.name}: {f.meaning}" for f in fs)

    def hexval(v: int | None) -> str:
        return "-" if v is None else f"{v:#x}"

    disp = result.displacement
    disp_text = "-" if disp is None else (f"-{(1 << 64) - disp:#x}" if disp >> 63 else f"{disp:#x}")
    return [
        ("bytes", f"{ins.raw.hex(' ')}  ({ins.code_size}-bit code): {ins.text()}", []),
        ("fields", f"instruction information {exit.instruction_info:#010x}: {summary}", grouped.get("fields", [])),
        ("displacement", f"exit qualification {exit.exit_qualification:#x} -> displacement {disp_text}",
         grouped.get("displacement", [])),
        ("effective address", f"EA = {hexval(result.effective_address)}", grouped.get("effective address", [])),
        ("segment", f"segment {result.segment or '-'}, base {hexval(result.segment_base)}", grouped.get("segment", [])),
        ("linear address", f"linear = {hexval(result.linear_address)}", grouped.get("linear address", [])),
        ("checks", f"{len(grouped.get('checks', []))} checks, in the model's order", grouped.get("checks", [])),
    ]


def flow_picture(case: Case, exit: ExitInfo, result: Result, model_name: str = "sdm") -> Svg:
    """The computation of one case as a flow picture: bytes, fields, displacement, EA, segment,
    linear address, checks, outcome."""
    svg = Svg(FLOW_WIDTH, 0, f"{case.instruction.text()}: the computation ({model_name})")
    arrow = svg.arrow_marker("flow-arrow")
    y = 6.0
    for ln in _wrap(f"The computation ({model_name}): bytes -> fields -> displacement -> EA -> segment "
                    "-> linear -> checks -> outcome", TITLE_SIZE):
        y += TITLE_SIZE + 4
        svg.text(MARGIN, y, ln, TITLE_SIZE, font_weight="bold")
    y += 12
    body_x = MARGIN + 10
    box_w = FLOW_WIDTH - 2 * MARGIN
    o = result.outcome
    boxes: list[tuple[str, list[str], str, bool]] = []
    for stage, headline, steps in _stages(case, exit, result):
        reached = bool(steps) or stage in ("bytes", "fields")
        lines = textwrap.wrap(headline, WRAP) if reached else ["not reached"]
        for s in steps:
            lines += textwrap.wrap(f"[{s.rule}] {s.text}", WRAP, subsequent_indent="    ")
        boxes.append((stage, lines, "#ffffff" if reached else "#f2f2f2", reached))
    verdict = {"ok": "no fault"}.get(o.kind, o.short())
    out_lines = textwrap.wrap(f"{verdict}" + (f": [{o.rule}] {o.reason}" if o.reason else (f" [{o.rule}]" if o.rule else "")),
                              WRAP, subsequent_indent="    ")
    boxes.append(("outcome", out_lines, OUTCOME_FILL.get(o.kind, "#ffffff"), True))
    for n, (stage, lines, fill, reached) in enumerate(boxes):
        h = 14 + 15 * (len(lines) + 1)  # the stage's name on its own line, its text under it
        svg.rect(MARGIN, y, box_w, h, fill=fill, stroke="#333333" if reached else "#aaaaaa", stroke_width=1, rx=4)
        svg.text(MARGIN + 10, y + 19, stage, 12, font_weight="bold", fill="#222222" if reached else "#999999")
        for i, ln in enumerate(lines):
            svg.text(body_x, y + 34 + 15 * i, ln, 11, style="white-space:pre",
                     fill="#222222" if reached else "#999999", font_weight="bold" if i == 0 else None)
        y += h
        if n + 1 < len(boxes):
            svg.line(MARGIN + 60, y, MARGIN + 60, y + 16, stroke="#555555", stroke_width=1.5, marker_end=arrow)
            y += 18
    svg.height = y + 12
    return svg


def explain_picture(case: Case, exit: ExitInfo, result: Result, model_name: str = "sdm") -> Svg:
    """`vmxaddr explain --svg`: the field picture, then the computation under it."""
    field = exit_fields_picture(exit, f"{case.instruction.text()}: instruction information {exit.instruction_info:#010x}",
                                case.instruction.code_size)
    flow = flow_picture(case, exit, result, model_name)
    svg = Svg(max(field.width, flow.width), field.height + flow.height, flow.title)
    svg.embed(field, 0, 0)
    svg.embed(flow, 0, field.height)
    return svg
