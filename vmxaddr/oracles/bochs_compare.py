"""What Bochs reported against what vmxaddr's encoder says (vmxaddr.exitinfo): per case, the exit
reason, the instruction information on the bits the SDM defines, the exit qualification within
the address size and the length; Bochs's documented departures (docs/known-oracle-issues.md)
counted apart. `crosscheck_bochs` and `bochs_summary` run and compare n random cases."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmxaddr.decode import decode
from vmxaddr.exitinfo import F_DT_OPSIZE, F_RDRAND_OPSIZE, Policy, encode, encode_info
from vmxaddr.isa import EXIT_REASONS, Layout
from vmxaddr.oracles import CaseReport, Disagreement, Summary
from vmxaddr.oracles.bochs_cases import random_cases
from vmxaddr.oracles.bochs_guest import Case, Record
from vmxaddr.oracles.bochs_run import boot

ProgressFn = Callable[[int, int], None]

# ---------------------------------------------------------------- comparison

@dataclass
class Comparison:
    """One case compared: whether Bochs agreed, the differences (documented ones apart), what it
    wrote into undefined bits."""
    index: int
    mnemonic: str
    code_size: int
    code: bytes
    ok: bool
    differences: list[str]
    explained: list[str]  # differences that are documented Bochs deviations
    undefined_info: int  # what Bochs wrote into the SDM's undefined info bits
    qual_upper: int | None  # exit-qualification bits above the address size (16/32-bit)
    cpl: int = 0
    items: list[Any] = field(default_factory=list)  # the same differences as vmxaddr.oracles.Disagreement


def _known_deviation(instr: Any, field_name: str, got: int, want: int) -> str | None:
    """A difference that docs/known-oracle-issues.md documents as Bochs's, or None."""

    layout = instr.spec.layout
    diff = got ^ want
    if field_name == "instruction_info":
        if layout is Layout.DT and diff == F_DT_OPSIZE and not got & F_DT_OPSIZE:
            return "bochs-dt-opsize"  # LGDT group: bit 11 never set
        code = {16: 0, 32: 1, 64: 2}
        # Excused only when our side is what the SDM says: else a bug of ours would hide behind Bochs's
        if layout is Layout.RDRAND and diff & ~F_RDRAND_OPSIZE == 0 \
                and (want & F_RDRAND_OPSIZE) >> 11 == code[sdm_rdrand_opsize(instr)] \
                and (got & F_RDRAND_OPSIZE) >> 11 == code[bochs_rdrand_opsize(instr)]:
            return "bochs-rdrand-opsize"
    return None


def sdm_rdrand_opsize(instr: Any) -> int:
    """The operand size of RDRAND/RDSEED by the SDM, from the prefixes alone (RDRAND/RDSEED pages,
    "Operand size": 16, 32 or 64 by 66h and REX.W; Vol. 1 §3.6 and §3.6.1: REX.W gives 64 and
    wins over 66h; else 66h toggles the default, 16 in 16-bit code, 32 in 32- and 64-bit code)."""
    if instr.code_size == 64 and instr.rex & 8:
        return 64
    default = 16 if instr.code_size == 16 else 32
    if 0x66 in instr.prefixes:
        return 32 if default == 16 else 16
    return default


def bochs_rdrand_opsize(instr: Any) -> int:
    """The operand size Bochs 2.7 reports for RDRAND/RDSEED (observed): REX.W -> 64,
    else 32 in 64-bit mode; outside 64-bit mode the *address* size (67h flips it),
    66h ignored.  The SDM (RDRAND page): 66h/REX.W operand size."""
    if instr.code_size == 64:
        return 64 if instr.rex & 8 else 32
    flipped = 0x67 in instr.prefixes
    return 32 if (instr.code_size == 32) != flipped else 16


