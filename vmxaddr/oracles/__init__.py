"""Independent oracles the decoder and the address computation are checked against.

`iced` compares `vmxaddr.decode` with iced-x86's decoder; `unicorn` executes an instruction with
the same memory-operand encoding in unicorn (QEMU's CPU emulation) and compares the effective and
linear address with the SDM model; `bochs` (another module, optional) runs Bochs. The oracle
packages are the optional extra `pip install -e '.[oracles]'`. See docs/oracles.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One field where vmxaddr and an oracle differ on one case.

    `explained` names the known, documented reason (docs/oracles.md, docs/known-decoder-issues.md)
    or is None: an unexplained disagreement is a bug of ours or a new oracle quirk to study."""

    field: str
    ours: Any
    theirs: Any
    explained: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The disagreement as JSON (values in hex where they are numbers)."""
        return {"field": self.field, "ours": _j(self.ours), "theirs": _j(self.theirs), "explained": self.explained}


def _j(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, bool, float)) else (hex(v) if isinstance(v, int) else str(v))


@dataclass(slots=True)
class CaseReport:
    """A case with at least one disagreement, with what it takes to reproduce it."""

    raw: bytes
    code_size: int
    disagreements: list[Disagreement]
    command: str  # a `vmxaddr explain`/`decode` command line reproducing the case
    note: str = ""

    @property
    def unexplained(self) -> bool:
        """True when some disagreement of the case has no documented reason."""
        return any(d.explained is None for d in self.disagreements)

    def to_json(self) -> dict[str, Any]:
        """The case as JSON: bytes, code size, the command that shows it, the disagreements."""
        return {"bytes": self.raw.hex(), "code_size": self.code_size, "command": self.command, "note": self.note,
                "disagreements": [d.to_json() for d in self.disagreements]}


@dataclass(slots=True)
class Summary:
    """What a cross-check run found. `by_field` counts disagreements per field, split into
    explained (by reason) and unexplained."""

    oracle: str
    cases: int = 0
    agreements: int = 0
    skipped: int = 0
    unexplained_cases: int = 0
    explained_cases: int = 0
    by_field: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[CaseReport] = field(default_factory=list)  # unexplained first, then explained
    seconds: float = 0.0
    max_examples: int = 5
    interrupted: bool = False  # stopped by ^C: the counts are those of the cases done so far
    details: dict[str, Any] = field(default_factory=dict)  # what only this oracle reports (Bochs: boots, …)

    def add(self, report: CaseReport | None, skipped: bool = False) -> None:
        """Count one case: skipped, agreeing, or with disagreements (by field, explained or not,
        kept as an example)."""
        self.cases += 1
        if skipped:
            self.skipped += 1
            return
        if report is None or not report.disagreements:
            self.agreements += 1
            return
        if report.unexplained:
            self.unexplained_cases += 1
        else:
            self.explained_cases += 1
        for d in report.disagreements:
            slot = self.by_field.setdefault(d.field, {})
            key = d.explained or "unexplained"
            slot[key] = slot.get(key, 0) + 1
        unexplained_examples = sum(1 for e in self.examples if e.unexplained)
        if report.unexplained and unexplained_examples < self.max_examples:
            # keep unexplained examples ahead of explained ones
            self.examples.insert(unexplained_examples, report)
            del self.examples[2 * self.max_examples:]
        elif not report.unexplained and len(self.examples) - unexplained_examples < self.max_examples:
            self.examples.append(report)

    def merge(self, other: Summary) -> None:
        """Add another summary's counts (parallel jobs); numeric details add up, others are kept
        once."""
        self.interrupted = self.interrupted or other.interrupted
        for k, v in other.details.items():  # counts add up (parallel jobs); anything else is kept once
            mine = self.details.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and isinstance(mine, int):
                self.details[k] = mine + v
            elif mine is None:
                self.details[k] = v
        self.cases += other.cases
        self.agreements += other.agreements
        self.skipped += other.skipped
        self.unexplained_cases += other.unexplained_cases
        self.explained_cases += other.explained_cases
        for f, counts in other.by_field.items():
            slot = self.by_field.setdefault(f, {})
            for k, v in counts.items():
                slot[k] = slot.get(k, 0) + v
        for e in other.examples:
            n_un = sum(1 for x in self.examples if x.unexplained)
            if e.unexplained and n_un < self.max_examples:
                self.examples.insert(n_un, e)
            elif not e.unexplained and len(self.examples) - n_un < self.max_examples:
                self.examples.append(e)

    @property
    def unexplained(self) -> int:
        """The number of cases with an unexplained disagreement (what sets exit status 1)."""
        return self.unexplained_cases

    def to_json(self) -> dict[str, Any]:
        """The summary as `vmxaddr crosscheck --json` prints it."""
        return {"oracle": self.oracle, "cases": self.cases, "agreements": self.agreements, "skipped": self.skipped,
                "explained_cases": self.explained_cases, "unexplained_cases": self.unexplained_cases,
                "disagreements_by_field": self.by_field, "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted, "details": self.details,
                "examples": [e.to_json() for e in self.examples]}
