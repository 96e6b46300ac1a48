"""A model that fails on a case is a finding, not the end of the run.

When a model raises (any exception, RecursionError, MemoryError and SystemExit included) or
answers something that is not a Result with fields of the documented types (vmxaddr.models.base),
the case gets a class of its own — "model under test raised RecursionError", "reference model
returned NoneType, not a Result" — which is counted, and whose first witness is shrunk, like any
divergence. Only ^C (KeyboardInterrupt) and the shrinker's own time limit (OutOfTime) pass through.

The hot path stays unguarded in cost: a `try` is free in CPython 3.11 until something raises;
only then does `diagnose` run each side on its own to say which failed and how. A user's model
(`module.path:function`) is also wrapped by `checked`, which checks every answer's type, since a
wrong type does not always raise further on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmxaddr.case import Case
from vmxaddr.diff import case_divergence
from vmxaddr.encoders import get_encoder
from vmxaddr.fuzz.choosers import OutOfTime
from vmxaddr.models import REGISTRY, get
from vmxaddr.models.base import Model, Outcome, Result

MODEL = "model under test"
REFERENCE = "reference model"


PASS_THROUGH = (KeyboardInterrupt, OutOfTime)

_INT_FIELDS = ("effective_address", "linear_address", "displacement", "segment_base")


class BadAnswer(Exception):
    """A model returned something that is not a well-typed Result; the message says what."""


def answer_problem(r: Any) -> str | None:
    """What is wrong with a model's answer (None when it is a Result of the documented types)."""
    if not isinstance(r, Result):
        return f"returned {type(r).__name__}, not a Result"
    if not isinstance(r.outcome, Outcome):
        return f"returned a Result whose outcome is {type(r.outcome).__name__}, not an Outcome"
    for f in _INT_FIELDS:
        v = getattr(r, f)
        if v is not None and (type(v) is not int):
            return f"returned a Result whose {f} is {type(v).__name__}, not an int"
    if r.segment is not None and not isinstance(r.segment, str):
        return f"returned a Result whose segment is {type(r.segment).__name__}, not a str"
    return None


def checked(model: Model) -> Model:
    """`model`, raising BadAnswer when an answer is not a well-typed Result."""

    def run(exit: Any, state: Any, access: Any, explain: bool = False) -> Result:
        r = model(exit, state, access, explain=True) if explain else model(exit, state, access)
        bad = answer_problem(r)
        if bad is not None:
            raise BadAnswer(bad)
        return r

    for attr in ("mnemonics", "limit_check"):  # what the fuzzer and the classifier read off a model
        if hasattr(model, attr):
            setattr(run, attr, getattr(model, attr))
    return run  # type: ignore[return-value]


def resolve(name: str) -> Model:
    """get(name), with a user's model wrapped by `checked` (the registered ones are trusted)."""
    m = get(name)
    return m if name in REGISTRY else checked(m)


def failure_class(side: str, exc: BaseException) -> str:
    if isinstance(exc, BadAnswer):
        return f"{side} {exc}"
    return f"{side} raised {type(exc).__name__}"


def _run(m: Model, exit: Any, case: Case) -> BaseException | None:
    try:
        r = m(exit, case.state, case.access)
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
        if encoder != "sdm" and m is a:  # the consumer also runs on the SDM's information (vmxaddr.pipeline)
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
    try:
        r = m(exit, case.state, case.access)
    except PASS_THROUGH:
        raise
    except BadAnswer as e:
        return {"invalid": str(e)}
    except BaseException as e:  # noqa: BLE001
        return {"raised": f"{type(e).__name__}: {str(e)[:200]}"}
    bad = answer_problem(r)
    return {"invalid": bad} if bad is not None else answer(r)
