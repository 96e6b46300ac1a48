"""The differential engine: run several models on one case, say whether they agree, and if not,
where they part and what kind of bug that is.

Agreement: the same outcome kind, vector and error code (an implementation-specific outcome
accepts either of its answers, `Outcome.accepts`); when neither faults, the same linear address.
When a model faults, addresses do not matter.

Classification: the first computation step whose value differs, in the order the computation
runs — displacement -> effective address -> segment base -> linear address -> checks — turned
into a class a person recognises. Class names are stable (tests and corpora use them); the
constants below are the whole list. Inputs no processor can produce (a VMX instruction outside
protected and 64-bit mode) get their own "unreachable from hardware" classes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmxaddr.apx import operand_bits_extended
from vmxaddr.case import Case, access_of, run_model
from vmxaddr.decode import Instruction
from vmxaddr.encoder_consumer import attribute, cross
from vmxaddr.encoders import get_encoder
from vmxaddr.exitinfo import ExitInfo, Policy, address_size_of, encode, encode_info, exit_qualification
from vmxaddr.explain import describe_instruction
from vmxaddr.isa import SPECS
from vmxaddr.models import covers
from vmxaddr.models.base import FAULT, IMPL, OK, Access, Model, Result
from vmxaddr.models.kvm import LimitCheck
from vmxaddr.models.sdm import canonical, lam_untag, select
from vmxaddr.state import CpuState

# -- classes ------------------------------------------------------------------------------------
COMPAT_AS_64 = "compatibility mode treated as 64-bit (unreachable from hardware)"
REAL_V86_NO_UD = "real/virtual-8086 mode not rejected (unreachable from hardware)"
# Non-VMX instructions (INVPCID): faults the processor makes before any VM exit.
PRE_EXIT_FAULT_NOT_MADE = "privilege or mode fault of a non-VMX instruction not made (unreachable from hardware)"
COMPAT_AS_64_REACHABLE = "compatibility mode treated as 64-bit (a non-VMX instruction: reachable)"
REAL_MODE_SEGMENT_CHECKS = "usability or type checked in real mode (a non-VMX instruction)"
DISPLACEMENT_NOT_SIGN_EXTENDED = "displacement not sign-extended"
ASZ_MASK_ON_LINEAR = "address-size mask applied to the linear address"
REGS_NOT_TRUNCATED = "base/index not truncated outside 64-bit mode"
SEGMENT_BASE_IN_64 = "segment base added in 64-bit mode"
LAM_NOT_UNTAGGED = "LAM metadata not removed before the canonical check"
LAM_UNTAGGED_LINEAR = "linear address reported untagged (LAM)"
LAM57_FOUR_LEVEL = "LAM_U57 with 4-level paging: bits 56:47 checked"
NO_CHECKS = "no canonical/type/limit checks"
FLAT_LIMIT = "limit check on a flat segment"
LIMIT_OFF_BY_ONE = "limit check off by one"
LENGTH_FIXED_8 = "access length fixed at 8"
EXPAND_DOWN = "expand-down segment checked as expand-up"
TYPE_BEFORE_USABLE = "type checked before usability"
EA_DIFFERS = "effective address differs"
BASE_DIFFERS = "segment base differs"
LINEAR_DIFFERS = "linear address differs"
CHECKS_DIFFER = "fault checks differ"
CANONICAL_FIRST_BYTE = "canonical check on the first byte only"
EGPR_FROM_LEGACY = "R16-R31 read from the 32-bit field (APX extended field ignored)"

CLASSES = (COMPAT_AS_64, REAL_V86_NO_UD, PRE_EXIT_FAULT_NOT_MADE, COMPAT_AS_64_REACHABLE, REAL_MODE_SEGMENT_CHECKS,
           DISPLACEMENT_NOT_SIGN_EXTENDED, ASZ_MASK_ON_LINEAR, REGS_NOT_TRUNCATED,
           SEGMENT_BASE_IN_64, LAM_NOT_UNTAGGED, LAM_UNTAGGED_LINEAR, LAM57_FOUR_LEVEL, NO_CHECKS, FLAT_LIMIT,
           LIMIT_OFF_BY_ONE, LENGTH_FIXED_8, EXPAND_DOWN, TYPE_BEFORE_USABLE, EA_DIFFERS, BASE_DIFFERS,
           LINEAR_DIFFERS, CHECKS_DIFFER, CANONICAL_FIRST_BYTE, EGPR_FROM_LEGACY)

# The computation's steps in order, with the Result field each one fills.
STEPS = (("displacement", "displacement"), ("effective-address", "effective_address"),
         ("segment-base", "segment_base"), ("linear-address", "linear_address"))
SDM_LIMIT = LimitCheck(fixed_length=None, off_by_one=False, flat_skip=False, expand_down=True)
MASK64 = (1 << 64) - 1


def agree(ref: Result, other: Result) -> bool:
    """Does `other` give an answer `ref` accepts? (Symmetric unless `ref` is implementation-specific.)"""
    a, b = ref.outcome, other.outcome
    if a is not b:  # the models share their quiet outcomes (models.base.outcome): one object when equal
        if a.kind == IMPL or b.kind == IMPL:
            ok = a.accepts(b) if a.kind == IMPL else b.accepts(a)
        else:
            ok = a.kind == b.kind and a.vector == b.vector and a.error_code == b.error_code
        if not ok:
            return False
        if b.kind == FAULT:
            return True
    if a.kind == FAULT:
        return True
    la, lb = ref.linear_address, other.linear_address
    return la is None or lb is None or la == lb


def first_difference(a: Result, b: Result) -> str:
    """The first step whose value differs ("checks" when every value agrees). A displacement
    difference counts only when it reaches the effective address (a 16-bit displacement held
    sign-extended by one model and not by the other is the same offset)."""
    for step, attr in STEPS:
        va, vb = getattr(a, attr), getattr(b, attr)
        if va is not None and vb is not None and va != vb:
            if step == "displacement" and a.effective_address == b.effective_address:
                continue
            return step
    return "checks"


def _lam_class(state: CpuState, ra: Result, rb: Result) -> str | None:
    """Divergences where linear-address masking applies to the pointer (64-bit mode)."""
    la, lb = ra.linear_address, rb.linear_address
    if la is None or lb is None:
        return None
    # `select`, `|` and `&` (the rule language's branch-free forms): vmxaddr prove runs this on
    # symbolic results, where each `if`/`and`/`or` on a symbolic value is a case split
    ua, ub = lam_untag(la, state)[0], lam_untag(lb, state)[0]
    tagged = select(ua != la, la, lb)  # one model may report it untagged
    untagged, bit = lam_untag(tagged, state)
    if bit is None or (untagged != ua) | (untagged != ub):
        return None
    if (bit == 56) & (state.la57 == 0) & (tagged >> 63 == 0):
        # LAM_U57 under 4-level paging: after untagging, is bits 56:47 = bit 63 required too?
        top = untagged >> 47
        if (top != 0) & (top != (1 << 17) - 1):
            return LAM57_FOUR_LEVEL
    if ra.outcome.kind != FAULT and rb.outcome.kind != FAULT:
        return LAM_UNTAGGED_LINEAR
    return LAM_NOT_UNTAGGED


def _crosses_canonical(state: CpuState, ra: Result, rb: Result, access: Access) -> bool:
    """Same address, and the access starts canonical but its last byte is not."""
    la, lb = ra.linear_address, rb.linear_address
    if la is None or lb is None:
        return False
    first = lam_untag(la, state)[0]
    if first != lam_untag(lb, state)[0]:
        return False
    bits = 57 if state.la57 else 48
    last = (first + max(access.size, 1) - 1) & ((1 << 64) - 1)
    return canonical(first, bits) and not canonical(last, bits)


def _limit_check(model: Model | None) -> LimitCheck:
    return getattr(model, "limit_check", SDM_LIMIT)


def _names_egpr(ext: int) -> bool:
    """Does the APX extended field (vmxaddr.apx) name a base or index register >= 16?"""
    _, _, _, index, base = operand_bits_extended(ext)
    return (index or 0) >= 16 or (base or 0) >= 16


def classify(exit: ExitInfo, state: CpuState, access: Access, ra: Result, rb: Result,
             model_a: Model | None = None, model_b: Model | None = None) -> str:
    """Name the divergence between two results for one case (call only when they disagree)."""
    spec = SPECS[exit.instruction]
    mode = state.mode
    if spec.vmx and mode == "compatibility":
        return COMPAT_AS_64
    if spec.vmx and mode in ("real", "virtual-8086"):
        return REAL_V86_NO_UD
    if not spec.vmx:
        rules = (ra.outcome.rule, rb.outcome.rule)
        if "mode" in rules or (spec.privileged and "cpl" in rules):
            # INVPCID at CPL > 0 or in virtual-8086 mode: #GP(0) before the exit (SDM Vol. 3C
            # "Relative Priority of Faults and VM Exits"); a model without the check computes on.
            return PRE_EXIT_FAULT_NOT_MADE
        if mode == "compatibility" and "canonical" in rules:
            return COMPAT_AS_64_REACHABLE  # INVPCID does exit from compatibility mode
        if mode == "real" and ("unusable" in rules or "type" in rules):
            return REAL_MODE_SEGMENT_CHECKS  # INVPCID's real-mode page lists no segment faults
    own = getattr(model_b, "classify", None)  # a model may name its own divergences (e.g. xen-c447b730)
    if own is not None:
        return str(own(exit, state, access, ra, rb))
    oa, ob = ra.outcome, rb.outcome
    if ("no-checks" in (oa.rule, ob.rule) and FAULT in (oa.kind, ob.kind)
            and ra.linear_address == rb.linear_address):
        return NO_CHECKS  # the addresses converge; only the checks tell the two apart
    step = first_difference(ra, rb)
    info = exit.instruction_info
    ext = exit.extended_info
    if ext is not None and step in ("effective-address", "register-operand") and _names_egpr(ext):
        return EGPR_FROM_LEGACY
    asz = address_size_of(info)
    if step == "displacement":
        return DISPLACEMENT_NOT_SIGN_EXTENDED
    if step == "effective-address":
        ea, eb = ra.effective_address, rb.effective_address
        assert ea is not None and eb is not None
        if asz < 64 and (ea - eb) % (1 << asz) == 0:
            return ASZ_MASK_ON_LINEAR  # one model kept the offset's bits above the address size
        return EA_DIFFERS
    if step == "segment-base":
        if mode == "64-bit" and ra.segment not in ("fs", "gs"):
            return SEGMENT_BASE_IN_64
        return BASE_DIFFERS
    if step == "linear-address":
        la, lb = ra.linear_address, rb.linear_address
        assert la is not None and lb is not None
        if mode == "64-bit":
            lam = _lam_class(state, ra, rb)
            if lam is not None:
                return lam
        if (la - lb) % (1 << 32) == 0 or (asz < 64 and (la - lb) % (1 << asz) == 0):
            return ASZ_MASK_ON_LINEAR
        return LINEAR_DIFFERS
    # Every value agrees: the checks differ.
    if "no-checks" in (oa.rule, ob.rule) and FAULT in (oa.kind, ob.kind):
        return NO_CHECKS
    if oa.kind == FAULT and ob.kind == FAULT and {oa.rule, ob.rule} == {"type", "unusable"}:
        return TYPE_BEFORE_USABLE
    if mode == "64-bit" and "canonical" in (oa.rule, ob.rule) and _crosses_canonical(state, ra, rb, access):
        return CANONICAL_FIRST_BYTE
    if mode == "64-bit" and "canonical" in (oa.rule, ob.rule):
        lam = _lam_class(state, ra, rb)
        if lam is not None:
            return lam
    rules = {oa.rule, ob.rule}
    if rules & {"limit", "flat"} and ra.segment is not None and ra.effective_address is not None:
        s = state.segment(ra.segment)
        lca, lcb = _limit_check(model_a), _limit_check(model_b)
        flat = s.base == 0 and s.limit == 0xFFFFFFFF and bool(s.type & 8 or not s.type & 4)
        if flat and lca.flat_skip != lcb.flat_skip:
            return FLAT_LIMIT
        if s.expand_down and lca.expand_down != lcb.expand_down:
            return EXPAND_DOWN
        len_a, len_b = lca.fixed_length or access.size, lcb.fixed_length or access.size
        if len_a != len_b and lca.off_by_one != lcb.off_by_one:
            # Both differ: would the faulting model still fault with the other's length?
            fa, fo = (lca, lcb) if oa.kind == FAULT else (lcb, lca)
            length = fo.fixed_length or access.size
            last = ra.effective_address + length - (0 if fa.off_by_one else 1)
            return LIMIT_OFF_BY_ONE if last > s.limit else LENGTH_FIXED_8
        if len_a != len_b:
            return LENGTH_FIXED_8
        if lca.off_by_one != lcb.off_by_one:
            return LIMIT_OFF_BY_ONE
    return CHECKS_DIFFER


# -- one case, many models ------------------------------------------------------------------------

@dataclass(frozen=True)
class Divergence:
    """Two models that disagree on a case: which ones, the first step whose value differs, and the divergence class."""
    reference: str
    other: str
    first_difference: str
    name: str  # the class

    def to_json(self) -> dict[str, Any]:
        """The divergence as `vmxaddr diff --json` prints it."""
        return {"models": [self.reference, self.other], "first_difference": self.first_difference, "class": self.name}


@dataclass(frozen=True)
class Diff:
    """Several models run on one case: their results, the divergences from the first model, and what was not covered."""
    case: Case
    exit: ExitInfo
    results: dict[str, Result]
    divergences: tuple[Divergence, ...]
    encoder_exit: ExitInfo | None = None  # what the models after the first got, with --encoder
    encoder: str = "sdm"
    not_covered: tuple[str, ...] = ()  # models that do not cover the instruction (not run, not compared)

    @property
    def agree(self) -> bool:
        """True when every model gives an answer the first (the reference) accepts."""
        return not self.divergences

    @property
    def first_difference(self) -> str | None:
        """The earliest computation step at which any model departs from the reference, or None when all agree."""
        order = [s for s, _ in STEPS] + ["checks"]
        steps = [d.first_difference for d in self.divergences]
        return min(steps, key=order.index) if steps else None


def diff_case(case: Case, models: Sequence[tuple[str, Model]], explain: bool = False, encoder: str = "sdm") -> Diff:
    """Run every model on `case`; compare each with the first (the reference). With an `encoder`
    other than "sdm", the models after the first get that encoder's exit information and each
    divergence names the side that caused it (vmxaddr.encoder_consumer); the reference keeps the SDM's.
    A model after the first that does not cover the instruction (`models.covers`) is neither run
    nor compared: it is listed in `not_covered`."""
    exit = case.exit
    access = case.access
    skipped = tuple(n for n, m in models[1:] if not covers(m, case.instruction.mnemonic))
    models = [(n, m) for n, m in models if n not in skipped]
    enc_exit = exit if encoder == "sdm" else get_encoder(encoder)(case.instruction, case.state.rip, case.policy)
    results = {name: run_model(m, exit if i == 0 else enc_exit, case.state, access, explain)
               for i, (name, m) in enumerate(models)}
    ref_name, ref_model = models[0]
    ref = results[ref_name]
    divs = []
    for name, m in models[1:]:
        r = results[name]
        if encoder != "sdm":
            side, klass, _, _ = attribute(case, encoder, enc_exit, exit, r, ref, m,
                                          lambda e, st, a, rr, rm, m=m: classify(e, st, a, rr, rm, ref_model, m))
            if side is not None:
                divs.append(Divergence(ref_name, name, first_difference(ref, r), str(klass)))
        elif not agree(ref, r):
            divs.append(Divergence(ref_name, name, first_difference(ref, r),
                                   classify(exit, case.state, access, ref, r, ref_model, m)))
    return Diff(case, exit, results, tuple(divs), enc_exit if encoder != "sdm" else None, encoder, skipped)


_EXITS: dict[Policy, dict[tuple[bytes, int], tuple[int, Access]]] = {}


_LAST_POLICY: list[Any] = [None, None]


def clear_exit_memo() -> None:
    """Forget the memoised exit information (after a policy or encoder change in tests and benchmarks)."""
    _EXITS.clear()
    _LAST_POLICY[:] = [None, None]


def exit_and_access(ins: Instruction, rip: int, policy: Policy) -> tuple[ExitInfo, Access]:
    """`encode(ins, rip, policy)` and the access, the instruction-information field and the access
    memoised per operand shape (the bytes before the displacement, as in vmxaddr.decode) and
    policy: they are functions of those alone. The exit qualification is computed each time (the
    displacement, plus RIP for RIP-relative operands). Random undefined bits are a function of
    every byte, so that policy is not memoised."""
    if policy.undefined_bits == "random" or policy.apx or ins.rex2:
        return encode(ins, rip, policy), access_of(ins)  # random bits, or the APX extended field
    if policy is _LAST_POLICY[0]:
        memo = _LAST_POLICY[1]  # hashing a Policy costs more than the lookup it keys
    else:
        memo = _EXITS.get(policy)
        if memo is None:
            memo = _EXITS[policy] = {}
        _LAST_POLICY[:] = [policy, memo]
    op = ins.operand
    key = (ins.raw if op is None else ins.raw[:op.disp_offset], ins.code_size)
    hit = memo.get(key)
    if hit is None:
        if len(memo) >= 1 << 16:
            memo.clear()
        hit = memo[key] = (encode_info(ins, policy)[0], access_of(ins))
    return _new(ExitInfo, (ins.mnemonic, hit[0], exit_qualification(ins, rip, policy), ins.length, None, None)), hit[1]


_new = tuple.__new__


def divergence(exit: ExitInfo, state: CpuState, access: Access, a: Model, b: Model) -> str | None:
    """The class of the divergence between `b` (reference) and `a` on one case, or None if they
    agree. The fuzzer's hot path: no steps, no case objects."""
    rb = b(exit, state, access)
    ra = a(exit, state, access)
    if agree(rb, ra):
        return None
    return classify(exit, state, access, rb, ra, b, a)


