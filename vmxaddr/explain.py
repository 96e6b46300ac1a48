"""Text for people: an instruction, its exit information as labelled bit fields, and every step
of a model's computation with the rule it applies."""

from __future__ import annotations

from vmxaddr import rex2 as rex2_mod
from vmxaddr.apx import fields_extended
from vmxaddr.case import Case
from vmxaddr.exitinfo import ExitInfo, InfoField, fields
from vmxaddr.io_exit import decode_qualification, guest_linear_address
from vmxaddr.isa import SPECS, Layout
from vmxaddr.models.base import Result
from vmxaddr.rules import RULES


def describe_instruction(case: Case) -> list[str]:
    """Lines describing the decoded instruction: text, code size, bytes, REX2, the memory operand."""
    ins = case.instruction
    lines = [f"{ins.text()}    ({ins.code_size}-bit code, {ins.length} bytes: {ins.raw.hex(' ')})"]
    if ins.rex2:
        lines.append(f"  REX2 prefix d5 {ins.rex2 & 0xFF:02x}: {rex2_mod.text(ins.rex2 & 0xFF)} (APX; register "
                     "numbers are R4:R3:ModRM.reg, X4:X3:SIB.index, B4:B3:ModRM.rm/SIB.base)")
    op = ins.operand
    if op is not None:
        prefix = ""
        if op.segment_prefix and op.segment_prefix != op.segment:
            prefix = (f"; the {op.segment_prefix.upper()} prefix has no effect: INS always writes through ES"
                      if ins.mnemonic == "ins" else f"; the {op.segment_prefix.upper()} prefix has no effect in 64-bit mode")
        lines.append(f"  memory operand: {op.access_size}-byte {op.access}, {op.address_size}-bit address size, "
                     f"segment {op.segment}{prefix}" + (", RIP-relative" if op.rip_relative else ""))
    elif ins.spec.layout is Layout.LOADIWKEY:
        lines.append("  register operands: two XMM registers (and the implicit EAX and XMM0); no memory access")
    else:
        lines.append("  register operand: no memory access")
    return lines


def _field_lines(rows: list[InfoField]) -> list[str]:
    lines = []
    for f in rows:
        bits = f"{f.hi}:{f.lo}" if f.hi != f.lo else f"{f.hi}"
        mark = " " if f.defined else "~"
        blank = f.name in ("undefined", "reserved")
        meaning = f.meaning if f.defined else (f.name if blank else "undefined in this layout" if not f.meaning
                                               else f"({f.meaning}: undefined here)")
        width = f.hi - f.lo + 1
        value = f"{f.value:0{width}b}" if width <= 19 else f"{f.value:#x}"
        lines.append(f"   {mark}{bits:>6}  {f.name:<15} {value}".ljust(46) + f"  {meaning}")
    return lines


def describe_exit(exit: ExitInfo, policy_note: str = "", code_size: int | None = None) -> list[str]:
    """The exit information, field by field; `code_size` is the mode the exit came from (some
    fields are undefined for exits from 64-bit mode; without it they are marked undefined)."""
    io = SPECS[exit.instruction].layout is Layout.IO
    reason = f"I/O instruction: {exit.instruction.upper()}" if io else exit.instruction.upper()
    lines = [f"VM exit: reason {exit.exit_reason} ({reason}), instruction length {exit.length}",
             f"  exit qualification      {exit.exit_qualification:#018x}{'' if io else policy_note}"]
    if io:
        q = decode_qualification(exit.exit_qualification)
        size = "not used" if q["size"] is None else f"{q['size']}-byte"
        lines.append(f"    (I/O: {size} {q['direction'].upper()}, {'string' if q['string'] else 'not string'}, "
                     f"{'REP' if q['rep'] else 'no REP'}, port from {q['operand'].upper()}: {q['port']:#06x})")
        if exit.guest_linear_address is not None:
            lines.append(f"  guest-linear address    {exit.guest_linear_address:#018x}   (the first element; "
                         "reported when IA32_VMX_BASIC[54] = 1)")
    lines.append(f"  instruction information {exit.instruction_info:#010x}:")
    lines += _field_lines(fields(exit.instruction_info, exit.instruction, code_size))
    if exit.extended_info is not None:
        lines.append(f"  extended instruction information (APX, VMCS 0x2406) {exit.extended_info:#018x}:")
        lines += _field_lines(fields_extended(exit.extended_info, exit.instruction, code_size))
        lines.append("    (the 32-bit field holds only the low 4 bits of a register number; R16-R31 are named here)")
    lines.append("    (~ marks bits the SDM leaves undefined for this operand; a hypervisor must ignore them)")
    return lines


def describe_result(result: Result, model_name: str) -> list[str]:
    """Lines of a model's computation, one per step with its rule id, then the outcome and the rules cited."""
    lines = [f"Computation ({model_name}):"]
    used: list[str] = []
    for n, s in enumerate(result.steps, 1):
        lines.append(f"  {n}. [{s.rule}] {s.text}")
        if s.rule not in used:
            used.append(s.rule)
    o = result.outcome
    if o.rule and o.rule not in used and o.rule in RULES:
        used.append(o.rule)
    # An "ok" reason that repeats the last step's rule adds nothing (e.g. the register operand).
    if o.reason and not (o.kind == "ok" and result.steps and result.steps[-1].rule == o.rule):
        lines.append(f"  {len(result.steps) + 1}. [{o.rule}] {o.reason}")
    ea = "-" if result.effective_address is None else f"{result.effective_address:#x}"
    la = "-" if result.linear_address is None else f"{result.linear_address:#x}"
    verdict = {"ok": "no fault"}.get(o.kind, o.short())
    lines.append(f"Result: effective address {ea}, linear address {la}, {verdict}")
    if used:
        lines.append("Rules applied:")
        for r in used:
            if r in RULES:
                lines.append(f"  [{r}] {RULES[r].title} — {RULES[r].source}")
    return lines


def explain_text(case: Case, exit: ExitInfo, result: Result, model_name: str = "sdm") -> str:
    """The full `vmxaddr explain` text: the instruction, the exit information, and the model's computation."""
    p = case.policy
    op = case.instruction.operand
    # The policy decides only the bits above a 16- or 32-bit address size.
    note = f"   (policy {p.exit_qual})" if op is not None and op.address_size < 64 else ""
    if exit.guest_linear_address is None and case.instruction.spec.layout is Layout.IO:
        exit = exit._replace(guest_linear_address=guest_linear_address(case.instruction, case.state))
    out = (describe_instruction(case) + [""] + describe_exit(exit, note, case.instruction.code_size) + [""]
           + describe_result(result, model_name))
    return "\n".join(out)