def compare(cases: Sequence[Case], records: Sequence[Record | None]) -> list[Comparison]:
    """Compare every Bochs record with the core's encoder (vmxaddr.exitinfo).

    Checked: basic exit reason (EXIT_REASONS), instruction information on the bits
    the SDM defines for the layout and operand (defined_mask), exit qualification
    on the bits within the operand's address size (the rest are undefined, SDM
    28.2.1; not compared for RDRAND/RDSEED, whose qualification the SDM does not
    define), and instruction length."""
    policy = Policy(exit_qual="zero-extend", undefined_bits="zero", ignored_segment="default",
                    si_di="base")
    out: list[Comparison] = []
    for i, (case, rec) in enumerate(zip(cases, records, strict=True)):
        instr = decode(case.code, case.code_size)
        diffs: list[str] = []
        explained: list[str] = []
        items: list[Disagreement] = []
        undefined_info = 0
        qual_upper: int | None = None
        if rec is None:
            diffs.append("no VM exit recorded")
            items.append(Disagreement("exit", "a VM exit", "none recorded"))
        elif case.cpl > 0 and instr.spec.privileged:
            # SDM 26.1.1: faults based on privilege level have priority over VM exits;
            # CPL > 0 -> #GP(0): an exception exit (reason 0) for vector 13, hardware
            # exception (type 3), error code valid.
            if rec.basic_reason != 0 or rec.interruption_info != 0x80000B0D:
                msg = (f"exit reason {rec.basic_reason} (interruption info "
                       f"{rec.interruption_info:#x}), expected #GP(0) at CPL {case.cpl}")
                known = None
                if instr.mnemonic == "invpcid" and rec.basic_reason == EXIT_REASONS["invpcid"]:
                    known = "bochs-invpcid-exits-before-cpl-check"
                (explained if known else diffs).append(msg + (f" [{known}]" if known else ""))
                items.append(Disagreement("exit_reason", "#GP(0) before any VM exit", rec.basic_reason, known))
        else:
            want = encode(instr, rip=rec.guest_rip, policy=policy)
            _, mask = encode_info(instr, policy)
            if rec.basic_reason != EXIT_REASONS[instr.mnemonic]:
                extra = ""
                if rec.basic_reason == 0:
                    extra = f" (exception, interruption info {rec.interruption_info:#x})"
                diffs.append(f"exit reason {rec.basic_reason}{extra}, expected "
                             f"{EXIT_REASONS[instr.mnemonic]}")
                items.append(Disagreement("exit_reason", EXIT_REASONS[instr.mnemonic], rec.basic_reason))
            else:
                got_i, want_i = rec.instruction_info & mask, want.instruction_info & mask
                undefined_info = rec.instruction_info & ~mask & 0xFFFFFFFF
                if got_i != want_i:
                    msg = (f"instruction_info {rec.instruction_info:#010x}, expected "
                           f"{want.instruction_info:#010x} on mask {mask:#010x}")
                    known = _known_deviation(instr, "instruction_info", got_i, want_i)
                    (explained if known else diffs).append(msg + (f" [{known}]" if known else ""))
                    items.append(Disagreement("instruction_info", want_i, got_i, known))
                if instr.spec.layout is not Layout.RDRAND:
                    asz = instr.operand.address_size if instr.operand else 64
                    qmask = (1 << asz) - 1
                    if (rec.exit_qualification ^ want.exit_qualification) & qmask:
                        msg = (f"exit_qualification {rec.exit_qualification:#x}, expected "
                               f"{want.exit_qualification:#x} (low {asz} bits)")
                        known = None
                        if (instr.operand is None and case.code_size == 64
                                and rec.exit_qualification == rec.guest_rip + rec.length):
                            # register form: Bochs adds RIP when a stale decoder field says
                            # "RIP-relative" (docs/known-oracle-issues.md)
                            known = "bochs-regform-qual-next-rip"
                        (explained if known else diffs).append(msg + (f" [{known}]" if known else ""))
                        items.append(Disagreement("exit_qualification", want.exit_qualification & qmask,
                                                  rec.exit_qualification & qmask, known))
                    if asz < 64:
                        qual_upper = rec.exit_qualification >> asz
                if rec.length != instr.length:
                    diffs.append(f"length {rec.length}, expected {instr.length}")
                    items.append(Disagreement("length", instr.length, rec.length))
        out.append(Comparison(i, instr.mnemonic, case.code_size, case.code, not diffs, diffs,
                              explained, undefined_info, qual_upper, case.cpl, items))
    return out

