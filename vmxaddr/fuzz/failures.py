"""A model that fails on a case is a finding, not the end of the run.

When a model raises (any exception, RecursionError, MemoryError and SystemExit included) or
answers something that is not a valid Result (vmxaddr.models.guard.result_problem), the case gets
a class of its own — "model under test raised RecursionError", "reference model returned
NoneType, not a Result" — which is counted, and whose first witness is shrunk, like any
divergence. Only ^C (KeyboardInterrupt) and the shrinker's own time limit (OutOfTime) pass through.

A user's model comes from vmxaddr.models.get behind the guard (vmxaddr.models.guard), which turns
every misbehaviour into a ModelError; the registry's models are trusted and unguarded. Either
way the hot path pays nothing until something raises: only then does `diagnose` run each side on
its own (the guarded function unwrapped) and name the class without the values involved, so
that one bug is one class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmxaddr.case import Case
from vmxaddr.diff import case_divergence
from vmxaddr.encoders import get_encoder
from vmxaddr.errors import ModelFailure
from vmxaddr.fuzz.choosers import OutOfTime
from vmxaddr.isa import SEGMENTS
from vmxaddr.models import get
from vmxaddr.models.base import Model, Outcome, Result
from vmxaddr.models.guard import KINDS, VECTORS, GuardedModel, result_problem
from vmxaddr.state import MASK64

MODEL = "model under test"
REFERENCE = "reference model"
PASS_THROUGH = (KeyboardInterrupt, OutOfTime)
_INT_FIELDS = ("effective_address", "linear_address", "displacement", "segment_base")


class BadAnswer(Exception):
    """A model returned something that is not a valid Result; the message says what (no values)."""


def answer_problem(r: Any) -> str | None:
    """What is wrong with a model's answer, without the values (None when result_problem accepts it)."""
    if not isinstance(r, Result):
        return f"returned {type(r).__name__}, not a Result"
    if not isinstance(r.outcome, Outcome):
        return f"returned a Result whose outcome is {type(r.outcome).__name__}, not an Outcome"
    for f in _INT_FIELDS:
        v = getattr(r, f)
        if v is not None and type(v) is not int:
            return f"returned a Result whose {f} is {type(v).__name__}, not an int"
        if v is not None and not 0 <= v <= MASK64:
            return f"returned a Result whose {f} is outside 0…2^64-1"
    if r.segment is not None and not isinstance(r.segment, str):
        return f"returned a Result whose segment is {type(r.segment).__name__}, not a str"
    if r.segment is not None and r.segment not in SEGMENTS:
        return "returned a Result whose segment is not a segment name"
    if r.outcome.kind not in KINDS:
        return "returned an outcome of an unknown kind"
    if r.outcome.kind != "ok" and r.outcome.vector not in VECTORS:
        return "returned a fault with an unknown vector"
    if result_problem(r) is not None:
        return "returned an invalid Result"
    return None


def resolve(name: str) -> Model:
    """The model called `name` (vmxaddr.models.get: a user's model comes guarded)."""
    return get(name)


def failure_class(side: str, exc: BaseException) -> str:
    """The divergence class for a model that failed instead of answering (crashed, timed out, raised, returned a bad value)."""
    if isinstance(exc, ModelFailure):  # a compiled model's worker: "model crashed: SIGSEGV", "model timed out"
        return f"{'model' if side == MODEL else side} {exc.finding}"
    if isinstance(exc, BadAnswer):
        return f"{side} {exc}"
    return f"{side} raised {type(exc).__name__}"


def _run(m: Model, exit: Any, case: Case) -> BaseException | None:
    fn = m.function if isinstance(m, GuardedModel) else m  # the user's own function: its own exception
    try:
        r = fn(exit, case.state, case.access)
    except PASS_THROUGH:
        raise
    except BaseException as e:  # noqa: BLE001 - that is the point
        return e
    bad = answer_problem(r)
    return BadAnswer(bad) if bad is not None else None


def diagnose(case: Case, a: Model, b: Model, encoder: str = "sdm") -> str:
    """The class of a case on which comparing `a` with `b` raised: which side failed, and how."""
    sdm_exit = case.exit
    enc_exit = sdm_exit if encoder == "sdm" else get_encoder(encoder)(case.instruction, case.state.rip, case.policy)
    for side, m, exit in ((REFERENCE, b, sdm_exit), (MODEL, a, enc_exit)):
        err = _run(m, exit, case)
        if err is not None:
            return failure_class(side, err)
        if encoder != "sdm" and m is a:  # the consumer also runs on the SDM's information (vmxaddr.encoder_consumer)
            err = _run(m, sdm_exit, case)
            if err is not None:
                return failure_class(side, err)
    try:  # both answered well: the comparison itself failed (a vmxaddr bug, still not a lost run)
        case_divergence(case, a, b, encoder)
    except PASS_THROUGH:
        raise
    except BaseException as e:  # noqa: BLE001
        return f"classification raised {type(e).__name__}"
    return "classification failed once"  # a model that fails only sometimes on the same input


def guarded_class(case: Case, a: Model, b: Model, encoder: str = "sdm") -> str | None:
    """case_divergence, with a failing model turned into its class."""
    try:
        return case_divergence(case, a, b, encoder)
    except PASS_THROUGH:
        raise
    except BaseException:  # noqa: BLE001
        return diagnose(case, a, b, encoder)


def guarded_answer(m: Model, exit: Any, case: Case, answer: Callable[[Result], dict[str, Any]]) -> dict[str, Any]:
    """A model's answer for a witness: answer(result), or what the model did instead."""
    fn = m.function if isinstance(m, GuardedModel) else m
    try:
        r = fn(exit, case.state, case.access)
    except PASS_THROUGH:
        raise
    except BaseException as e:  # noqa: BLE001
        return {"raised": f"{type(e).__name__}: {str(e)[:200]}"}
    bad = answer_problem(r)
    return {"invalid": bad} if bad is not None else answer(r)
