"""Forms that differ only in what the models cannot tell apart share one proof.

A *group* is the forms of one instruction, processor mode, address size and operand kind whose
segments the models could treat alike — ES, DS, FS and GS outside 64-bit mode (SS raises #SS, CS
has its D/B fixed by the mode), FS and GS in 64-bit mode (both add their base) — in 16- and 32-bit
code alike. The first form of a group (the representative) is proved in full
(vmxaddr.prove.engine). Every other member is then *checked*, not assumed, to be the same
problem: its inputs are built with the representative's z3 variables (its segment's fields under
the names of the representative's segment, and the other way round), the encoder and both models
are replayed on them along each of the representative's paths (sym.Replay), and the member shares
the proof only when every condition decided is the same z3 term and every result the same value
(the segment's name aside). Then the two forms
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
from vmxaddr.exitinfo import Policy, address_size_of, encode
from vmxaddr.models.base import Model
from vmxaddr.prove.engine import PROVED, FormResult, _confirm, prove_form
from vmxaddr.prove.forms import DEFAULTS, SEG_FIELDS, Form, symbolic
from vmxaddr.prove.sym import Feasibility, Mismatch, Replay, RuleLanguageError, term


def group_key(form: Form) -> tuple[Any, ...]:
    """What the forms of one group have in common: instruction, mode, address size, operand kind
    and the segment's kind (the code size and the segment within its kind may differ)."""
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


def same_problem(rep: Form, rep_explored: Any, member: Form, a: Model, b: Model, policy: Policy) -> bool:
    """Are the member's paths (built with the representative's variables) the representative's?
    Each recorded path of the encoder and of both models is replayed on the member's inputs
    (sym.Replay): every condition decided must be the recorded z3 term and every result the same.
    Then the member's trees of paths are the representative's, pruned branches included (the same
    conditions), without a solver call."""
    ri, mi = symbolic(rep), symbolic(member, renaming(rep, member))
    ins, st = mi.instruction, mi.state
    access = access_of(ins)
    if ri.state.mode != st.mode or access_of(ri.instruction) != access:
        return False
    seg_map = {member.segment: rep.segment}
    try:
        for _pe, ex, ra, rb, pe_list in rep_explored:
            ey = Replay(pe_list).run(lambda: encode(ins, st.rip, policy))
            if ex.instruction != ey.instruction or ex.extended_info != ey.extended_info:
                return False
            if address_size_of(ex.instruction_info) != address_size_of(ey.instruction_info):
                return False
            if not _same_value(ex.exit_qualification, ey.exit_qualification):
                return False
            for model, paths in ((a, ra), (b, rb)):
                for _pc, r, _known, decisions in paths:
                    q = Replay(decisions).run(lambda model=model, ey=ey: model(ey, st, access))
                    if not _same_result(r, q, seg_map):
                        return False
    except Mismatch:
        return False
    return True


def share(rep: Form, rep_result: FormResult, member: Form, model: tuple[str, Model], against: tuple[str, Model],
          policy: Policy, confirm: tuple[Model, Model] | None) -> FormResult | None:
    """The member's result from the representative's proof, or None (prove it on its own)."""
    if rep_result.status != PROVED or rep_result.signature is None:
        return None
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if not same_problem(rep, rep_result.signature, member, model[1], against[1], policy):
            return None
    except RuleLanguageError:
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
    # A model's own classifier runs on the member's exit information and results, which the replay
    # does not cover: only one that declares it reads the segment as the models do may share
    # (`reads_segment_by_name`, set where the classifier is written; see the module docstring).
    own = getattr(model[1], "classify", None)
    may_share = own is None or getattr(own, "reads_segment_by_name", False)
    for f in forms[1:]:
        r = share(rep, first, f, model, against, policy, confirm) if may_share else None
        out.append(r if r is not None else prove_form(f, model, against, timeout, policy, confirm, feasibility=feas))
    for r in out:
        r.signature = None  # z3 terms: neither printed nor sent between processes
    return out