def case_divergence(case: Case, a: Model, b: Model, encoder: str = "sdm") -> str | None:
    """The divergence class of model `a` against reference `b` on `case`, or None when they agree;
    with another encoder, `a` reads that encoder's exit information."""
    if encoder != "sdm":  # a gets `encoder`'s exit information, b the SDM's (vmxaddr.encoder_consumer)
        return cross(case, encoder, a, b, lambda e, st, acc, rb, ra: classify(e, st, acc, rb, ra, b, a)).klass
    exit, access = exit_and_access(case.instruction, case.state.rip, case.policy)
    return divergence(exit, case.state, access, a, b)


def _fmt(v: int | str | None) -> str:
    if v is None:
        return "-"
    return v if isinstance(v, str) else f"{v:#x}"


def diff_text(d: Diff) -> str:
    """The side-by-side table `vmxaddr diff` prints: each step's value per model, the first difference marked, the classes."""
    names = list(d.results)
    first = d.first_difference
    rows: list[tuple[str, str, list[str]]] = [
        ("displacement", "displacement", [_fmt(r.displacement) for r in d.results.values()]),
        ("effective address", "effective-address", [_fmt(r.effective_address) for r in d.results.values()]),
        ("segment", "", [_fmt(r.segment) for r in d.results.values()]),
        ("segment base", "segment-base", [_fmt(r.segment_base) for r in d.results.values()]),
        ("linear address", "linear-address", [_fmt(r.linear_address) for r in d.results.values()]),
        ("outcome", "checks", [r.outcome.short() for r in d.results.values()]),
    ]
    widths = [max(len(n), *(len(row[2][i]) for row in rows)) for i, n in enumerate(names)]
    out = describe_instruction(d.case)
    out.append(f"  exit qualification {d.exit.exit_qualification:#x}, instruction information {d.exit.instruction_info:#010x}")
    if d.encoder_exit is not None:
        e = d.encoder_exit
        out.append(f"  {names[0]} gets the SDM encoder's information above; the others get {d.encoder}'s: "
                   f"exit qualification {e.exit_qualification:#x}, instruction information {e.instruction_info:#010x}")
    out.append("")
    out.append(" " * 22 + "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
    for label, step, vals in rows:
        mark = "  <- first difference" if step and step == first else ""
        out.append(f"  {label:<20}" + "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + mark)
    out.append("")
    for name, r in d.results.items():
        if r.outcome.reason:
            out.append(f"  {name}: {r.outcome.reason}")
    for name in d.not_covered:
        out.append(f"  {name}: does not cover {d.case.instruction.mnemonic.upper()} (not run)")
    out.append("")
    if d.agree:
        out.append("agree: every model gives an answer the first one accepts")
    for dv in d.divergences:
        out.append(f"{dv.other} differs from {dv.reference} at the {dv.first_difference} step: {dv.name}")
    return "\n".join(out)


__all__ = ["CLASSES", "Diff", "Divergence", "agree", "classify", "diff_case", "divergence", "first_difference",
           "OK", "diff_text"]
