"""Forms that differ only in what the models cannot tell apart share one proof.

A *group* is the forms of one instruction, processor mode, address size and operand kind whose
segments the models could treat alike — ES, DS, FS and GS outside 64-bit mode (SS raises #SS, CS
has its D/B fixed by the mode), FS and GS in 64-bit mode (both add their base) — in 16- and 32-bit
code alike. The first form of a group (the representative) is proved in full
(vmxaddr.prove.engine). Every other member is then *checked*, not assumed, to be the same
problem: its inputs are built with the representative's z3 variables (its segment's fields under
the names of the representative's segment, and the other way round), the encoder and both models
are run on them path by path, and the member shares the proof only when every path condition is
the same z3 term and every result the same value (the segment's name aside). Then the two forms
are one set of constraints up to the renaming, so the classification and the solver's answers
carry over; each class's witness is renamed and replayed on the member's own bytes through the
concrete models (`vmxaddr diff`'s path) and must give the same class. A member whose paths differ,
or whose witness is not confirmed, is proved in full on its own; so sharing costs a failed
comparison at worst, never a class.

What the comparison does not re-run is the classifier on the member (it takes the exit
information, whose segment bits differ): vmxaddr.diff.classify and Xen's classifier read the
segment only through the results' segment name, `state.segment(name)` and, in 64-bit mode, "is it
FS or GS" — the same answer within a group (docs/proofs.md).
"""

from __future__ import annotations

import time
from typing import Any

from vmxaddr.case import access_of
from vmxaddr.exitinfo import Policy, address_size_of
from vmxaddr.models.base import Model
from vmxaddr.prove.engine import PROVED, FormResult, _confirm, _OutOfTime, explore, prove_form
from vmxaddr.prove.forms import DEFAULTS, SEG_FIELDS, Form, symbolic
from vmxaddr.prove.sym import Deadline, Feasibility, PathLimit, RuleLanguageError, term


def group_key(form: Form) -> tuple[Any, ...]:
    seg = form.segment
    if form.mode == "64-bit":
        kind = "fs/gs" if seg in ("fs", "gs") else seg
    else:
        kind = seg if seg in ("ss", "cs", None) else "es/ds/fs/gs"
    return (form.mnemonic, form.mode, form.address_size, form.kind, kind)


def group(forms: list[Form]) -> list[list[Form]]:
    """The forms in groups (group_key), in the order of their first member."""
    out: dict[tuple[Any, ...], list[Form]] = {}
    for f in forms:
        out.setdefault(group_key(f), []).append(f)
    return list(out.values())


def renaming(rep: Form, member: Form) -> dict[str, str]:
    """Member input -> the representative's variable standing for it (a swap of two segments)."""
    a, b = member.segment, rep.segment
    if a is None or b is None or a == b:
        return {}
    out = {}
    for f, _bits in SEG_FIELDS:
        out[f"{a}.{f}"], out[f"{b}.{f}"] = f"{b}.{f}", f"{a}.{f}"
    return out


def _same_value(x: Any, y: Any) -> bool:
    if x is None or y is None or isinstance(x, str) or isinstance(y, str):
        return x == y  # type: ignore[no-any-return]
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    try:
        return bool(term(x).eq(term(y)))
    except RuleLanguageError:
        return False


def _same_result(r: Any, q: Any, seg_map: dict[str | None, str | None]) -> bool:
    if r is None or q is None:
        return r is q
    o, p = r.outcome, q.outcome
    if (o.kind, o.vector, o.error_code, o.rule) != (p.kind, p.vector, p.error_code, p.rule):
        return False
    if seg_map.get(q.segment, q.segment) != r.segment:
        return False
    return all(_same_value(getattr(r, f), getattr(q, f))
               for f in ("effective_address", "linear_address", "displacement", "segment_base"))


def _same_paths(xs: list[Any], ys: list[Any], seg_map: dict[str | None, str | None]) -> bool:
    return len(xs) == len(ys) and all(px.eq(py) and _same_result(rx, ry, seg_map)
                                      for (px, rx, _), (py, ry, _) in zip(xs, ys, strict=True))


def same_problem(rep: Form, rep_explored: Any, member: Form, a: Model, b: Model, policy: Policy,
                 feas: Feasibility, end: float) -> bool:
    """Are the member's paths (built with the representative's variables) the representative's?"""
    ri, mi = symbolic(rep), symbolic(member, renaming(rep, member))
    if ri.state.mode != mi.state.mode or access_of(ri.instruction) != access_of(mi.instruction):
        return False
    got = explore(mi.instruction, mi.state, access_of(mi.instruction), a, b, policy, feas, end)
    if len(got) != len(rep_explored):
        return False
    seg_map = {member.segment: rep.segment}
    for (pe, ex, ra, rb), (qe, ey, qa, qb) in zip(rep_explored, got, strict=True):
        if not pe.eq(qe) or ex.instruction != ey.instruction or ex.extended_info != ey.extended_info:
            return False
        if address_size_of(ex.instruction_info) != address_size_of(ey.instruction_info):
            return False
        if not _same_value(ex.exit_qualification, ey.exit_qualification):
            return False
        if not _same_paths(ra, qa, seg_map) or not _same_paths(rb, qb, seg_map):
            return False
    return True


def share(rep: Form, rep_result: FormResult, member: Form, model: tuple[str, Model], against: tuple[str, Model],
          policy: Policy, confirm: tuple[Model, Model] | None, feas: Feasibility, timeout: float) -> FormResult | None:
    """The member's result from the representative's proof, or None (prove it on its own)."""
    if rep_result.status != PROVED or rep_result.signature is None:
        return None
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if not same_problem(rep, rep_result.signature, member, model[1], against[1], policy, feas, c0 + timeout / 4):
            return None
    except (PathLimit, Deadline, _OutOfTime, RuleLanguageError):
        return None
    rn = renaming(rep, member)
    res = FormResult(member, PROVED, absent=list(rep_result.absent), paths=rep_result.paths, shared_with=rep.key,
                     note=f"the proof of {rep.key} (the same paths{', segments renamed' if rn else ''})")
    for c in rep_result.classes:
        full = {**DEFAULTS, **c.witness}
        values = {n: full.get(rn.get(n, n), DEFAULTS.get(rn.get(n, n), 0)) for n in set(full) | set(rn)}
        found = _confirm(member, c.name, values, model, against, policy, confirm)
        if not found.confirmed:
            return None
        found.condition, found.paths = c.condition, c.paths
        res.classes.append(found)
    res.seconds, res.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return res


def prove_group(forms: list[Form], model: tuple[str, Model], against: tuple[str, Model], timeout: float,
                policy: Policy, confirm: tuple[Model, Model] | None = None) -> list[FormResult]:
    """Prove the first form, then share its proof with every other form that is the same problem."""
    feas = Feasibility(30)
    rep = forms[0]
    first = prove_form(rep, model, against, timeout, policy, confirm, feasibility=feas)
    out = [first]
    for f in forms[1:]:
        r = share(rep, first, f, model, against, policy, confirm, feas, timeout)
        out.append(r if r is not None else prove_form(f, model, against, timeout, policy, confirm, feasibility=feas))
    for r in out:
        r.signature = None  # z3 terms: neither printed nor sent between processes
    return out
