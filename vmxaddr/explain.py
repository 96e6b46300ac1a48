"""Text for people: an instruction, its exit information as labelled bit fields, and every step
of a model's computation with the rule it applies."""

from __future__ import annotations

from vmxaddr.case import Case
from vmxaddr.exitinfo import ExitInfo, fields
from vmxaddr.models.base import Result
from vmxaddr.rules import RULES


def describe_instruction(case: Case) -> list[str]:
    ins = case.instruction
    lines = [f"{ins.text()}    ({ins.code_size}-bit code, {ins.length} bytes: {ins.raw.hex(' ')})"]
    op = ins.operand
    if op is not None:
        prefix = ""
        if op.segment_prefix and op.segment_prefix != op.segment:
            prefix = f"; the {op.segment_prefix.upper()} prefix has no effect in 64-bit mode"
        lines.append(f"  memory operand: {op.access_size}-byte {op.access}, {op.address_size}-bit address size, "
                     f"segment {op.segment}{prefix}" + (", RIP-relative" if op.rip_relative else ""))
    else:
        lines.append("  register operand: no memory access")
    return lines


def describe_exit(exit: ExitInfo, policy_note: str = "") -> list[str]:
    lines = [f"VM exit: reason {exit.exit_reason} ({exit.instruction.upper()}), instruction length {exit.length}",
             f"  exit qualification      {exit.exit_qualification:#018x}{policy_note}",
             f"  instruction information {exit.instruction_info:#010x}:"]
    for f in fields(exit.instruction_info, exit.instruction):
        bits = f"{f.hi}:{f.lo}" if f.hi != f.lo else f"{f.hi}"
        mark = " " if f.defined else "~"
        meaning = f.meaning if f.defined else ("undefined" if f.name == "undefined" else f"({f.meaning}: undefined here)")
        width = f.hi - f.lo + 1
        lines.append(f"   {mark}{bits:>6}  {f.name:<15} {f.value:0{width}b}".ljust(46) + f"  {meaning}")
    lines.append("    (~ marks bits the SDM leaves undefined for this operand; a hypervisor must ignore them)")
    return lines


def describe_result(result: Result, model_name: str) -> list[str]:
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
    p = case.policy
    op = case.instruction.operand
    # The policy decides only the bits above a 16- or 32-bit address size.
    note = f"   (policy {p.exit_qual})" if op is not None and op.address_size < 64 else ""
    out = describe_instruction(case) + [""] + describe_exit(exit, note) + [""] + describe_result(result, model_name)
    return "\n".join(out)
