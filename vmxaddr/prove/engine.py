"""Prove one form: every divergence class between two models, each with a minimal witness
confirmed by the concrete models, and a proof that there is no other.

How (docs/proofs.md):
 1. The encoder (vmxaddr.exitinfo.encode), the reference model and the model under test are run
    on the form's symbolic inputs (vmxaddr.prove.sym), each path by path; infeasible paths are
    pruned. Then, for every pair of feasible paths, `vmxaddr.diff.agree` and
    `vmxaddr.diff.classify` — the very functions `vmxaddr fuzz` and `vmxaddr diff` use — run on
    the two symbolic results. Every path ends in "agree" or in a class name; together the paths
    cover every input of the form.
 2. For each class name, one fresh QF_BV solver decides the disjunction of its path conditions:
    sat -> a witness, shrunk toward the default state, replayed through `vmxaddr diff`'s path
    (vmxaddr.diff.diff_case) and required to give the same class; unsat -> that class does not
    occur; unknown (timeout) -> the form is not proved.
 3. The form is "proved" only when every path was enumerated, every class name decided, and every
    witness confirmed. Anything else is "unknown" (out of time or paths) or "error" (a witness the
    concrete models do not confirm, or a rule the symbolic backend cannot follow).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import z3

from vmxaddr.case import Case, access_of
from vmxaddr.diff import agree, classify, diff_case
from vmxaddr.exitinfo import DEFAULT_POLICY, Policy, encode
from vmxaddr.fuzz.witness import command
from vmxaddr.models.base import Model
from vmxaddr.prove.forms import DEFAULTS, Form, concrete, symbolic
from vmxaddr.prove.sym import Deadline, Feasibility, PathLimit, Paths, RuleLanguageError, feasible
from vmxaddr.prove.variants import Delegate, Delegating, Variants, variant_classifier

PROVED = "proved"
UNKNOWN = "classes found, rest unknown (timeout)"
ERROR = "error"


@dataclass
class ClassFound:
    """A divergence class found on a form: a witness, the `vmxaddr diff` command replaying it, and
    whether the concrete models confirm it."""
    name: str
    witness: dict[str, int]  # solver variable -> value (only those that differ from the default)
    command: str  # the `vmxaddr diff` command that replays it
    confirmed: bool
    condition: str  # readable condition over the inputs, or a note why it is not printed
    seconds: float
    paths: int

    def to_json(self) -> dict[str, Any]:
        """The class as `vmxaddr prove --json` prints it."""
        return {"class": self.name, "witness": {k: hex(v) for k, v in self.witness.items()}, "command": self.command,
                "confirmed": self.confirmed, "condition": self.condition, "seconds": round(self.seconds, 3),
                "paths": self.paths}


@dataclass
class FormResult:
    """What proving one form gave: its status (proved, classes found with the rest unknown, error),
    the classes, the paths."""
    form: Form
    status: str
    classes: list[ClassFound] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # class names some path reached, proved unsatisfiable
    undecided: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # this process's CPU time (the figure on a shared machine)
    paths: int = 0
    note: str = ""
    shared_with: str = ""  # the key of the form whose proof this one shares (vmxaddr.prove.groups)
    signature: Any = None  # what the models do on every path (groups.py compares it between forms)

    def to_json(self) -> dict[str, Any]:
        """The form's result as `vmxaddr prove --json` prints it."""
        return {"form": self.form.key, "name": self.form.name, "status": self.status, "seconds": round(self.seconds, 2),
                "cpu_seconds": round(self.cpu_seconds, 2),
                "paths": self.paths, "classes": [c.to_json() for c in self.classes], "absent": self.absent,
                "undecided": self.undecided, "note": self.note, **({"shared_with": self.shared_with} if self.shared_with else {})}


class _OutOfTime(Exception):
    pass