def crosscheck_bochs(n: int = 1000, seed: int = 0, progress: ProgressFn | None = None,
                     batch: int = 10000) -> dict[str, Any]:
    """Run ``n`` random encodings through Bochs and compare with the core's encoder.
    Returns a JSON-able summary (counts, time, unexplained disagreements, what Bochs
    wrote into undefined bits)."""
    cases = random_cases(n, seed)
    comparisons: list[Comparison] = []
    seconds = 0.0
    boots = 0
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        run = boot(chunk)
        boots += 1
        seconds += run.seconds
        comparisons += compare(chunk, run.records)
        if progress:
            progress(min(start + batch, len(cases)), len(cases))
    bad = [c for c in comparisons if not c.ok]
    explained: dict[str, int] = {}
    for c in comparisons:
        for e in c.explained:
            key = e[e.rfind("[") + 1:-1]
            explained[key] = explained.get(key, 0) + 1
    undefined_info_bits = 0
    for c in comparisons:
        undefined_info_bits |= c.undefined_info
    upper_nonzero = sum(1 for c in comparisons if c.qual_upper)
    return {
        "oracle": "bochs",
        "seed": seed,
        "cases": len(cases),
        "agree": len(comparisons) - len(bad),
        "unexplained": len(bad),
        "explained": explained,
        "boots": boots,
        "seconds": round(seconds, 2),
        "undefined_info_bits_seen": f"{undefined_info_bits:#010x}",
        "qual_upper_bits_nonzero": upper_nonzero,
        "disagreements": [
            {"mode": c.code_size, "cpl": c.cpl, "bytes": c.code.hex(),
             "instruction": c.mnemonic, "differences": c.differences}
            for c in bad[:50]
        ],
    }


def _case_report(c: Comparison) -> Any:
    """A Comparison as the CaseReport every oracle's report is made of (None when Bochs agrees)."""

    if not c.items:
        return None
    command = f"vmxaddr decode --mode {c.code_size} {c.code.hex()}"
    note = f"{c.mnemonic}, {c.code_size}-bit code" + (f", CPL {c.cpl}" if c.cpl else "")
    return CaseReport(c.code, c.code_size, list(c.items), command, note)


def bochs_summary(n: int, seed: int = 0, progress: Any = None, batch: int = 10000) -> Any:
    """`crosscheck_bochs` as the report every oracle gives (vmxaddr.oracles.Summary): counts,
    disagreements by field, examples with a command; what only Bochs tells goes in `details`.
    ^C stops after the batch being run and returns the counts so far, marked interrupted."""


    summary = Summary("bochs")
    start_time = time.monotonic()
    cases = random_cases(n, seed)
    undefined_info_bits = upper_nonzero = boots = 0
    try:
        for start in range(0, len(cases), batch):
            chunk = cases[start:start + batch]
            run = boot(chunk)
            boots += 1
            for c in compare(chunk, run.records):
                undefined_info_bits |= c.undefined_info
                upper_nonzero += bool(c.qual_upper)
                summary.add(_case_report(c))
            if progress is not None:
                progress.update(summary.cases)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.seconds = time.monotonic() - start_time
    summary.details = {"boots": boots, "undefined_info_bits_seen": f"{undefined_info_bits:#010x}",
                       "qual_upper_bits_nonzero": upper_nonzero}
    return summary
