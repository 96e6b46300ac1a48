"""The hypervisor verdict and the fingerprint: the recorded answer against the reference model's,
and which registered consumer models give exactly the recorded answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmxaddr.case import run_model
from vmxaddr.decode import DecodeError
from vmxaddr.errors import ModelFailure
from vmxaddr.exitinfo import ExitInfo
from vmxaddr.isa import SPECS
from vmxaddr.models import REGISTRY, covers
from vmxaddr.models.base import FAULT, OK, Access, InvalidExitInfo, Model, Outcome, Result
from vmxaddr.state import CpuState
from vmxaddr.trace.format import MASK64, ExitRecord, HypervisorCheck, Recorded
from vmxaddr.trace.hardware import _decode


def access_for(instruction: str, code_size: int) -> Access:
    """The access a hypervisor emulates, from the exit reason and the code size (what it knows)."""
    spec = SPECS[instruction]
    if spec.access is None:
        return Access(0, False)
    return Access(spec.access_size(code_size), spec.access == "write")


def answer_matches(expected: Result, rec: Recorded) -> bool:
    """Is the recorded answer `expected`'s (for an implementation-specific `expected`: one of the
    answers it allows)? An error code left out of the record is not compared."""
    out = expected.outcome
    code = rec.error_code if rec.error_code is not None or rec.kind != FAULT else out.error_code
    if not out.accepts(Outcome(rec.kind, rec.vector, code)):
        return False
    if rec.kind == OK and rec.linear_address is not None:
        return expected.linear_address is not None and expected.linear_address & MASK64 == rec.linear_address
    return True


def _model_inputs(rec: ExitRecord) -> tuple[list[str], ExitInfo | None, Access | None]:
    missing = []
    if rec.instruction is None:
        missing.append("instruction (exit reason 46/47 needs instruction_info bits 29:28; 30 a string I/O "
                       "exit qualification)")
    if rec.instruction_info is None:
        missing.append("instruction_info")
    if rec.exit_qualification is None:
        missing.append("exit_qualification")
    if rec.state is None:
        missing.append(rec.state_problem or "no CPU state")
    if rec.result is None:
        missing.append("result")
    if missing:
        return missing, None, None
    assert rec.instruction is not None and rec.instruction_info is not None and rec.exit_qualification is not None
    assert rec.state is not None
    length = rec.length
    if length is None and rec.raw is not None and rec.code_size is not None:
        d = _decode(rec.raw, rec.code_size)
        length = 0 if isinstance(d, DecodeError) else d.length
    exit = ExitInfo(rec.instruction, rec.instruction_info, rec.exit_qualification, length or 0, rec.extended_info)
    return [], exit, access_for(rec.instruction, rec.state.code_size)


def _result_json(r: Result) -> dict[str, Any]:
    d: dict[str, Any] = {"outcome": r.outcome.short()}
    if r.linear_address is not None:
        d["linear_address"] = hex(r.linear_address & MASK64)
    if r.outcome.reason:
        d["reason"] = r.outcome.reason
    return d


@dataclass(frozen=True)
class NamedModel:
    """A consumer model with its registered name (what a fingerprint lists)."""
    name: str
    function: Model


def consumer_models(exclude: str | None) -> list[NamedModel]:
    """The registered consumer models a fingerprint compares, without `exclude`."""
    return [NamedModel(m.name, m.function) for m in REGISTRY.values() if m.kind == "consumer" and m.name != exclude]


ANSWERS = 8192  # (exit information, state, access) -> answers remembered


class Answers:
    """The reference model's answer, and the fingerprint, per (exit information, state, access):
    the models are pure functions of these (models.base), so an answer worked out once holds."""

    def __init__(self, reference: Model) -> None:
        self.reference = reference
        self.memo: dict[tuple[ExitInfo, CpuState, Access], Result] = {}
        self.prints: dict[tuple[ExitInfo, CpuState, Access, Recorded], list[str]] = {}

    def answer(self, exit: ExitInfo, state: CpuState, access: Access) -> Result:
        """The reference model's answer to this exit, state and access (memoised, bounded)."""
        key = (exit, state, access)
        r = self.memo.get(key)
        if r is None:
            r = run_model(self.reference, exit, state, access)  # an exception is not remembered
            if len(self.memo) >= ANSWERS:
                self.memo.clear()
            self.memo[key] = r
        return r

    def fingerprint(self, models: list[NamedModel], exit: ExitInfo, state: CpuState, access: Access,
                    recorded: Recorded) -> list[str]:
        """The models that give exactly the recorded answer (memoised, bounded)."""
        key = (exit, state, access, recorded)
        names = self.prints.get(key)
        if names is None:
            names = fingerprint(models, exit, state, access, recorded)
            if len(self.prints) >= ANSWERS:
                self.prints.clear()
            self.prints[key] = names
        return names


def check_hypervisor(rec: ExitRecord, reference: str, answers: Answers
                     ) -> tuple[HypervisorCheck, list[str], ExitInfo | None, Access | None, bool]:
    """The hypervisor verdict, what is missing for it, the model's inputs (exit, access), and
    whether the reference model failed (raised) on the record."""
    missing, exit, access = _model_inputs(rec)
    if missing:
        return {"verdict": "not-checkable", "missing": missing}, missing, None, None, False
    assert exit is not None and access is not None and rec.state is not None and rec.result is not None
    if not covers(answers.reference, exit.instruction):  # e.g. an old KVM model asked about INVPCID
        why = [f"a reference that covers {exit.instruction.upper()} ({reference} does not)"]
        return {"verdict": "not-checkable", "missing": why}, [], exit, access, False  # the fingerprint can still run
    hv: HypervisorCheck = {"against": reference, "recorded": rec.result.to_json()}  # type: ignore[typeddict-item]  # verdict below
    results: Result | None = None
    failed = False
    try:
        results = answers.answer(exit, rec.state, access)
    except InvalidExitInfo as e:
        hv = {"verdict": "not-checkable", "missing": [f"valid exit information ({e})"]}
    except ModelFailure as e:  # a compiled model that crashed, hung, exited (its worker goes on afresh)
        hv = {"verdict": "not-checkable", "missing": [f"an answer from {reference} (it {e.what})"]}
        failed = True
    except Exception as e:  # a user's reference model must not stop a multi-GB check
        hv = {"verdict": "not-checkable", "missing": [f"an answer from {reference} ({type(e).__name__}: {e})"]}
        failed = True
    if results is not None:
        ok = answer_matches(results, rec.result)
        hv["verdict"] = "correct" if ok else "wrong"
        if not ok:  # the reason with its numbers (the quiet run formats none)
            results = run_model(answers.reference, exit, rec.state, access, explain=True)
        hv["expected"] = _result_json(results)
    return hv, missing, exit, access, failed


def fingerprint(models: list[NamedModel], exit: ExitInfo, state: CpuState, access: Access, recorded: Recorded
                ) -> list[str]:
    """The names of the models whose answer is the recorded one (a model that raises, or that does
    not cover the instruction, does not match)."""
    names = []
    for m in models:
        if not covers(m.function, exit.instruction):
            continue
        try:
            r = run_model(m.function, exit, state, access)
        except Exception:  # noqa: BLE001 - a model that cannot answer does not match
            continue
        if answer_matches(r, recorded):
            names.append(m.name)
    return names
