"""Documented departures of a named processor from the SDM, for the hardware verdict.

A record whose `source.processor` names a processor listed here (`trace record --bochs` writes
"bochs-2.7") has each hardware difference matched against that processor's documented quirks;
a difference matching one gets `"known": "<name>"`, and a record whose differences are all known
gets the hardware verdict `explained` instead of `inconsistent`. Every pattern is exact, so that
nothing else hides behind it.

Bochs 2.7 (docs/known-oracle-issues.md §1, the same rules as vmxaddr.oracles.bochs.compare):
  bochs-dt-opsize              LGDT/LIDT/SGDT/SIDT: instruction-information bit 11 (operand size)
                               is 0 where the SDM (§28.2.5) says 1, and nothing else differs
  bochs-rdrand-opsize          RDRAND/RDSEED: bits 12:11 hold Bochs's operand size (the address
                               size outside 64-bit mode, 66h ignored) where our side is the SDM's
  bochs-regform-qual-next-rip  a register operand in 64-bit code: exit qualification = guest RIP
                               + instruction length instead of 0 (§28.2.1)
"""

from __future__ import annotations

from typing import Any

from vmxaddr.decode import Instruction
from vmxaddr.exitinfo import DEFAULT_POLICY, encode_info
from vmxaddr.trace.format import MASK64, ExitRecord

BOCHS_27 = "bochs-2.7"  # the source.processor of records made under Bochs 2.7 (trace record --bochs, --kvm)
PROCESSORS = (BOCHS_27,)


def _bochs_27(instr: Instruction, rec: ExitRecord, d: dict[str, Any]) -> str | None:
    from vmxaddr.oracles.bochs_compare import _known_deviation  # (only for a Bochs trace: check-trace starts without the oracle)

    if d["field"] == "instruction_info" and rec.instruction_info is not None:
        want, mask = encode_info(instr, DEFAULT_POLICY)
        return _known_deviation(instr, "instruction_info", rec.instruction_info & mask, want & mask)
    if (d["field"] == "exit_qualification" and instr.operand is None and instr.code_size == 64
            and rec.rip is not None and rec.length is not None
            and rec.exit_qualification == (rec.rip + rec.length) & MASK64):
        return "bochs-regform-qual-next-rip"
    return None


_QUIRKS = {"bochs-2.7": _bochs_27}


def explain_known(processor: str, instr: Instruction, rec: ExitRecord, diffs: list[dict[str, Any]]) -> bool:
    """Mark the differences that are `processor`'s documented quirks (`known`); True when all are."""
    quirk = _QUIRKS.get(processor)
    if quirk is None:
        return False
    every = True
    for d in diffs:
        name = quirk(instr, rec, d)
        if name is None:
            every = False
        else:
            d["known"] = name
    return every
