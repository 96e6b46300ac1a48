"""Pictures, generated from vmxaddr's own tables, never drawn by hand.

* `layout_picture(layout)`: one instruction-information layout (SDM Vol. 3C, "Information for
  VM Exits Due to Instruction Execution", the tables "Format of the VM-Exit
  Instruction-Information Field as Used for ..."): field names, bit ranges, and the bits the
  SDM leaves undefined, always or under a condition. Everything comes from
  `vmxaddr.exitinfo.fields` (the decoder of the field, which the models and `vmxaddr decode`
  use) and `vmxaddr.isa.SPECS`: the conditions are found by probing each small field's values
  and watching which other fields become (un)defined.
* `field_picture(info, instruction)`: one instruction's field with its values filled in
  (`vmxaddr decode --svg`).
* `flow_picture(case, exit, result)`: the computation as a flow, bytes -> fields ->
  displacement -> effective address -> segment -> linear address -> checks -> outcome
  (`vmxaddr explain --svg`, under the field picture).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from vmxaddr.apx import VMCS_EXTENDED_INSTRUCTION_INFO, fields_extended
from vmxaddr.case import Case
from vmxaddr.exitinfo import ExitInfo, InfoField, fields
from vmxaddr.isa import SPECS, Layout
from vmxaddr.models.base import Result, Step
from vmxaddr.svg import Svg, text_width

CELL = 24  # pixels per bit
ROW_BITS = 32  # bits per row; a 64-bit field takes two rows
MARGIN = 20
ROW_H = 84
LEGEND_SIZE = 11
LEGEND_LINE = 15

DEFINED_FILL = "#e8f1fb"
CONDITIONAL_FILL = "#f4f8fd"
UNDEFINED_HATCH = ("hatch-undefined", "#b8b8b8", "#f2f2f2")
UNDEFINED_HERE_HATCH = ("hatch-undefined-here", "#e3c98f", "#fffaf0")

# Short labels for fields too narrow for their names (others get their initials).
ABBREVIATIONS = {"base invalid": "BI", "index invalid": "II", "address size": "asz", "mem/reg": "M/R",
                 "cleared to 0": "0", "operand size": "os", "undefined": "u", "scaling": "sc",
                 "segment": "seg", "identity": "id", "index": "idx", "reserved": "rsv"}


# -- what the tables say about a layout ---------------------------------------------------------

def layouts() -> list[Layout]:
    """Every layout some instruction of the table uses, in the table's order of layouts."""
    used = {s.layout for s in SPECS.values()}
    return [lay for lay in Layout if lay in used]


FieldsFn = Callable[[int, str], list[InfoField]]
"""A field's decoder: (value, instruction) -> labelled bit fields, most significant first
(vmxaddr.exitinfo.fields for the 32-bit field; the APX extended field has its own)."""


def instructions_of(layout: Layout) -> list[str]:
    return [m for m, s in SPECS.items() if s.layout is layout]


UNDEFINED_NAMES = ("undefined", "reserved")


@dataclass(frozen=True)
class LayoutField:
    name: str
    hi: int
    lo: int
    kind: str  # "defined", "undefined" (always) or "conditional"
    condition: str = ""  # for "conditional": when the bits are undefined (or defined)


def _key(f: InfoField) -> tuple[str, int, int]:
    return (f.name, f.hi, f.lo)


