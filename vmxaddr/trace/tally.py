"""The running counts of a check and the summary made from them. A `Tally` of one part of a
trace merges into the tally of the parts before it (`merge`, in trace order), giving the counts
one pass over the whole trace gives: this is how --jobs and --dask combine their chunks."""

from __future__ import annotations

from collections import Counter
from typing import Any

from vmxaddr.trace.format import FingerprintCheck, HardwareCheck, HypervisorCheck


def _category(what: str) -> str:
    """Group reasons for the summary (bounded: details in parentheses and ids are dropped)."""
    base = what.split(" (")[0]
    if base.startswith("state_ref "):
        return "unknown state_ref"
    return base


class Tally:
    """The running counts of checking a trace or a piece of one; pieces merge in trace order."""
    def __init__(self) -> None:
        self.lines = 0
        self.exits = 0
        self.state_records = 0
        self.malformed = 0
        self.truncated: int | None = None
        self.wrong = 0
        self.evicted = 0
        self.counts: dict[str, Counter[str]] = {"hardware": Counter(), "hypervisor": Counter(),
                                                 "fingerprint": Counter()}
        self.missing: dict[str, Counter[str]] = {"hardware": Counter(), "hypervisor": Counter()}
        self.hardware_fields: Counter[str] = Counter()
        self.model_matches: Counter[str] = Counter()  # over the records fingerprinted
        self.fingerprinted = 0
        self.wrong_matches: Counter[str] = Counter()  # over the wrong-hypervisor records
        self.wrong_fingerprinted = 0
        self.reference_errors = 0
        self.input_error: str | None = None  # why reading stopped early
        self.reference_error: str | None = None

    def add(self, hw: HardwareCheck, hv: HypervisorCheck, fp: FingerprintCheck, wrong: bool, n: int = 1) -> None:
        """Count `n` exit records with these verdicts."""
        self.exits += n
        self.wrong += wrong * n
        self.counts["hardware"][hw["verdict"]] += n
        self.counts["hypervisor"][hv["verdict"]] += n
        self.counts["fingerprint"][fp["verdict"]] += n
        for key, d in (("hardware", hw), ("hypervisor", hv)):
            for what in d.get("missing", ()):
                self.missing[key][_category(what)] += n
        for d in hw.get("differences", ()):
            self.hardware_fields[d["field"]] += n

    def add_fingerprint(self, names: list[str], wrong_hv: bool, n: int = 1) -> None:
        """Count one fingerprinted record (`n` records) and the models it names."""
        self.fingerprinted += n
        for name in names:
            self.model_matches[name] += n
        if wrong_hv:
            self.wrong_fingerprinted += n
            for name in names:
                self.wrong_matches[name] += n

    def note_reference_error(self, hv: HypervisorCheck, n: int = 1, line: int = 0) -> None:
        """The reference model raised (crashed, hung: vmxaddr.realcode.worker) on `n` records
        (the first reason is kept, with the line of its record)."""
        self.reference_errors += n
        if self.reference_error is None:
            self.reference_error = (f"line {line}: " if line else "") + hv["missing"][0]

    def merge(self, later: Tally, lines: str = "last") -> None:
        """Add the counts of the part of the trace that follows this one: the next piece of the
        same file (`lines` "last": the later piece's lines are numbered on from this one's) or the
        next file ("add")."""
        self.lines = self.lines + later.lines if lines == "add" else (later.lines or self.lines)
        for name in ("exits", "state_records", "malformed", "wrong", "evicted", "fingerprinted", "wrong_fingerprinted",
                     "reference_errors"):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        if self.reference_error is None:
            self.reference_error = later.reference_error
        if later.input_error is not None:
            self.input_error = later.input_error
        if later.truncated is not None:
            self.truncated = later.truncated
        for key in self.counts:
            self.counts[key].update(later.counts[key])
        for key in self.missing:
            self.missing[key].update(later.missing[key])
        self.hardware_fields.update(later.hardware_fields)
        self.model_matches.update(later.model_matches)
        self.wrong_matches.update(later.wrong_matches)

    def summary(self, reference: str, fingerprint_mode: str, models_compared: int) -> dict[str, Any]:
        """The summary object check-trace prints at the end."""
        every = sorted(n for n, c in self.model_matches.items() if c == self.fingerprinted) if self.fingerprinted else []
        every_wrong = (sorted(n for n, c in self.wrong_matches.items() if c == self.wrong_fingerprinted)
                       if self.wrong_fingerprinted else [])
        return {
            "type": "summary",
            "against": reference,
            "lines": self.lines,
            "exit_records": self.exits,
            "state_records": self.state_records,
            "wrong_records": self.wrong,
            "malformed_lines": self.malformed,
            "truncated_final_line": self.truncated,
            "states_evicted": self.evicted,
            "hardware": dict(self.counts["hardware"]),
            "hardware_fields_differing": dict(self.hardware_fields),
            "hypervisor": dict(self.counts["hypervisor"]),
            "not_checkable_because": {k: dict(c) for k, c in self.missing.items()},
            "fingerprint": {
                "mode": fingerprint_mode,
                "records": self.fingerprinted,
                "matches": dict(self.model_matches.most_common()),
                "consistent_with_every_record": every,
                "wrong_records": self.wrong_fingerprinted,
                "matches_on_wrong_records": dict(self.wrong_matches.most_common()),
                "consistent_with_every_wrong_record": every_wrong,
            },
            "models_compared": models_compared,
            "reference_errors": self.reference_errors,
            "reference_error_first": self.reference_error,
            "input_error": self.input_error,
            "exit_status": 1 if self.wrong or self.malformed or self.reference_errors or self.input_error else 0,
        }