def prove_form(form: Form, model: tuple[str, Model], against: tuple[str, Model], timeout: float = 60.0,
               policy: Policy = DEFAULT_POLICY, confirm: tuple[Model, Model] | None = None,
               feasibility: Feasibility | None = None) -> FormResult:
    """Prove `model` against `against` (the reference) on `form` within `timeout` seconds.
    `model`/`against` are (name, pure-Python function) — the functions run symbolically;
    `confirm` are the functions the witnesses replay on (default: the same)."""
    t0, c0 = time.perf_counter(), time.process_time()
    end = c0 + timeout  # CPU seconds: on a shared machine a wall-clock budget measures the neighbours
    res = FormResult(form, ERROR)
    by_class: dict[str, list[z3.BoolRef]] = {}
    status = PROVED
    try:
        shortcut = _constant_class(form, model, against, policy, confirm)
    except (RuleLanguageError, Exception):  # noqa: BLE001 - the full exploration reports it
        shortcut = None
    if shortcut is not None:
        res.classes, res.status, res.note = [shortcut], PROVED, "the classifier names every divergence of this form alike"
        res.paths = 1
        res.seconds, res.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        return res
    try:
        # the enumeration gets 80% of the time, so that the classes met so far can still be decided
        res.signature = _paths(form, model[1], against[1], policy, c0 + 0.8 * timeout, res, by_class, feasibility)
    except PathLimit as e:
        status, res.note = UNKNOWN, f"path budget exceeded ({e})"
    except (_OutOfTime, Deadline):
        status, res.note = UNKNOWN, "out of time while enumerating paths (the classes below were met before)"
    except (RuleLanguageError, Exception) as e:  # noqa: BLE001 - a model outside the rule language
        res.status, res.note = ERROR, f"{type(e).__name__}: {e}"
        res.seconds, res.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        return res
    inputs = symbolic(form)
    for name, pcs in by_class.items():
        left = end - time.process_time()
        if left <= 0:
            res.undecided.append(name)
            status = UNKNOWN
            continue
        tq = time.process_time()
        cond = z3.Or(*pcs)
        s = z3.SolverFor("QF_BV")
        s.set("timeout", max(1, int(left * 1000)))
        s.add(cond)
        r = s.check()
        if r == z3.unsat:
            res.absent.append(name)
            continue
        if r != z3.sat:
            res.undecided.append(name)
            status = UNKNOWN
            continue
        values = _minimise(cond, s.model(), inputs.variables, end)
        found = _confirm(form, name, values, model, against, policy, confirm)
        found.seconds = time.process_time() - tq
        found.paths = len(pcs)
        found.condition = readable(cond, inputs.variables)
        res.classes.append(found)
        if not found.confirmed:
            status = ERROR
            res.note = f"witness of {name!r} not confirmed by the concrete models"
    if res.note.startswith(("out of time", "path budget")):
        res.absent = []  # not met among the paths enumerated: no proof of absence
    res.status = status if status != PROVED or not res.undecided else UNKNOWN
    res.seconds, res.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return res


class _Touched(Exception):
    """The classifier read a result: its answer is not the same for the whole form."""


class _Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise _Touched(name)


def _constant_class(form: Form, model: tuple[str, Model], against: tuple[str, Model], policy: Policy,
                    confirm: tuple[Model, Model] | None) -> ClassFound | None:
    """When the classifier names a divergence of this form without reading the two results or
    deciding anything symbolic (a VMX instruction in real, virtual-8086 or compatibility mode:
    "unreachable from hardware"), every divergence of the form has that one name; one confirmed
    witness then proves the form. Returns that class, or None (the full exploration follows)."""
    inputs = symbolic(form)
    ins, st = inputs.instruction, inputs.state
    access = access_of(ins)
    names = set()
    for _pc, exit in Paths().run(lambda: encode(ins, st.rip, policy)):
        paths = Paths()
        try:
            got = [name for _c, name in paths.run(lambda exit=exit: classify(exit, st, access, _Untouchable(),  # type: ignore[arg-type]
                                                                               _Untouchable(), against[1], model[1]))]
        except _Touched:
            return None
        if len(got) != 1 or paths.trace:
            return None
        names.add(got[0])
    if len(names) != 1:
        return None
    (name,) = names
    found = _confirm(form, name, {}, model, against, policy, confirm)  # the default state
    if not found.confirmed:
        return None  # the models agree there (or differ otherwise): explore
    found.condition, found.paths = "always where the two models disagree (the default state is one such input)", 1
    return found


def _paths(form: Form, a: Model, b: Model, policy: Policy, end: float, res: FormResult,
           out: dict[str, list[z3.BoolRef]], feas: Feasibility | None = None) -> list[Any]:
    """Fill `out`: class name -> the path conditions that end in it (b is the reference, as in
    diff.divergence). Returns the form's signature (`explore`)."""
    inputs = symbolic(form)
    ins, st = inputs.instruction, inputs.state
    access = access_of(ins)
    feas = feas or Feasibility(30)

    def tick() -> None:
        if time.process_time() > end:
            raise _OutOfTime

    explored = explore(ins, st, access, a, b, policy, feas, end)
    own = variant_classifier(a)
    a_seen = Delegating(a) if own is not None else a  # its classifier built as conditions (variants.py)
    for pe, exit, ra_paths, rb_paths, _ in explored:
        variants = None
        pair_solver = z3.SolverFor("QF_BV")
        pair_solver.set("rlimit", feas.rlimit)
        pair_solver.add(pe)
        for pa, ra, ka, _ in ra_paths:
            for pb, rb, kb, _ in rb_paths:
                if any(kb.get(c, d) != d for c, d in ka.items()):
                    continue  # the two paths decided one condition both ways
                if not feasible(feas, pair_solver, [pa, pb]):
                    continue  # no input takes both paths
                def compare(ra: Any = ra, rb: Any = rb, exit: Any = exit) -> str | None:
                    if agree(rb, ra):
                        return None
                    try:
                        return classify(exit, st, access, rb, ra, b, a_seen)
                    except Delegate:
                        return _DELEGATED
                for pc, name in Paths(feas, [pe, pa, pb], known=ka | kb, deadline=end).run(compare):
                    res.paths += 1
                    if name is _DELEGATED:
                        if variants is None:
                            variants = Variants(own, exit, st, access, feas, [pe], end)
                        for vname, cond in variants.classes(rb):
                            out.setdefault(vname, []).append(z3.And(pe, pa, pb, pc, cond))
                    elif name is not None:
                        out.setdefault(name, []).append(z3.And(pe, pa, pb, pc))
                tick()
    return explored