def layout_fields(layout: Layout, fields_fn: FieldsFn = fields) -> list[LayoutField]:
    """The layout's fields, most significant first, each with when the SDM leaves it undefined.

    Found by probing, not restated: with all bits zero (a memory operand with base and index)
    as the reference, each value of every field of up to three bits is set in turn, and a field
    whose definedness changes gets that value as its condition."""
    # INS/OUTS: the segment field is defined for OUTS only (SDM: "Undefined for VM exits due to
    # execution of INS"), which the probe of one instruction cannot see: probe OUTS, note INS.
    mnemonic = "outs" if layout is Layout.IO else instructions_of(layout)[0]
    base = fields_fn(0, mnemonic)
    undefined_when: dict[tuple[str, int, int], list[str]] = {}
    defined_when: dict[tuple[str, int, int], list[str]] = {}
    for probe_field in base:
        width = probe_field.hi - probe_field.lo + 1
        if probe_field.name in UNDEFINED_NAMES or width > 3:
            continue
        for v in range(1, 1 << width):
            probed = {_key(f): f for f in fields_fn(v << probe_field.lo, mnemonic)}
            shown = probed.get(_key(probe_field))
            what = f"{probe_field.name} = {shown.meaning if shown else v}"
            for f in base:
                g = probed.get(_key(f))
                if g is None or g.defined == f.defined or f.name in UNDEFINED_NAMES:
                    continue
                (undefined_when if f.defined else defined_when).setdefault(_key(f), []).append(what)
    out = []
    for f in base:
        k = _key(f)
        if f.name in UNDEFINED_NAMES or (not f.defined and k not in defined_when):
            out.append(LayoutField(f.name, f.hi, f.lo, "undefined"))
        elif layout is Layout.IO and f.name == "segment":
            out.append(LayoutField(f.name, f.hi, f.lo, "conditional", "undefined for INS (which always uses ES)"))
        elif k in undefined_when:
            out.append(LayoutField(f.name, f.hi, f.lo, "conditional", "undefined when " + " or ".join(undefined_when[k])))
        elif k in defined_when:
            out.append(LayoutField(f.name, f.hi, f.lo, "conditional", "defined only when " + " or ".join(defined_when[k])))
        else:
            out.append(LayoutField(f.name, f.hi, f.lo, "defined"))
    return out


def layout_title(layout: Layout) -> str:
    names = [m.upper() for m in instructions_of(layout)]
    return ("Format of the VM-exit instruction-information field as used for "
            + (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]))


# -- the bit-field drawing, shared by both field pictures ----------------------------------------

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


def _draw_bits(svg: Svg, boxes: list[_Box], top: float, with_values: bool) -> tuple[float, dict[str, str]]:
    """Draw the boxes in rows of 32 bits from `top`; return the y below them and the
    abbreviations used (label -> name)."""
    width_bits = max(b.hi for b in boxes) + 1
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
            svg.rect(x, y + 16, w, 34, fill=fills[b.style], stroke="#333333", stroke_width=1, stroke_dasharray=dash)
            svg.text(x + CELL / 2, y + 11, str(hi), 10, text_anchor="middle", fill="#555555")
            if hi != lo:
                svg.text(x + w - CELL / 2, y + 11, str(lo), 10, text_anchor="middle", fill="#555555")
            for bit in range(lo, hi):  # thin ticks between the bits of a field
                bx = MARGIN + (row_hi - bit) * CELL
                svg.line(bx, y + 44, bx, y + 50, stroke="#999999", stroke_width=1)
            label = _label(b.name, w, 11)
            if label != b.name:
                used[label] = b.name
            if with_values and b.value is not None:
                for bit in range(lo, hi + 1):
                    bx = MARGIN + (row_hi - bit) * CELL + CELL / 2
                    svg.text(bx, y + 38, str(b.value >> (bit - b.lo) & 1), 13, text_anchor="middle", font_weight="bold")
                svg.text(x + w / 2, y + 64, label, 11, text_anchor="middle")
            else:
                svg.text(x + w / 2, y + 37, label, 11, text_anchor="middle")
    return top + rows * ROW_H, used


def _legend_swatches(svg: Svg, y: float, items: list[tuple[str, str, str | None]]) -> float:
    x = float(MARGIN)
    for fill, words, dash in items:
        svg.rect(x, y - 10, 18, 12, fill=fill, stroke="#333333", stroke_width=1, stroke_dasharray=dash)
        svg.text(x + 24, y, words, LEGEND_SIZE)
        x += 24 + text_width(words, LEGEND_SIZE) + 20
    return y + LEGEND_LINE


def _bits(hi: int, lo: int) -> str:
    return f"{hi}:{lo}" if hi != lo else str(hi)


