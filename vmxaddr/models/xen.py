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
    type or expand-down check; no flat-segment exemption; no LAM untagging.
Xen uses this decoding only for the VMX instructions (`MNEMONICS`); it emulates the
descriptor-table instructions through its x86 emulator, which is not modelled here.
"""

from __future__ import annotations

from typing import Any

from vmxaddr.exitinfo import ExitInfo
from vmxaddr.isa import REG64, SEGMENTS
from vmxaddr.models.base import FAULT, OK, Access, Outcome, Result, Step
from vmxaddr.state import CpuState

MASK64 = (1 << 64) - 1
MNEMONICS = ("vmptrld", "vmclear", "vmxon", "vmptrst", "vmread", "vmwrite", "invept", "invvpid")


def _canonical48(addr: int) -> bool:
    # is_canonical_address(): ((long)x >> 47) == ((long)x >> 63)
    top = addr >> 47
    return top == 0 or top == (1 << 17) - 1


def xen_c447b730(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    """Xen (c447b7308b13) decode_vmx_inst(): see the module docstring."""
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
    size = 2 << (info >> 7 & 7)  # 1 << (address-size field + 1)
    disp = exit.exit_qualification & MASK64
    bval = state.regs[base] if base is not None else 0
    ival = state.regs[index] if index is not None else 0
    offset = (bval + ival * scale + disp) & MASK64
    mode64 = mode == "64-bit"
    s = state.segment(seg)
    adds_base = not mode64 or seg in ("fs", "gs")
    sbase = s.base if adds_base else 0
    linear = (sbase + offset) & MASK64
    kw = dict(effective_address=offset, linear_address=linear, segment=seg, displacement=disp, segment_base=sbase)
    if steps is not None:
        steps.append(Step("displacement", "exit-qualification",
                          f"exit qualification {disp:#x} used as is, all 64 bits (Xen neither masks nor "
                          "sign-extends it to the address size)", disp))
        terms = []
        if base is not None:
            terms.append(f"{REG64[base]} {bval:#x}")
        if index is not None:
            terms.append(f"{REG64[index]} {ival:#x} x {scale}")
        terms.append(f"displacement {disp:#x}")
        steps.append(Step("effective-address", "effective-address",
                          f"offset = {' + '.join(terms)} = {offset:#x} (64-bit registers, mod 2^64, no "
                          "address-size mask)", offset))
        steps.append(Step("segment", "segment", f"segment {seg} (bits 17:15 = {seg_no})", seg))
        why = ("base added" if adds_base else f"the {seg.upper()} base is not added in 64-bit mode")
        steps.append(Step("linear-address", "segment-base-64" if mode64 else "linear-32",
                          f"linear = {seg} base {sbase:#x} + offset {offset:#x} = {linear:#x} ({why}; "
                          "no 32-bit wrap)", linear))
        steps.append(Step("access-length", "limit",
                          f"Xen's access length: 2 << address-size field ({info >> 7 & 7}) = {size} bytes "
                          f"(the instruction accesses {access.size})", size))
    last = offset + size - 1
    if last > MASK64:
        return done(Outcome(FAULT, "GP", 0, "limit",
                            f"Xen: offset {offset:#x} + {size} - 1 wraps past 2^64: #GP(0)"), **kw)
    if mode64:
        probe = linear if linear >> 63 else (linear + size - 1) & MASK64
        if not _canonical48(probe):
            return done(Outcome(FAULT, "GP", 0, "canonical",
                                f"Xen: {probe:#x} is not canonical (48-bit check): #GP(0)"), **kw)
        if steps is not None:
            steps.append(Step("canonical", "canonical", f"{probe:#x} is canonical (48-bit): no fault"))
        return done(Outcome(OK, rule="canonical"), **kw)
    if last > s.limit:
        return done(Outcome(FAULT, "GP", 0, "limit",
                            f"Xen: last byte {offset:#x} + {size} - 1 = {last:#x} > {seg} limit {s.limit:#x}: #GP(0)"), **kw)
    if steps is not None:
        steps.append(Step("limit", "limit", f"last byte {offset:#x} + {size} - 1 = {last:#x} <= {seg} limit "
                          f"{s.limit:#x}: no fault (no usability, type or expand-down check)"))
    return done(Outcome(OK, rule="limit"), **kw)


xen_c447b730.mnemonics = MNEMONICS  # type: ignore[attr-defined]
