"""Generating cases from recorded choices, replaying them, and shrinking a choice sequence.

The fast generator (vmxaddr.gen) driven by `random.Random(seed)` records every choice as an
integer (RecordingChooser); ReplayChooser plays a sequence back, so a smaller sequence gives a
simpler case of the same generator (shrink_choices).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from vmxaddr.case import Case
from vmxaddr.decode import decode
from vmxaddr.exitinfo import Policy
from vmxaddr.gen import Chooser, gen_encoding, gen_state, gen_state_egprs
from vmxaddr.state import Segment

T = TypeVar("T")
DEFAULT_SEGMENT = Segment()

# -- generation -----------------------------------------------------------------------------------

def gen_case(ch: Chooser, mnemonics: Sequence[str], policy: Policy) -> Case:
    """One random case: an encoding, a state leaning on edge values (LAM, R16-R31 under APX), the policy given."""
    raw, cs = gen_encoding(ch, (16, 32, 64), mnemonics, rex2=0.3 if policy.apx else 0.0)
    state = gen_state(ch, cs)
    if policy.apx and cs == 64:  # R16-R31 for the REX2 forms (APX)
        state = replace(state, egprs=gen_state_egprs(ch))
    if cs == 64 and ch.chance(0.15):
        state = replace(state, lam_sup=ch.chance(0.6), lam_u48=ch.chance(0.3), lam_u57=ch.chance(0.3))
    return Case(decode(raw, cs), state, policy)


class RecordingChooser:
    """RandomChooser that remembers every choice as an integer (index, value or 0/1)."""

    __slots__ = ("r", "log")

    def __init__(self, rng: random.Random) -> None:
        self.r = rng
        self.log: list[int] = []

    def choice(self, seq: Sequence[T]) -> T:
        """Choose an element at random and record its index, so that the case can be replayed and shrunk."""
        i = int(self.r.random() * len(seq))
        self.log.append(i)
        return seq[i]

    def integer(self, lo: int, hi: int) -> int:
        """Draw an integer in [lo, hi] and record it."""
        # randint's body inlined (one Python call less on the hot path; the same draws)
        n = hi - lo + 1
        k = n.bit_length()
        getrandbits = self.r.getrandbits
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        self.log.append(lo + r)
        return lo + r

    def chance(self, p: float) -> bool:
        """Draw True with probability `p` and record it as 0 or 1."""
        b = self.r.random() < p
        self.log.append(int(b))
        return b


class ReplayChooser:
    """Plays back recorded choices; a value out of range, or past the end, becomes the simplest one
    (first option, 0 or the low end, False). `used` is what was actually played."""

    def __init__(self, values: Sequence[int]) -> None:
        self.values = values
        self.i = 0
        self.used: list[int] = []

    def _next(self) -> int | None:
        if self.i >= len(self.values):
            return None
        v = self.values[self.i]
        self.i += 1
        return v

    def choice(self, seq: Sequence[T]) -> T:
        """The recorded index's element (the first element when the record is used up or out of range)."""
        v = self._next()
        if v is None or not 0 <= v < len(seq):
            v = 0
        self.used.append(v)
        return seq[v]

    def integer(self, lo: int, hi: int) -> int:
        """The recorded integer, or the value closest to 0 in [lo, hi] when the record is used up or out of range."""
        v = self._next()
        if v is None or not lo <= v <= hi:
            v = 0 if lo <= 0 <= hi else lo
        self.used.append(v)
        return v

    def chance(self, p: float) -> bool:
        """The recorded choice (False when the record is used up)."""
        v = self._next()
        b = bool(v)
        self.used.append(int(b))
        return b


def _candidates(v: int) -> list[int]:
    out = [0]
    if v < 0:
        out += [-((-v) >> s) for s in (32, 16, 8, 4, 2, 1)] + [v + 1]
    else:
        out += [v >> s for s in (32, 16, 8, 4, 2, 1)] + [v - 1]
        out += [v & ((1 << b) - 1) for b in (8, 16, 32, 48)]
    seen: list[int] = []
    for c in out:
        if c != v and c not in seen:
            seen.append(c)
    return seen


class OutOfTime(BaseException):
    """Raised by a shrinker's predicate when its time is up (a BaseException, so that neither
    hypothesis nor the guards of vmxaddr.fuzz.failures take it for a model's failure)."""


def shrink_choices(log: Sequence[int], holds: Callable[[Sequence[int]], list[int] | None], budget: int = 4000) -> list[int]:
    """Greedy shrinking of a choice sequence: try each position with simpler values (and the tail
    cut off) while `holds` (which returns the played sequence, or None) keeps accepting. `holds`
    may raise OutOfTime: the best sequence so far is the answer."""
    best = list(log)
    try:
        _shrink(best, holds, budget)
    except OutOfTime:
        pass
    return best


def _shrink(best: list[int], holds: Callable[[Sequence[int]], list[int] | None], budget: int) -> None:
    improved = True
    while improved and budget > 0:
        improved = False
        for cut in (len(best) // 2, len(best) * 3 // 4):
            if cut and budget > 0:
                budget -= 1
                got = holds(best[:cut])
                if got is not None and got != best:
                    best[:], improved = got, True
        i = 0
        while i < len(best) and budget > 0:
            for c in _candidates(best[i]):
                budget -= 1
                got = holds(best[:i] + [c] + best[i + 1:])
                if got is not None and _simpler(got, best):
                    best[:], improved = got, True
                    break
            i += 1


def _simpler(a: Sequence[int], b: Sequence[int]) -> bool:
    return (sum(abs(x).bit_length() for x in a), len(a)) < (sum(abs(x).bit_length() for x in b), len(b))