def layout_picture(layout: Layout) -> Svg:
    """The layout as the SDM's table gives it: names, bit ranges, undefined bits."""
    return _layout_svg(layout_title(layout), layout_fields(layout),
                       f"layout '{layout.value}', generated by vmxaddr.pictures from vmxaddr.exitinfo.fields")


def _layout_svg(title: str, lf: list[LayoutField], footer: str) -> Svg:
    boxes = [_Box(f.name, f.hi, f.lo, f.kind) for f in lf]
    lines = [f"{_bits(f.hi, f.lo):>5}  {f.name:<14}  "
             + {"defined": "", "undefined": "undefined", "conditional": f.condition}[f.kind] for f in lf]
    return _field_svg(title, boxes, lines, with_values=False, footer=footer)


def field_layout_across_layouts(fields_fn: FieldsFn) -> list[LayoutField]:
    """One field whose bit positions every layout shares but whose use differs by layout (the
    APX extended field): a position is "defined" where every layout defines it, "undefined"
    where none does, and otherwise lists the layouts that use it."""
    per = {lay: {(f.name, f.hi, f.lo): f for f in layout_fields(lay, fields_fn)} for lay in layouts()}
    first = next(iter(per.values()))
    out = []
    for key, f in first.items():
        kinds = {lay: fs[key].kind for lay, fs in per.items() if key in fs}
        if all(k == "defined" for k in kinds.values()):
            out.append(LayoutField(f.name, f.hi, f.lo, "defined"))
        elif all(k == "undefined" for k in kinds.values()):
            out.append(LayoutField(f.name, f.hi, f.lo, "undefined"))
        else:
            users = [lay.value for lay, k in kinds.items() if k != "undefined"]
            some = any(k == "conditional" for k in kinds.values())
            out.append(LayoutField(f.name, f.hi, f.lo, "conditional", "used by the layouts " + ", ".join(users)
                                   + ("; under the same conditions as in the 32-bit field" if some else "")))
    return out


def across_layouts_picture(fields_fn: FieldsFn, title: str, footer: str) -> Svg:
    return _layout_svg(title, field_layout_across_layouts(fields_fn), footer)


def extended_layout_picture() -> Svg:
    """APX's 64-bit extended instruction-information field (vmxaddr.apx): the same positions for
    every layout, each field marked with the layouts that use it."""
    return across_layouts_picture(
        fields_extended, f"The APX extended instruction-information field (64 bits, VMCS {VMCS_EXTENDED_INSTRUCTION_INFO:#06x})",
        "generated by vmxaddr.pictures from vmxaddr.apx.fields_extended")


def exit_fields_picture(exit: ExitInfo, heading: str) -> Svg:
    """The instruction-information field of an exit, values filled in, and under it the APX
    extended field when the exit has one (`vmxaddr decode --svg`)."""
    field = field_picture(exit.instruction_info, exit.instruction, heading)
    if exit.extended_info is None:
        return field
    ext = field_picture(exit.extended_info, exit.instruction,
                        f"extended instruction information (APX, VMCS {VMCS_EXTENDED_INSTRUCTION_INFO:#06x}) "
                        f"{exit.extended_info:#018x}", fields_extended)
    svg = Svg(max(field.width, ext.width), field.height + ext.height, heading)
    svg.embed(field, 0, 0)
    svg.embed(ext, 0, field.height)
    return svg


def field_picture(info: int, instruction: str, heading: str = "", fields_fn: FieldsFn = fields) -> Svg:
    """One instruction's field with its values: undefined bits hatched, the ones undefined only
    for this operand in a lighter hatch."""
    fs = fields_fn(info, instruction)
    boxes = []
    lines = []
    for f in fs:
        style = "defined" if f.defined else ("undefined" if f.name in UNDEFINED_NAMES else "undefined-here")
        boxes.append(_Box(f.name, f.hi, f.lo, style, f.value))
        width = f.hi - f.lo + 1
        meaning = f.meaning if f.defined else (f.name if f.name in UNDEFINED_NAMES else f"({f.meaning}: undefined here)")
        lines.append(f"{_bits(f.hi, f.lo):>5}  {f.name:<14}  {f.value:0{width}b}".ljust(max(44, width + 25)) + meaning)
    title = heading or f"{instruction.upper()}: instruction information {info:#010x}"
    return _field_svg(title, boxes, lines, with_values=True,
                      footer=f"layout '{SPECS[instruction].layout.value}', generated by vmxaddr.pictures")


