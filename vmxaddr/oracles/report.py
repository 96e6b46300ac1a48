"""The text report every crosscheck oracle prints (`vmxaddr crosscheck`, `python -m
vmxaddr.oracles.llvm`): kept below both so that an oracle need not import the command."""

from __future__ import annotations

from vmxaddr.oracles import Summary

SKIPPED = {"unicorn": "(the model stops before an address: #UD for the mode, #GP for CPL)",
           "llvm": "(out of LLVM 19's scope: RDMSR/WRMSRNS with an immediate, which it does not decode)"}



def report_text(s: Summary, seed: int, jobs: int) -> str:
    """The text report of a crosscheck run: counts, disagreements by field, examples with their
    commands."""
    rate = s.cases / s.seconds if s.seconds else 0.0
    lines = [f"crosscheck against {s.oracle}: {s.cases} cases in {s.seconds:.1f} s ({rate:,.0f}/s), "
             f"seed {seed}, {jobs} job(s)" + ("  INTERRUPTED: the counts of the cases done so far" if s.interrupted else ""),
             f"  agreements     {s.agreements:>10}",
             f"  skipped        {s.skipped:>10}   {SKIPPED.get(s.oracle, SKIPPED['unicorn'])}"
             if s.skipped else None,
             f"  explained      {s.explained_cases:>10}   cases whose every difference has a documented reason",
             f"  unexplained    {s.unexplained_cases:>10}   cases" + ("" if not s.unexplained_cases else "  <- bugs to look at")]
    out = [x for x in lines if x is not None]
    if s.details:
        out.append(f"  {s.oracle} details: " + ", ".join(f"{k} {v}" for k, v in s.details.items()))
    if s.by_field:
        out.append("disagreements by field:")
        for f, counts in sorted(s.by_field.items()):
            for why, c in sorted(counts.items(), key=lambda kv: (kv[0] != "unexplained", kv[0])):
                out.append(f"  {f:<18} {c:>9}  {why}")
    if s.examples:
        out.append("first disagreements (reproduce with the command):")
        for e in s.examples:
            tag = "UNEXPLAINED" if e.unexplained else "explained"
            diffs = "; ".join(f"{d.field}: ours {d.to_json()['ours']}, {s.oracle} {d.to_json()['theirs']}"
                              for d in e.disagreements)
            out.append(f"  [{tag}] {diffs}   ({e.note})")
            out.append(f"      {e.command}")
    return "\n".join(out)
