"""The rule language's symbolic backend: Python's integer operators on z3 bit-vectors, and the
path explorer that turns a rule's `if` into a case split.

The rule language (docs/proofs.md) is the subset of Python the models are written in: integers,
`+ - * << >> & | ^ ~`, comparisons, `%` by a power of two, `and`/`or`/`not`/`if` on the results,
tuples indexed by values that are concrete in a form (mode, address-size code, segment number,
the instruction's table entries). Run on Python ints it is the model itself (mypyc compiles it);
run on `Sym` values it builds z3 terms:

  * a `Sym` is a z3 bit-vector of WIDTH bits read as a *signed* integer, so that it behaves like
    Python's unbounded int as long as no intermediate value leaves [-2^(WIDTH-1), 2^(WIDTH-1)).
    The models' inputs are at most 64 bits wide and their expressions add at most four terms
    with shifts of at most 3 (or 64 for a mask), so WIDTH = 72 bits cannot overflow; `check_width`
    watches every result the explorer sees and turns any doubt into an error, never a proof.
  * `bool(x)` of a symbolic condition asks the explorer (`Paths.decide`), which answers one side,
    records it in the path condition, and later re-runs the rule with the other side. A run is
    deterministic given its decisions, so depth-first re-execution visits every path once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import z3

WIDTH = 72
_LIMIT = 1 << (WIDTH - 1)


class RuleLanguageError(Exception):
    """A rule did something the symbolic backend cannot follow (e.g. a symbolic dict key)."""


def _bv(v: Any) -> z3.BitVecRef:
    if isinstance(v, Sym):
        return v.e
    if isinstance(v, bool):
        return z3.BitVecVal(int(v), WIDTH)
    if isinstance(v, int):
        if not -_LIMIT <= v < _LIMIT:
            raise RuleLanguageError(f"constant {v:#x} does not fit the {WIDTH}-bit symbolic integers")
        return z3.BitVecVal(v, WIDTH)
    if isinstance(v, SymBool):
        return z3.If(v.e, z3.BitVecVal(1, WIDTH), z3.BitVecVal(0, WIDTH))
    raise RuleLanguageError(f"a {type(v).__name__} in integer arithmetic")


def _wrap(e: z3.BitVecRef) -> Any:
    if z3.is_bv_value(e):
        return e.as_signed_long()
    return Sym(e)


_SIMPLIFIED: dict[int, tuple[z3.BoolRef, Any]] = {}  # ast id -> (the term, kept alive; its value)


def _bool(e: z3.BoolRef) -> Any:
    key = e.get_id()
    hit = _SIMPLIFIED.get(key)
    if hit is not None:
        return hit[1]
    s = z3.simplify(e)
    out: Any = True if z3.is_true(s) else False if z3.is_false(s) else SymBool(s)
    if len(_SIMPLIFIED) > 200_000:
        _SIMPLIFIED.clear()
    _SIMPLIFIED[key] = (e, out)
    return out


class SymBool:
    """A symbolic condition. `bool()` of it is a decision of the current path."""

    __slots__ = ("e",)

    def __init__(self, e: z3.BoolRef) -> None:
        self.e = e

    def __bool__(self) -> bool:
        return Paths.current().decide(self.e)

    def __invert__(self) -> Any:
        return _bool(z3.Not(self.e))

    def __and__(self, o: Any) -> Any:
        return _bool(z3.And(self.e, as_bool(o)))

    __rand__ = __and__

    def __or__(self, o: Any) -> Any:
        return _bool(z3.Or(self.e, as_bool(o)))

    __ror__ = __or__

    def select(self, a: Any, b: Any) -> Any:
        """models.sdm.select on a symbolic condition: one If term, no decision."""
        return _wrap(z3.simplify(z3.If(self.e, _bv(a), _bv(b))))

    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        return _bool(self.e == as_bool(o))

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        return _bool(self.e != as_bool(o))

    __hash__ = None  # type: ignore[assignment]


def as_bool(v: Any) -> z3.BoolRef:
    """`v` as a solver boolean (a symbolic integer is true when non-zero)."""
    if isinstance(v, SymBool):
        return v.e
    if isinstance(v, Sym):
        return v.e != 0
    return z3.BoolVal(bool(v))


class Sym:
    """A symbolic integer (see the module docstring)."""

    __slots__ = ("e",)

    def __init__(self, e: z3.BitVecRef) -> None:
        self.e = e

    # arithmetic, Python semantics (exact while nothing overflows WIDTH bits)
    def __add__(self, o: Any) -> Any:
        return _wrap(self.e + _bv(o))

    def __radd__(self, o: Any) -> Any:
        return _wrap(_bv(o) + self.e)

    def __sub__(self, o: Any) -> Any:
        return _wrap(self.e - _bv(o))

    def __rsub__(self, o: Any) -> Any:
        return _wrap(_bv(o) - self.e)

    def __mul__(self, o: Any) -> Any:
        return _wrap(self.e * _bv(o))

    __rmul__ = __mul__

    def __and__(self, o: Any) -> Any:
        return _wrap(self.e & _bv(o))

    __rand__ = __and__

    def __or__(self, o: Any) -> Any:
        return _wrap(self.e | _bv(o))

    __ror__ = __or__

    def __xor__(self, o: Any) -> Any:
        return _wrap(self.e ^ _bv(o))

    __rxor__ = __xor__

    def __invert__(self) -> Any:
        return _wrap(~self.e)

    def __neg__(self) -> Any:
        return _wrap(-self.e)

    def __lshift__(self, o: Any) -> Any:
        return _wrap(self.e << _bv(o))

    def __rlshift__(self, o: Any) -> Any:
        return _wrap(_bv(o) << self.e)

    def __rshift__(self, o: Any) -> Any:  # Python's >> is arithmetic: so is z3's on a signed reading
        return _wrap(self.e >> _bv(o))

    def __rrshift__(self, o: Any) -> Any:
        return _wrap(_bv(o) >> self.e)

    def __mod__(self, o: Any) -> Any:
        if isinstance(o, int) and o > 0 and o & (o - 1) == 0:
            return _wrap(self.e & (o - 1))  # Python: x % 2^k == x & (2^k - 1), negative x too
        raise RuleLanguageError("% only by a power of two in the rule language")

    # comparisons, signed (Python's ints are)
    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        return _bool(self.e == _bv(o))

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        return _bool(self.e != _bv(o))

    def __lt__(self, o: Any) -> Any:
        return _bool(self.e < _bv(o))

    def __le__(self, o: Any) -> Any:
        return _bool(self.e <= _bv(o))

    def __gt__(self, o: Any) -> Any:
        return _bool(self.e > _bv(o))

    def __ge__(self, o: Any) -> Any:
        return _bool(self.e >= _bv(o))

    def __bool__(self) -> bool:
        return Paths.current().decide(self.e != 0)

    def select(self, a: Any, b: Any) -> Any:
        """models.sdm.select on a symbolic value (true when non-zero): one If term, no decision."""
        return _wrap(z3.simplify(z3.If(self.e != 0, _bv(a), _bv(b))))

    def __index__(self) -> int:
        raise RuleLanguageError("a symbolic value used as an index or count (it must be concrete in a form)")

    def __int__(self) -> int:
        raise RuleLanguageError("int() of a symbolic value")

    __hash__ = None  # type: ignore[assignment]

    def __format__(self, spec: str) -> str:
        return f"<{self.e}>"

    def __repr__(self) -> str:
        return f"Sym({self.e})"


def var(name: str, bits: int, signed: bool = False) -> Sym:
    """A symbolic input of `bits` bits (zero- or sign-extended to WIDTH) and its z3 variable."""
    v = z3.BitVec(name, bits)
    return Sym(z3.SignExt(WIDTH - bits, v) if signed else z3.ZeroExt(WIDTH - bits, v))


def term(v: Any) -> z3.BitVecRef:
    """The z3 term of a rule-language integer (a Python int or a Sym)."""
    return _bv(v)


class PathLimit(Exception):
    """More paths than the budget: the answer is "unknown", never "proved"."""


class Deadline(Exception):
    """The time given to an exploration ran out: the answer is "unknown", never "proved"."""


class Feasibility:
    """Is a path condition satisfiable? Answers from cached models first (a model found for one
    path often satisfies the next: KLEE's counterexample cache), then from a fresh QF_BV solver
    with a small resource limit. Only `unsat` prunes: "unknown" keeps the path, so pruning never hides one."""

    def __init__(self, timeout_ms: int = 200, incremental: bool = True) -> None:
        self.timeout_ms = timeout_ms
        # z3's resource limit, not its wall-clock timeout: the same answers on a busy machine as on
        # an idle one, so that two forms that are the same problem prune the same paths (groups.py).
        # About 1,000 units a millisecond on the machine measured (docs/proofs.md).
        self.rlimit = timeout_ms * 1000
        self.incremental = incremental
        self.models: list[z3.ModelRef] = []
        self.calls = 0
        self.seconds = 0.0

    def check(self, pc: list[z3.BoolRef], candidates: list[int],
              solve: Callable[[], z3.CheckSatResult] | None = None) -> tuple[bool, list[int]]:
        """(feasible?, indices of cached models satisfying pc) given those satisfying its prefix.
        `solve` decides pc on an incremental solver when given (Paths._solve)."""
        cond = pc[-1] if pc else z3.BoolVal(True)
        keep = [i for i in candidates if z3.is_true(self.models[i].eval(cond, model_completion=True))]
        if keep:
            return True, keep
        t = time.perf_counter()
        if solve is not None and self.incremental:
            r = solve()
            s = None
        else:
            s = z3.SolverFor("QF_BV")
            s.set("rlimit", self.rlimit)
            s.add(*pc)
            r = s.check()
        self.calls += 1
        self.seconds += time.perf_counter() - t
        if r == z3.sat:
            m = (s.model() if s is not None else solve.__self__._solver.model())  # type: ignore[union-attr]
            self.models.append(m)
            return True, [len(self.models) - 1]
        return r != z3.unsat, []


def feasible(feas: Feasibility, solver: z3.Solver, conds: list[z3.BoolRef]) -> bool:
    """May `conds` hold together (on top of what `solver` holds)? A cached model that satisfies them
    says yes without solving; "unknown" says yes too, so that only an unsat answer prunes."""
    both = z3.And(*conds)
    n = len(feas.models)
    for i in range(n - 1, max(-1, n - 33), -1):
        if z3.is_true(feas.models[i].eval(both, model_completion=True)):
            return True
    solver.push()
    try:
        solver.add(both)
        r = solver.check()
        feas.calls += 1
        if r == z3.sat:
            feas.models.append(solver.model())
        return r != z3.unsat
    except z3.Z3Exception:
        return True
    finally:
        solver.pop()


class Paths:
    """Depth-first exploration of a rule's paths. `run(f)` yields (path condition, f's value)
    for every path; the conditions are pairwise disjoint and, with `base`, cover every input that
    satisfies `base`. With a Feasibility, subtrees whose condition is unsatisfiable are skipped."""

    _stack: list[Paths] = []

    def __init__(self, feasibility: Feasibility | None = None, base: list[z3.BoolRef] | None = None,
                 max_paths: int = 20000, known: dict[int, bool] | None = None, deadline: float | None = None) -> None:
        self.deadline = deadline  # a time.process_time() value
        self.max_paths = max_paths
        self.feas = feasibility
        self.base = list(base or [])
        self.trace: list[bool] = []
        self.pos = 0
        self.pc: list[z3.BoolRef] = []
        self.infeasible = False
        self._memo: dict[tuple[bool, ...], tuple[bool, list[int]]] = {}
        # conditions already decided on this path (by z3 AST id, terms are hash-consed): asked
        # again, they answer without a new branch. `known` seeds it with the base's decisions.
        self.base_known = dict(known or {})
        self.known: dict[int, bool] = {}
        self.last_pc: list[z3.BoolRef] = []
        self._keep: list[z3.BoolRef] = []
        self._solver: z3.Solver | None = None
        self._on: list[z3.BoolRef] = []  # what the solver's stack holds, one condition a level

    @classmethod
    def current(cls) -> Paths:
        """The exploration running now (a rule deciding a symbolic condition asks it which way to
        go)."""
        if not cls._stack:
            raise RuleLanguageError("a symbolic condition decided outside Paths.run")
        return cls._stack[-1]

    def decide(self, cond: z3.BoolRef) -> bool:
        """Which way the current path takes at `cond`: replayed from the trace, or the next branch
        to explore."""
        cid = cond.get_id()
        hit = self.known.get(cid)
        if hit is not None:
            return hit
        if self.pos < len(self.trace):
            d = self.trace[self.pos]
        else:
            d = True
            self.trace.append(d)
        self.pos += 1
        self.pc.append(cond if d else z3.Not(cond))
        self.known[cid] = d
        self._keep.append(cond)
        if self.feas is not None:
            key = tuple(self.trace[:self.pos])
            hit = self._memo.get(key)
            if hit is None:
                parent = self._memo.get(key[:-1]) if key[:-1] else None
                cands = parent[1] if parent is not None else self._base_candidates()
                hit = self._memo[key] = self.feas.check(self.base + self.pc, cands, self._solve)
            if not hit[0]:
                self.infeasible = True
                raise _Infeasible
        return d

    def _solve(self) -> z3.CheckSatResult:
        """Is base + pc satisfiable? One incremental solver per exploration, its assertion stack
        kept equal to the path condition (push/pop): the base is asserted and simplified once."""
        assert self.feas is not None
        if self._solver is None:
            self._solver = z3.SolverFor("QF_BV")
            self._solver.set("rlimit", self.feas.rlimit)
            self._solver.add(*self.base)
        s, on = self._solver, self._on
        same = 0
        while same < len(on) and same < len(self.pc) and on[same].eq(self.pc[same]):
            same += 1
        if len(on) > same:
            s.pop(len(on) - same)
            del on[same:]
        try:
            for c in self.pc[same:]:
                s.push()
                s.add(c)
                on.append(c)
            return s.check()
        except z3.Z3Exception:  # an incremental solver cut short by its timeout can be left unusable
            self._solver, self._on = None, []
            return z3.unknown

    def _base_candidates(self) -> list[int]:
        """The cached models that satisfy the base (checked once per exploration)."""
        assert self.feas is not None
        base = z3.And(*self.base) if self.base else z3.BoolVal(True)
        n = len(self.feas.models)  # the most recent models only: evaluating all of them cost more than solving
        return [i for i in range(max(0, n - 16), n) if z3.is_true(self.feas.models[i].eval(base, model_completion=True))]

    def run(self, f: Callable[[], Any]) -> Iterator[tuple[z3.BoolRef, Any]]:
        """Run `f` once per feasible path, yielding each path's condition and f's value."""
        n = 0
        while True:
            self.pos, self.pc, self.infeasible = 0, [], False
            self.known = dict(self.base_known)
            Paths._stack.append(self)
            try:
                value = f()
            except _Infeasible:
                value = None
            finally:
                Paths._stack.pop()
            del self.trace[self.pos:]
            if self.deadline is not None and time.process_time() > self.deadline:
                raise Deadline("out of time")
            if not self.infeasible:
                n += 1
                if n > self.max_paths:
                    raise PathLimit(f"more than {self.max_paths} paths")
                self.last_pc = list(self.pc)  # the decisions of the path yielded (groups.py replays them)
                yield (z3.And(*self.pc) if self.pc else z3.BoolVal(True)), value
            # next path: flip the deepest True decision
            while self.trace and not self.trace[-1]:
                self.trace.pop()
            if not self.trace:
                return
            self.trace[-1] = False


class Mismatch(Exception):
    """A replayed rule asked another question than the path it replays."""


class Replay:
    """Re-run a rule along one recorded path (its decisions, `Paths.last_pc`): every condition it
    decides must be the recorded one, the same z3 term, in the same order, and it must decide no
    more. Then the rule's tree of paths is the recorded tree (vmxaddr.prove.groups)."""

    def __init__(self, pc: list[z3.BoolRef], known: dict[int, bool] | None = None) -> None:
        self.want, self.pos, self.known = pc, 0, dict(known or {})

    def decide(self, cond: z3.BoolRef) -> bool:
        """The recorded answer to `cond`, or Mismatch when the path recorded another question."""
        hit = self.known.get(cond.get_id())
        if hit is not None:
            return hit
        if self.pos >= len(self.want):
            raise Mismatch("decides more than the recorded path")
        w = self.want[self.pos]
        if w.eq(cond):
            d = True
        elif z3.is_not(w) and w.arg(0).eq(cond):
            d = False
        else:
            raise Mismatch("another condition than the recorded path's")
        self.pos += 1
        self.known[cond.get_id()] = d
        return d

    def run(self, f: Callable[[], Any]) -> Any:
        """f's value on the recorded path (Mismatch when f leaves it)."""
        Paths._stack.append(self)  # type: ignore[arg-type]
        try:
            value = f()
        finally:
            Paths._stack.pop()
        if self.pos != len(self.want):
            raise Mismatch("decides less than the recorded path")
        return value


class _Infeasible(BaseException):
    """Raised inside a run to abandon a path whose condition is unsatisfiable."""
