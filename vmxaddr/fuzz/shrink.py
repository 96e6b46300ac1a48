"""Making each class's first witness minimal: replay shrinking of its recorded choices, then
hypothesis.find (its result wins when simpler), then dropping prefixes and unread state."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from vmxaddr.case import Case
from vmxaddr.decode import LEGACY_PREFIXES, DecodeError, decode
from vmxaddr.exitinfo import Policy
from vmxaddr.fuzz.choosers import ReplayChooser, gen_case, shrink_choices
from vmxaddr.fuzz.classes import ClassReport
from vmxaddr.fuzz.failures import OutOfTime, guarded_class
from vmxaddr.fuzz.witness import _complexity, reduced_state
from vmxaddr.gen import DrawChooser
from vmxaddr.models.base import Model

HYPOTHESIS_MIN = 0.5


def minimise(rep: ClassReport, a: Model, b: Model, mnemonics: Sequence[str], policy: Policy, seed: int,
             hypothesis_examples: int, hypothesis_seconds: float = 2.0, encoder: str = "sdm",
             end: float | None = None) -> None:
    """Replace rep.witness by a minimal case of its class; by `end` (time.time()) if given, each
    step then keeping the smallest case it had found when the time ran out."""
    target = rep.name

    def holds(values: Sequence[int]) -> list[int] | None:
        if end is not None and time.time() >= end:
            raise OutOfTime
        ch = ReplayChooser(values)
        try:
            case = gen_case(ch, mnemonics, policy)
        except Exception:  # a replayed sequence can make bytes the decoder rejects
            return None
        return ch.used if _class(case, a, b, encoder) == target else None

    best = shrink_choices(rep.log, holds)
    ch = ReplayChooser(best)
    witness = gen_case(ch, mnemonics, policy)
    rep.shrunk_by = "replay"
    if end is not None:  # hypothesis needs a moment to start: not worth it in the last HYPOTHESIS_MIN seconds
        left = end - time.time()
        hypothesis_seconds = min(hypothesis_seconds, left) if left >= HYPOTHESIS_MIN else 0
    if hypothesis_examples > 0 and hypothesis_seconds > 0:
        found = _hypothesis_find(target, a, b, mnemonics, policy, seed, hypothesis_examples, hypothesis_seconds, encoder)
        if found is not None and (_complexity(_reduce(found, a, b, target, encoder))
                                  < _complexity(_reduce(witness, a, b, target, encoder))):
            witness, rep.shrunk_by = found, "hypothesis"
    rep.witness = _reduce(witness, a, b, target, encoder)


def _class(case: Case, a: Model, b: Model, encoder: str = "sdm") -> str | None:
    return guarded_class(case, a, b, encoder)


def _reduce(case: Case, a: Model, b: Model, target: str, encoder: str = "sdm") -> Case:
    """Drop every prefix byte the class does not need, then keep only the registers and segment
    the operand reads, if the class survives that."""
    case = _drop_prefixes(case, a, b, target, encoder)
    small = Case(case.instruction, reduced_state(case), case.policy)
    return small if _class(small, a, b, encoder) == target else case


def _drop_prefixes(case: Case, a: Model, b: Model, target: str, encoder: str) -> Case:
    """Remove prefix bytes one at a time while the bytes still decode and the class holds."""
    changed = True
    while changed:
        changed = False
        raw = case.instruction.raw
        for i in range(_prefix_end(raw, case.instruction.code_size)):
            try:
                shorter = decode(raw[:i] + raw[i + 1:], case.instruction.code_size)
            except DecodeError:
                continue
            trial = Case(shorter, case.state, case.policy)
            if _class(trial, a, b, encoder) == target:
                case, changed = trial, True
                break
    return case


def _prefix_end(raw: bytes, code_size: int) -> int:
    """How many legacy (and REX) prefix bytes start `raw`: the ones a shrinker may try to drop
    (the opcode may be 0F, a REX2-prefixed map-1 byte or INS/OUTS's 6C-6F)."""
    i = 0
    while i < len(raw) and (raw[i] in LEGACY_PREFIXES or (code_size == 64 and 0x40 <= raw[i] <= 0x4F)):
        i += 1
    return i


def _hypothesis_find(target: str, a: Model, b: Model, mnemonics: Sequence[str], policy: Policy, seed: int,
                     max_examples: int, seconds: float = 2.0, encoder: str = "sdm") -> Case | None:
    """hypothesis.find for a case of class `target`, within `seconds`: hypothesis's shrinking has
    no time bound of its own, so the predicate keeps the last (smallest so far) success and stops
    the search when the time is up."""
    from hypothesis import HealthCheck, find, settings
    from hypothesis import strategies as st
    from hypothesis.errors import NoSuchExample

    @st.composite
    def cases(draw: st.DrawFn) -> Case:
        return gen_case(DrawChooser(draw), mnemonics, policy)

    deadline = time.monotonic() + seconds
    best: list[Case] = []

    def holds(c: Case) -> bool:
        # Out of time: stop with a BaseException, which hypothesis lets through (an Exception it
        # would take for a failure of the test and try to shrink).
        if time.monotonic() > deadline:
            raise OutOfTime
        ok = _class(c, a, b, encoder) == target
        if ok:
            best.append(c)
        return ok

    try:
        return find(cases(), holds,
                    settings=settings(database=None, max_examples=max_examples, deadline=None,
                                      suppress_health_check=list(HealthCheck)),
                    random=random.Random(seed))
    except (OutOfTime, NoSuchExample, Exception):  # not found or out of time: the smallest success so far
        return best[-1] if best else None