def _field_svg(title: str, boxes: list[_Box], lines: list[str], with_values: bool, footer: str) -> Svg:
    width_bits = min(max(b.hi for b in boxes) + 1, ROW_BITS)
    svg = Svg(0, 0, title)
    svg.text(MARGIN, 22, title, 13, font_weight="bold")
    y, abbrevs = _draw_bits(svg, boxes, 34, with_values)
    if with_values:
        y = _legend_swatches(svg, y + 4, [(DEFINED_FILL, "defined", None),
                                         (svg.hatch(*UNDEFINED_HATCH), "undefined", None),
                                         (svg.hatch(*UNDEFINED_HERE_HATCH), "undefined for this operand", None)])
    else:
        y = _legend_swatches(svg, y + 4, [(DEFINED_FILL, "defined", None),
                                         (svg.hatch(*UNDEFINED_HATCH), "undefined", None),
                                         (CONDITIONAL_FILL, "undefined under a condition", "4,3")])
    if abbrevs:
        lines.append("")
        lines.append("; ".join(f"{k} = {v}" for k, v in sorted(abbrevs.items())))
    y += 6
    for ln in lines:
        svg.text(MARGIN, y + LEGEND_SIZE, ln, LEGEND_SIZE, style="white-space:pre")
        y += LEGEND_LINE
    y += 8
    svg.text(MARGIN, y + 10, footer, 9, fill="#777777")
    longest = max([text_width(ln, LEGEND_SIZE) for ln in lines] + [text_width(title, 13), text_width(footer, 9)])
    svg.width = max(2 * MARGIN + width_bits * CELL, 2 * MARGIN + longest)
    svg.height = y + 20
    return svg


# -- the computation as a flow ------------------------------------------------------------------

FLOW_WIDTH = 820
STAGE_COLUMN = 150
WRAP = 88  # characters per line of step text
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
    fs = [f for f in fields(exit.instruction_info, exit.instruction) if f.defined and f.name != "undefined"]
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
    svg = Svg(FLOW_WIDTH, 0, f"{case.instruction.text()}: the computation ({model_name})")
    arrow = svg.arrow_marker("flow-arrow")
    svg.text(MARGIN, 22, f"The computation ({model_name}): bytes -> fields -> displacement -> EA -> segment "
             "-> linear -> checks -> outcome", 13, font_weight="bold")
    y = 36.0
    body_x = MARGIN + STAGE_COLUMN
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
        h = 14 + 15 * len(lines)
        svg.rect(MARGIN, y, box_w, h, fill=fill, stroke="#333333" if reached else "#aaaaaa", stroke_width=1, rx=4)
        svg.text(MARGIN + 10, y + 19, stage, 12, font_weight="bold", fill="#222222" if reached else "#999999")
        for i, ln in enumerate(lines):
            svg.text(body_x, y + 19 + 15 * i, ln, 11, style="white-space:pre",
                     fill="#222222" if reached else "#999999", font_weight="bold" if i == 0 else None)
        y += h
        if n + 1 < len(boxes):
            svg.line(MARGIN + 60, y, MARGIN + 60, y + 16, stroke="#555555", stroke_width=1.5, marker_end=arrow)
            y += 18
    svg.height = y + 12
    return svg


def explain_picture(case: Case, exit: ExitInfo, result: Result, model_name: str = "sdm") -> Svg:
    """`vmxaddr explain --svg`: the field picture, then the computation under it."""
    field = exit_fields_picture(exit, f"{case.instruction.text()}: instruction information {exit.instruction_info:#010x}")
    flow = flow_picture(case, exit, result, model_name)
    svg = Svg(max(field.width, flow.width), field.height + flow.height, flow.title)
    svg.embed(field, 0, 0)
    svg.embed(flow, 0, field.height)
    return svg
