"""Xen's nested-VMX operand decoding as a pure model: xen-c447b730.

Built from reading xen/arch/x86/hvm/vmx/vvmx.c (decode_vmx_inst() and nvmx_handle_vmx_insn())
at xen-project/xen c447b7308b13 (2026-08; the function text matches the stored 00550e808c10
copy we checked it against). Our own code, from the behaviour; step names and rule ids are those
of the SDM model so that explanations line up.

What Xen does, in order:
  * nvmx_handle_vmx_insn(): #UD unless the guest is in protected mode outside virtual-8086 mode
    and, when long mode is active, in 64-bit mode (vmx_guest_x86_mode() < 8 under EFER.LMA, < 2
    otherwise); then #GP(0) when CPL > 0.
  * decode_vmx_inst(): bit 10 set -> register operand. Otherwise a segment field above 5 ->
    #GP(0); offset = base + index x scale + exit qualification, all 64 bits wide (full register
    values, the qualification unextended and unmasked), modulo 2^64; the linear address adds the
    segment base unless in 64-bit mode with a segment other than FS/GS, without a 32-bit wrap.
  * the access length is 2 << address-size field (2, 4 or 8 bytes), not the instruction's.
  * #GP(0) when offset + size - 1 wraps past 2^64; in 64-bit mode when the linear address (the
    last byte's, for a non-negative one) is not canonical in 48 bits (is_canonical_address());
    outside 64-bit mode when offset + size - 1 exceeds the segment limit. Never #SS; no unusable,
    type or expand-down check; no flat-segment exemption; no LAM untagging (this matters only
    where Xen lets a guest enable LAM, which we did not check).
Xen uses this decoding only for the VMX instructions (`MNEMONICS`); it emulates the
descriptor-table instructions through its x86 emulator, which is not modelled here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any

from vmxaddr.exitinfo import ExitInfo
from vmxaddr.isa import REG64, SEGMENTS
from vmxaddr.models.base import FAULT, IMPL, OK, Access, Outcome, Result, Step
from vmxaddr.models.sdm import canonical, lam_untag
from vmxaddr.state import CpuState

MASK64 = (1 << 64) - 1
MASK32 = 0xFFFFFFFF
MNEMONICS = ("vmptrld", "vmclear", "vmxon", "vmptrst", "vmread", "vmwrite", "invept", "invvpid")


@dataclass(frozen=True, slots=True)
class Quirks:
    """Xen's differences from the SDM, one flag each, in the order the computation meets them.
    All True is Xen; a flag set to False does that step the SDM's way. The divergence classes
    (`classify`) are named after the flag whose correction alone removes a divergence."""

    qual_unmasked: bool = True  # the exit qualification's bits above the address size are used
    no_asz_mask: bool = True  # offset (and base/index registers) not reduced to the address size
    no_wrap32: bool = True  # linear address not reduced mod 2^32 outside 64-bit mode
    length_from_asz: bool = True  # access length 2/4/8 from the address size
    no_segment_checks: bool = True  # no unusable, type or expand-down check
    always_gp: bool = True  # #GP(0) where the SDM raises #SS(0)
    wrap_check: bool = True  # #GP when offset + size - 1 wraps past 2^64 (64-bit offset arithmetic)
    canonical_48_last: bool = True  # 48-bit canonical check (of the last byte for a non-negative address)
    no_lam: bool = True  # no linear-address masking: LAM metadata bits make the address non-canonical


XEN = Quirks()
QUIRK_CLASSES: dict[str, str] = {
    "qual_unmasked": "Xen: exit-qualification bits above the address size used",
    "no_asz_mask": "Xen: offset not reduced to the address size",
    "no_wrap32": "Xen: linear address not wrapped at 4 GiB",
    "length_from_asz": "Xen: access length taken from the address size",
    "no_segment_checks": "Xen: no usability/type/expand-down checks",
    "always_gp": "Xen: #GP(0) where the SDM raises #SS(0)",
    "wrap_check": "Xen: offset wrapping past 2^64 faults",
    "canonical_48_last": "Xen: canonical check in 48 bits whatever CR4.LA57",
    "no_lam": "Xen: LAM metadata not removed before the canonical check",
}
COMBINED = "Xen: several differences combined"


def _canonical48(addr: int) -> bool:
    # is_canonical_address(): ((long)x >> 47) == ((long)x >> 63)
    top = addr >> 47
    return top == 0 or top == (1 << 17) - 1


def xen_c447b730(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    """Xen (c447b7308b13) decode_vmx_inst(): see the module docstring."""
    return xen_model(XEN, exit, state, access, explain)


def xen_model(q: Quirks, exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    """Xen's decode_vmx_inst() with the quirks `q` keeps (each one a step of the module doc), on one
    exit."""
    steps: list[Step] | None = [] if explain else None
    ins = exit.instruction
    info = exit.instruction_info
    mode = state.mode

    def done(outcome: Outcome, **kw: Any) -> Result:
        return Result(outcome, steps=tuple(steps) if steps else (), **kw)

    if mode in ("real", "virtual-8086", "compatibility"):
        return done(Outcome(FAULT, "UD", None, "mode", f"Xen: {ins.upper()} in {mode} mode: #UD"))
    if steps is not None:
        steps.append(Step("mode", "mode", f"{mode} mode: Xen emulates {ins.upper()}", mode))
    if state.cpl > 0:
        return done(Outcome(FAULT, "GP", 0, "cpl", f"Xen: CPL {state.cpl} > 0: #GP(0)"))
    if steps is not None:
        steps.append(Step("cpl", "cpl", f"CPL {state.cpl}: the privilege check passes", state.cpl))
    if info & (1 << 10):
        if steps is not None:
            steps.append(Step("register-operand", "register-operand", "bit 10 = 1: register operand, no memory address"))
        return done(Outcome(OK, rule="register-operand", reason="register operand: no memory access"))

    seg_no = info >> 15 & 7
    if seg_no > 5:
        return done(Outcome(FAULT, "GP", 0, "segment", f"Xen: segment field {seg_no} > 5 (GS): #GP(0)"))
    seg = SEGMENTS[seg_no]
    base = None if info & (1 << 27) else info >> 23 & 15
    index = None if info & (1 << 22) else info >> 18 & 15
    scale = 1 << (info & 3)
    asz_code = info >> 7 & 7
    size = 2 << asz_code if q.length_from_asz else access.size  # Xen: 1 << (address-size field + 1)
    asz = 16 << asz_code if asz_code < 3 else 64
    amask = MASK64 if q.no_asz_mask or asz == 64 else (1 << asz) - 1
    disp = exit.exit_qualification & MASK64
    if not q.qual_unmasked and asz < 64:
        low = disp & ((1 << asz) - 1)
        disp = (low - (1 << asz) if low >> (asz - 1) else low) & MASK64
    bval = state.regs[base] & amask if base is not None else 0
    ival = state.regs[index] & amask if index is not None else 0
    offset = (bval + ival * scale + disp) & MASK64 & amask
    mode64 = mode == "64-bit"
    s = state.segment(seg)
    adds_base = not mode64 or seg in ("fs", "gs")
    sbase = s.base if adds_base else 0
    linear = (sbase + offset) & MASK64
    if not mode64 and not q.no_wrap32:
        linear &= MASK32
    kw = dict(effective_address=offset, linear_address=linear, segment=seg, displacement=disp, segment_base=sbase)
    vector = "SS" if seg == "ss" and not q.always_gp else "GP"
    if steps is not None:
        steps.append(Step("displacement", "exit-qualification",
                          f"exit qualification {exit.exit_qualification:#x} used as is, all 64 bits (Xen neither masks "
                          "nor sign-extends it to the address size)" if q.qual_unmasked else
                          f"exit qualification sign-extended from bit {asz - 1}: {disp:#x}", disp))
        terms = []
        if base is not None:
            terms.append(f"{REG64[base]} {bval:#x}")
        if index is not None:
            terms.append(f"{REG64[index]} {ival:#x} x {scale}")
        terms.append(f"displacement {disp:#x}")
        steps.append(Step("effective-address", "effective-address",
                          f"offset = {' + '.join(terms)} = {offset:#x} " +
                          ("(64-bit registers, mod 2^64, no address-size mask)" if amask == MASK64 else f"(mod 2^{asz})"),
                          offset))
        steps.append(Step("segment", "segment", f"segment {seg} (bits 17:15 = {seg_no})", seg))
        why = ("base added" if adds_base else f"the {seg.upper()} base is not added in 64-bit mode")
        steps.append(Step("linear-address", "segment-base-64" if mode64 else "linear-32",
                          f"linear = {seg} base {sbase:#x} + offset {offset:#x} = {linear:#x} ({why}" +
                          ("; no 32-bit wrap)" if q.no_wrap32 and not mode64 else ")"), linear))
        if q.length_from_asz:
            steps.append(Step("access-length", "limit",
                              f"Xen's access length: 2 << address-size field ({asz_code}) = {size} bytes "
                              f"(the instruction accesses {access.size})", size))
    last = offset + size - 1
    if last > MASK64 and q.wrap_check:
        return done(Outcome(FAULT, vector, 0, "limit",
                            f"Xen: offset {offset:#x} + {size} - 1 wraps past 2^64: #{vector}(0)"), **kw)
    if mode64:
        if not q.no_lam:  # the SDM's way: the untagged address is the one checked (and reported)
            untagged, bit = lam_untag(linear, state)
            if bit is not None:
                linear = untagged
                kw["linear_address"] = linear
        if q.canonical_48_last:
            probe = linear if linear >> 63 else (linear + size - 1) & MASK64
            ok, what = _canonical48(probe), f"{probe:#x} (48-bit check)"
        else:
            bits = 57 if state.la57 else 48
            ok = canonical(linear, bits) and canonical((linear + size - 1) & MASK64, bits)
            what = f"{linear:#x} ({bits}-bit check of the first and last byte)"
        if not ok:
            return done(Outcome(FAULT, vector, 0, "canonical", f"Xen: {what} is not canonical: #{vector}(0)"), **kw)
        if steps is not None:
            steps.append(Step("canonical", "canonical", f"{what} is canonical: no fault"))
        return done(Outcome(OK, rule="canonical"), **kw)
    if not q.no_segment_checks and mode == "protected":
        if s.unusable:
            return done(Outcome(FAULT, vector, 0, "unusable", f"{seg.upper()} is unusable: #{vector}(0)"), **kw)
        t = s.type
        if (access.write and (t & 8 or not t & 2)) or (not access.write and t & 8 and not t & 2):
            return done(Outcome(FAULT, "GP", 0, "type", f"type {t:#x} forbids a {access.kind}: #GP(0)"), **kw)
        if s.expand_down:
            upper = MASK32 if s.db else 0xFFFF
            if offset <= s.limit or last > upper:
                return done(Outcome(FAULT, vector, 0, "limit", f"outside expand-down {seg}: #{vector}(0)"), **kw)
            return done(Outcome(OK, rule="limit"), **kw)
    if last > s.limit:
        if not q.always_gp and s.limit == MASK32:
            return done(Outcome(IMPL, vector, 0, "flat", "crosses a 4-GiB limit"), **kw)
        return done(Outcome(FAULT, vector, 0, "limit",
                            f"Xen: last byte {offset:#x} + {size} - 1 = {last:#x} > {seg} limit {s.limit:#x}: #{vector}(0)"), **kw)
    if steps is not None:
        steps.append(Step("limit", "limit", f"last byte {offset:#x} + {size} - 1 = {last:#x} <= {seg} limit "
                          f"{s.limit:#x}: no fault (no usability, type or expand-down check)"))
    return done(Outcome(OK, rule="limit"), **kw)


def _agree(ref: Result, other: Result) -> bool:
    a, b = ref.outcome, other.outcome
    if not (a.accepts(b) if a.kind == IMPL else (b.accepts(a) if b.kind == IMPL else a.same_as(b))):
        return False
    if FAULT in (a.kind, b.kind):
        return True
    return ref.linear_address is None or other.linear_address is None or ref.linear_address == other.linear_address


def _variants() -> list[tuple[str, Quirks]]:
    """(class, Xen with that correction) in the order `classify` tries them: each difference alone,
    in the order the computation meets them, then each pair ("A + B")."""
    names = [f.name for f in fields(Quirks)]
    out = [(QUIRK_CLASSES[n], replace(XEN, **{n: False})) for n in names]
    for i, a in enumerate(names):  # two differences that only together make the divergence
        for b in names[i + 1:]:
            out.append((f"{QUIRK_CLASSES[a]} + {QUIRK_CLASSES[b].removeprefix('Xen: ')}", replace(XEN, **{a: False, b: False})))
    return out


VARIANTS = _variants()


def classify(exit: ExitInfo, state: CpuState, access: Access, reference: Result, own: Result | None = None) -> str:
    """Name a divergence between Xen and a reference result for one case: the first of VARIANTS
    (a Xen difference corrected, or two) that makes Xen agree, else COMBINED. The prover reads the
    same list (`classify.variants`): the class of an input is the first variant that agrees there."""
    for name, q in VARIANTS:
        if _agree(reference, xen_model(q, exit, state, access)):
            return name
    return COMBINED


classify.variants = [(name, partial(xen_model, q)) for name, q in VARIANTS]  # type: ignore[attr-defined]
classify.agree = _agree  # type: ignore[attr-defined]
classify.otherwise = COMBINED  # type: ignore[attr-defined]
# It reads the segment only through state.segment(name) and "FS or GS?" in 64-bit mode (the
# variants run xen_model, which reads it so): vmxaddr.prove.groups may share its proofs.
classify.reads_segment_by_name = True  # type: ignore[attr-defined]


xen_c447b730.mnemonics = MNEMONICS  # type: ignore[attr-defined]
xen_c447b730.classify = classify  # type: ignore[attr-defined]
