"""A user's own model (`--model package.module:function`), guarded: whatever it does — raise
(RecursionError, MemoryError and SystemExit included), take the wrong arguments, return None, a
string, a dict or a Result with fields of the wrong type — becomes one ModelError naming the
model, what it did and the case, instead of a traceback or a silent exit.

    model = guarded(function, "mymod:f")   # what vmxaddr.models.get returns for "mymod:f"
    try:
        result = model(exit, state, access)
    except ModelError as e:
        print(e)         # one line; e.model, e.what, e.case, e.details (the traceback, for --debug)

The registry's own models are not wrapped: they are trusted, and the differential engine calls
them millions of times. KeyboardInterrupt always passes through.
"""

from __future__ import annotations

import inspect
from typing import Any

from vmxaddr.errors import ModelError as ModelError  # (defined in the leaf module; importable from here)
from vmxaddr.exitinfo import ExitInfo
from vmxaddr.isa import SEGMENTS
from vmxaddr.models.base import FAULT, IMPL, OK, Access, Outcome, Result, Step
from vmxaddr.state import MASK64, CpuState

KINDS = (OK, FAULT, IMPL)
VECTORS = ("UD", "GP", "SS", "PF", "AC")


def one_line(text: str, limit: int = 160) -> str:
    """`text` on one line, control characters escaped, at most `limit` characters."""
    flat = " ".join(str(text).split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_exception(e: BaseException) -> str:
    """How a model's exception reads in an error: "raised TypeError: f() takes 2 positional …",
    or "exited (SystemExit 0)"."""
    if isinstance(e, SystemExit):
        return f"exited (SystemExit {one_line(repr(e.code), 60)})"
    msg = one_line(str(e))
    name = type(e).__name__
    return f"raised {name}" + (f": {msg}" if msg and msg != name else "")


def describe_case(exit: Any, state: Any) -> str:
    """The case as the model saw it: instruction, exit information and mode."""
    try:
        mode = f"{state.mode} mode, {state.code_size}-bit code"
        return (f"{exit.instruction} (instruction information {exit.instruction_info:#010x}, "
                f"exit qualification {exit.exit_qualification:#x}; {mode})")
    except Exception:  # noqa: BLE001 - a description must never fail
        return one_line(repr(exit), 120)


def _int_or_none(v: Any) -> bool:
    return v is None or (type(v) is int and 0 <= v <= MASK64)


def result_problem(r: Any) -> str | None:
    """Why `r` is not a Result a consumer of models can use, or None if it is: the right type,
    an Outcome of a known kind, ints within 64 bits, a segment name, Steps."""
    if not isinstance(r, Result):
        shown = "None" if r is None else f"a {type(r).__name__} ({one_line(repr(r), 60)})"
        return f"returned {shown}, not a vmxaddr.models.base.Result"
    o = r.outcome
    if not isinstance(o, Outcome):
        return f"returned a Result whose outcome is a {type(o).__name__}, not an Outcome"
    if o.kind not in KINDS:
        return f"returned an outcome of kind {one_line(repr(o.kind), 40)} (expected one of {', '.join(KINDS)})"
    if o.kind != OK and o.vector not in VECTORS:
        return f"returned a {o.kind} outcome with vector {one_line(repr(o.vector), 40)} (expected one of {', '.join(VECTORS)})"
    if o.error_code is not None and type(o.error_code) is not int:
        return f"returned an error code of type {type(o.error_code).__name__}, not int or None"
    for name in ("effective_address", "linear_address", "displacement", "segment_base"):
        v = getattr(r, name)
        if not _int_or_none(v):
            what = f"{type(v).__name__} {one_line(repr(v), 40)}" if type(v) is not int else f"{v:#x}, outside 0…2^64-1"
            return f"returned a Result whose {name} is {what} (expected an int in 0…2^64-1 or None)"
    if r.segment is not None and r.segment not in SEGMENTS:
        return f"returned a Result whose segment is {one_line(repr(r.segment), 40)} (expected one of {', '.join(SEGMENTS)} or None)"
    if not isinstance(r.steps, tuple | list) or not all(isinstance(s, Step) for s in r.steps):
        return "returned a Result whose steps are not a sequence of vmxaddr.models.base.Step"
    return None


def signature_problem(function: Any) -> str | None:
    """Why `function` cannot be called as model(exit, state, access), or None."""
    try:
        sig = inspect.signature(function)
    except (TypeError, ValueError):
        return None  # a builtin or C function: let the call tell
    try:
        sig.bind(None, None, None)
    except TypeError as e:
        return f"takes the wrong arguments ({one_line(str(e), 80)}); a model is model(exit, state, access, explain=False)"
    return None


class GuardedModel:
    """A user's model function behind the guard: same call signature as every model, but every
    misbehaviour raises ModelError. Picklable when the function is (a module-level function)."""

    def __init__(self, function: Any, name: str) -> None:
        self.function = function
        self.name = name
        params = _parameters(function)
        self._explain = params is None or "explain" in params or any(
            p.kind is p.VAR_KEYWORD for p in params.values())
        # Attributes other engines read from a model (classify, limit_check, mnemonics, …).
        # A callable one (a model's own `classify`) is guarded too.
        for attr, v in getattr(function, "__dict__", {}).items():
            if not attr.startswith("__"):
                setattr(self, attr, GuardedHelper(v, name, attr) if callable(v) and not isinstance(v, type) else v)

    def __repr__(self) -> str:
        return f"<model {self.name}>"

    def __call__(self, exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
        try:
            if explain and self._explain:
                r = self.function(exit, state, access, explain=True)
            else:
                r = self.function(exit, state, access)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit, MemoryError … from a user's code
            raise ModelError(self.name, describe_exception(e), describe_case(exit, state), e) from None
        problem = result_problem(r)
        if problem is not None:
            raise ModelError(self.name, problem, describe_case(exit, state))
        return r  # type: ignore[no-any-return]


class GuardedHelper:
    """A callable attribute of a user's model (e.g. `classify`), behind the same guard: what it
    raises becomes ModelError("<model>", "<attr> raised …"). It must return a str when called."""

    def __init__(self, function: Any, model: str, attr: str) -> None:
        self.function, self.model, self.attr = function, model, attr

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            v = self.function(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - as GuardedModel.__call__
            case = describe_case(args[0], args[1]) if len(args) >= 2 else ""
            raise ModelError(self.model, f"{self.attr}() {describe_exception(e)}", case, e) from None
        if self.attr == "classify" and not isinstance(v, str):
            raise ModelError(self.model, f"classify() returned a {type(v).__name__}, not a str")
        return v


def _parameters(function: Any) -> Any:
    try:
        return inspect.signature(function).parameters
    except (TypeError, ValueError):
        return None


def guarded(function: Any, name: str) -> GuardedModel:
    """`function` behind the guard; ModelError now if it cannot take a model's arguments."""
    problem = signature_problem(function)
    if problem is not None:
        raise ModelError(name, problem)
    return GuardedModel(function, name)


def call(model: Any, exit: ExitInfo, state: CpuState, access: Access, explain: bool = False,
         name: str | None = None) -> Result:
    """Run any model (guarded or not) and check its answer: for engines that take models from
    elsewhere than vmxaddr.models.get. Raises ModelError, never anything else the model raised."""
    g = model if isinstance(model, GuardedModel) else GuardedModel(model, name or str(getattr(model, "__name__", model)))
    return g(exit, state, access, explain)


__all__ = ["GuardedModel", "ModelError", "call", "describe_case", "describe_exception", "guarded", "result_problem"]
