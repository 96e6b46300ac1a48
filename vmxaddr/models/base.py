"""What every model is: a pure function of what a hypervisor sees on the VM exit.

    model(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result

`exit` is the exit information (instruction, instruction_info, exit_qualification, length),
`state` the guest state, `access` the size and direction of the memory access the hypervisor is
about to emulate. With `explain=True` a model also records its steps; without, it must not
spend time on them (the differential engine runs millions of cases). A user's own model needs
only the three positional parameters and may ignore `explain`.

A Result carries, besides the outcome, the intermediate values the differential engine compares
to say *where* two models part: displacement, effective address, segment base, linear address.
A model that does not compute one of them leaves it None.

Access, Outcome, Step and Result (like ExitInfo, Instruction and MemoryOperand) are NamedTuples,
not frozen dataclasses: just as immutable, but three times cheaper to build, and the differential
pipeline builds millions of them (benchmarks/bench_diff.py).
Use `._replace(...)` where a dataclass would use `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from vmxaddr.exitinfo import ExitInfo
from vmxaddr.state import CpuState

OK = "ok"
FAULT = "fault"
IMPL = "implementation-specific"


class Access(NamedTuple):
    """The memory access an instruction makes: its size in bytes, and whether it writes."""
    size: int  # bytes
    write: bool

    @property
    def kind(self) -> str:
        """"read" or "write"."""
        return "write" if self.write else "read"


class Outcome(NamedTuple):
    """How a computation ends: ok, a fault (vector, error code) or implementation-specific, with the
    rule that decided."""
    kind: str  # "ok", "fault" or "implementation-specific"
    vector: str | None = None  # "UD", "GP", "SS"; for implementation-specific: the fault it may raise
    error_code: int | None = None
    rule: str | None = None  # id of the rule that decided (vmxaddr.rules)
    reason: str = ""

    def same_as(self, other: Outcome) -> bool:
        """Same kind, vector and error code (the rule and the reason may differ)."""
        return self.kind == other.kind and self.vector == other.vector and self.error_code == other.error_code

    def accepts(self, other: Outcome) -> bool:
        """Would `other` be a right answer where this (reference) outcome is the truth?"""
        if self.kind == IMPL:
            return other.kind == OK or (other.kind == FAULT and other.vector == self.vector
                                        and other.error_code == self.error_code) or self.same_as(other)
        return self.same_as(other)

    def short(self) -> str:
        """The outcome in a few characters: "ok", "#GP(0)", "implementation-specific (ok or
        #SS(0))"."""
        if self.kind == OK:
            return "ok"
        code = "" if self.error_code is None else f"({self.error_code})"
        if self.kind == FAULT:
            return f"#{self.vector}{code}"
        return f"implementation-specific (ok or #{self.vector}{code})"

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON, with its rule and reason."""
        return {"kind": self.kind, "vector": self.vector, "error_code": self.error_code,
                "rule": self.rule, "reason": self.reason}


_QUIET: dict[tuple[str, str | None, int | None, str], Outcome] = {}


def outcome(explain: bool, kind: str, vector: str | None, code: int | None, rule: str,
            reason: Callable[[], str]) -> Outcome:
    """The outcome, its reason formatted by `reason()` only when explaining. Without `explain`,
    a shared outcome whose reason names the rule alone: the differential engine's hot path should
    not format numbers nobody reads (explain=True gives them)."""
    if explain:
        return Outcome(kind, vector, code, rule, reason())
    key = (kind, vector, code, rule)
    o = _QUIET.get(key)
    if o is None:
        o = _QUIET[key] = Outcome(kind, vector, code, rule, "" if kind == OK else f"{rule} check")
    return o


class Step(NamedTuple):
    """One step of a computation, for `explain`: what was computed, the rule applied, the numbers,
    the value."""
    name: str  # what was computed: "displacement", "effective-address", "limit", …
    rule: str  # rule id (vmxaddr.rules)
    text: str  # the computation with its numbers, for a person
    value: int | str | None = None

    def to_json(self) -> dict[str, Any]:
        """The step as JSON."""
        return {"name": self.name, "rule": self.rule, "text": self.text, "value": self.value}


class Result(NamedTuple):
    """What a model answers: the outcome, and the addresses, segment and displacement it computed on
    the way."""
    outcome: Outcome
    effective_address: int | None = None
    linear_address: int | None = None
    segment: str | None = None
    displacement: int | None = None  # as used, modulo 2^64
    segment_base: int | None = None  # as added (0 where a model adds none)
    steps: tuple[Step, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (the steps only when the model recorded them)."""
        return {
            "effective_address": self.effective_address,
            "linear_address": self.linear_address,
            "segment": self.segment,
            "displacement": self.displacement,
            "segment_base": self.segment_base,
            "outcome": self.outcome.to_json(),
            "steps": [s.to_json() for s in self.steps],
        }


class Model(Protocol):
    """What a model is: a pure function of the exit information, the CPU state and the access, as a
    hypervisor sees them."""
    def __call__(self, exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result: ...


class InvalidExitInfo(ValueError):
    """Exit information no processor produces (an address-size or segment value the SDM marks
    "not used"); a model cannot compute an address from it."""