_DELEGATED = "(the model's own classifier)"


ModelPaths = list[tuple[z3.BoolRef, Any, dict[int, bool], list[z3.BoolRef]]]  # (condition, result, decided, decisions)
Explored = list[tuple[z3.BoolRef, Any, ModelPaths, ModelPaths, list[z3.BoolRef]]]


def explore(ins: Any, st: Any, access: Any, a: Model, b: Model, policy: Policy, feas: Feasibility, end: float) -> Explored:
    """The encoder's paths, and for each the paths of both models: [(encoder path condition, exit
    information, a's paths, b's paths, the encoder path's decisions)]."""
    out: Explored = []
    pe_ = Paths(feas, deadline=end)
    for pe, exit in pe_.run(lambda: encode(ins, st.rip, policy)):
        pe_list = pe_.last_pc
        pa_ = Paths(feas, [pe], deadline=end)
        ra_paths = [(pc, r, dict(pa_.known), pa_.last_pc) for pc, r in pa_.run(lambda exit=exit: a(exit, st, access))]
        if time.process_time() > end:
            raise _OutOfTime
        pb_ = Paths(feas, [pe], deadline=end)
        rb_paths = [(pc, r, dict(pb_.known), pb_.last_pc) for pc, r in pb_.run(lambda exit=exit: b(exit, st, access))]
        if time.process_time() > end:
            raise _OutOfTime
        out.append((pe, exit, ra_paths, rb_paths, pe_list))
    return out


def _minimise(cond: z3.BoolRef, m: z3.ModelRef, variables: dict[str, z3.BitVecRef], end: float) -> dict[str, int]:
    """A witness with as many inputs as possible at their default (the diff command's state):
    each input is reset to its default when the condition still holds by evaluation (no solver),
    then the few left are tried with a short solver call each."""
    values = {n: m.eval(v, model_completion=True).as_long() for n, v in variables.items()}

    def holds(vals: dict[str, int]) -> bool:
        sub = [(variables[n], z3.BitVecVal(x, variables[n].size())) for n, x in vals.items()]
        return z3.is_true(z3.simplify(z3.substitute(cond, *sub)))

    def default(n: str) -> int:
        return DEFAULTS.get(n, 0) & ((1 << variables[n].size()) - 1)

    for n in variables:
        if values[n] != default(n):
            trial = dict(values, **{n: default(n)})
            if holds(trial):
                values = trial
    tries = 0
    for n, v in variables.items():
        if values[n] == default(n) or tries >= 8 or time.process_time() > end:
            continue
        tries += 1
        s = z3.SolverFor("QF_BV")
        s.set("timeout", 300)
        s.add(cond, v == default(n), *(variables[k] == x for k, x in values.items() if k != n and x == default(k)))
        if s.check() == z3.sat:
            mm = s.model()
            values = {k: mm.eval(variables[k], model_completion=True).as_long() for k in variables}
    return values


def _confirm(form: Form, name: str, values: dict[str, int], model: tuple[str, Model], against: tuple[str, Model],
             policy: Policy, confirm: tuple[Model, Model] | None) -> ClassFound:
    raw, st = concrete(form, values)
    case = Case.from_bytes(raw, st, policy)
    fa, fb = confirm or (model[1], against[1])
    d = diff_case(case, [(against[0], fb), (model[0], fa)])
    got = d.divergences[0].name if d.divergences else None
    shown = {k: v for k, v in values.items() if v != DEFAULTS.get(k, 0) and (k != "cs.db")}
    return ClassFound(name, shown, command(case, [against[0], model[0]]), got == name, "", 0.0, 0)


def readable(cond: z3.BoolRef, variables: dict[str, z3.BitVecRef], limit: int = 400) -> str:
    """The condition simplified, if that makes it short enough to read; else a note."""
    try:
        t = z3.TryFor(z3.Then(z3.Tactic("simplify"), z3.Tactic("propagate-values"), z3.Tactic("ctx-simplify")), 2000)
        goals = t(cond)
        e = z3.simplify(z3.Or(*(z3.And(*g) for g in goals))) if len(goals) else z3.BoolVal(False)
    except z3.Z3Exception:
        e = z3.simplify(cond)
    if z3.is_true(e):
        return "always (every input of the form)"
    if len(e.sexpr()) > 4 * limit:  # the pretty printer is slow on large terms: measure first
        return f"(does not simplify to a short form: {len(e.sexpr())} characters as an s-expression)"
    text = " ".join(str(e).split())
    if len(text) > limit:
        return f"(does not simplify to a short form: {len(text)} characters)"
    return text


ProgressFn = Callable[[FormResult], None]
