"""KVM's get_vmx_mem_address(), 2011 to today, as pure models (one per fix, in mainline order).

One parametrised implementation, `kvm_model(fixes, ...)`; each named model is the previous one
plus exactly one fix (`Fixes` holds one flag per commit). The behaviour of every row was written
from our notes (../shared/notes/kvm-history.md) and checked against the published patches; this
is our own code, not the kernel's.

Scope: what the VMX-instruction handlers do before they touch memory — the CPL check of
nested_vmx_check_permission(), the register-operand test, and get_vmx_mem_address() itself.
Not modelled, on purpose:
  * the mode #UD checks (real, virtual-8086, compatibility mode). The processor raises them
    before any VM exit; the handlers' own copies were removed by 70f3aac964ae (2017) as
    superfluous. All models therefore compute an address in those modes, where the SDM model
    says #UD; the differential engine classes such cases "unreachable from hardware".
  * 48-bit canonical checks before fd8cb433734e ("KVM: MMU: Expose the LA57 feature to VM.",
    2017), which made the width 48 or 57 by CR4.LA57: every model honours CR4.LA57, because a
    guest could not set CR4.LA57 under a KVM that lacked it (an unreachable input for them).
  * instructions a model's KVM did not read through get_vmx_mem_address(): descriptor-table exits
    go through the instruction emulator; XSAVES/XRSTORS exits are not emulated. Each model's
    `mnemonics` attribute lists what its KVM handled (COVERAGE below, each entry with its commit);
    INVPCID (handle_invpcid(), not a VMX instruction) makes no CPL check of its own: the processor
    makes it before the exit.

KVM's mode tests, kept as KVM has them: `is_long_mode()` is EFER.LMA, so compatibility mode
takes the 64-bit path (a real difference from the SDM, but VMX instructions #UD there before
any exit: 548bd27428b9 switched only the SGX handler to is_64_bit_mode()). `is_protmode()` is
CR0.PE, so virtual-8086 mode counts as protected.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from vmxaddr.apx import operand_bits_extended
from vmxaddr.exitinfo import _OPERAND_BITS, ExitInfo, operand_bits
from vmxaddr.isa import REG64, SEGMENTS, SPECS, Layout
from vmxaddr.models.base import FAULT, OK, Access, InvalidExitInfo, Outcome, Result, Step, outcome
from vmxaddr.models.sdm import _MASKS, _SIGN, lam_untag
from vmxaddr.state import CpuState, Segment

MASK64 = (1 << 64) - 1
MASK32 = 0xFFFFFFFF
MNEMONICS = ("vmptrld", "vmclear", "vmxon", "vmptrst", "vmread", "vmwrite", "invept", "invvpid")  # VMX instructions
HANDLED = (*MNEMONICS, "invpcid")  # what today's KVM reads through get_vmx_mem_address()
# Which instructions each era's KVM read through get_vmx_mem_address(), by the commit that added
# the handler's call:
#   VMCLEAR, VMPTRLD, VMPTRST, VMREAD, VMWRITE: 064aea774768 (2011, the first nVMX emulation);
#   INVEPT: bfd0a56b9000 "nEPT: Nested INVEPT" (2013);
#   VMXON: 3573e22cfeca "KVM: nVMX: additional checks on vmxon region" (2014), the first read of
#     its operand;
#   INVVPID: its emulation (2015) came after f9eb4af67c9d: the handler passes the write flag that
#     f9eb4af6 added to get_vmx_mem_address() (commit id not verified here);
#   INVPCID: eb4b248e152d "kvm: vmx: Support INVPCID in shadow paging mode" (2018), handle_invpcid().
# A model covers what its KVM had at its commit; no model falls between 2015 and 2019.
COVERAGE: dict[str, tuple[str, ...]] = {
    "kvm-064aea77": ("vmptrld", "vmclear", "vmptrst", "vmread", "vmwrite"),
    "kvm-f9eb4af6": ("vmptrld", "vmclear", "vmxon", "vmptrst", "vmread", "vmwrite", "invept"),
}
# VMX instructions: nested_vmx_check_permission() makes the CPL check after the exit.
_PERMISSION_CHECKED = frozenset(MNEMONICS)


class Fixes(NamedTuple):
    """One flag per commit; a model is the set of fixes it has. (A tuple, so that the model can
    unpack all flags into locals in one step.)"""

    checks: bool = False  # f9eb4af67c9d: #GP/#SS checks (canonical; type, usability, limit)
    sign_extend: bool = False  # 946c522b603f: displacement sign-extended from the address size
    mask_ea: bool = False  # 8570f9e881e3: address-size mask on the offset, linear mod 2^32 outside long mode
    flat_skip: bool = False  # 34333cc6c2cb: no limit check on flat segments
    limit_inclusive: bool = False  # c1a9acbc5295: last byte = off + len - 1 (was off + len)
    access_length: bool = False  # fdb28619a8f0: the real access length (was 8)
    fsgs_base_only: bool = False  # 6694e4801282: in long mode only FS/GS add a base
    truncate_regs: bool = False  # 82277eeed65e: base/index read as 32 bits outside 64-bit mode
    lam_untag: bool = False  # 703d794cb8cb: LAM metadata removed before the canonical check (reachable)
    apx_v2: bool = False  # posted, not merged: "KVM: x86: Enable APX for guests" v2 (2026-01) reads
    #   the extended instruction-information field (VMCS 0x2406) whenever the host enumerates APX


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """How a model checks a limit, for the differential engine's classifier (models without this
    attribute are assumed to follow the SDM)."""

    fixed_length: int | None  # the length used instead of the access's, or None
    off_by_one: bool  # faults when off + len > limit (one byte too early)
    flat_skip: bool  # skips the check on flat segments
    expand_down: bool  # knows expand-down segments


_new = tuple.__new__  # a Result from a ready tuple: no Python-level __new__ frame


def _h(v: int) -> str:
    return f"{v:#x}"


# shared with the other models (models.base.outcome): cheaper comparisons in vmxaddr.diff.agree
_OK_CANONICAL, _OK_FLAT, _OK_LIMIT = (outcome(False, OK, None, None, rule, str) for rule in ("canonical", "flat", "limit"))


def kvm_model(fixes: Fixes, exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    """KVM's get_vmx_mem_address() as of the version `fixes` describes (each flag a commit that
    changed it), on one exit."""
    (checks, sign_extend, mask_ea, flat_skip, limit_inclusive, access_length, fsgs_base_only, truncate_regs,
     lam, apx_v2) = fixes
    steps: list[Step] | None = [] if explain else None
    info = exit.instruction_info
    mode = state.mode

    # nested_vmx_check_permission(): CPL > 0 -> #GP(0) (all versions; vmx_get_cpl() is 0 in
    # real mode and 3 in virtual-8086 mode). handle_invpcid() has no such call.
    cpl = 3 if mode == "virtual-8086" else 0 if mode == "real" else state.cpl
    if cpl > 0 and exit.instruction in _PERMISSION_CHECKED:
        return Result(outcome(explain, FAULT, "GP", 0, "cpl", lambda: f"CPL {cpl} > 0: #GP(0)"))
    if steps is not None:
        steps.append(Step("cpl", "cpl", f"CPL {cpl}: the privilege check passes", cpl))
    # v2 04-08/16: vmx_get_insn_info() returns the extended field when the host has APX (a
    # processor that writes it), and insn_attr() reads each field at its extended position.
    ext = exit.extended_info if apx_v2 else None
    regs = state.regs if ext is None else state.regs + state.egprs
    if (info & (1 << 10)) if ext is None else (ext & 0x10):
        # VMREAD/VMWRITE test bit 10 themselves and never call get_vmx_mem_address() for a register;
        # get_vmx_mem_address() itself answers a register operand with #UD.
        if SPECS[exit.instruction].layout is Layout.VMREAD:
            if steps is not None:
                steps.append(Step("register-operand", "register-operand", "bit 10 = 1: register operand, no memory address"))
            return Result(outcome(explain, OK, None, None, "register-operand", lambda: "register operand: no memory access"),
                          steps=tuple(steps or ()))
        return Result(outcome(explain, FAULT, "UD", None, "register-operand",
                               lambda: "bit 10 set for a memory-only instruction: #UD"), steps=tuple(steps or ()))

    if ext is None:
        scaling, asz_code, seg_no, index, base = _OPERAND_BITS.get(info) or operand_bits(info)
    else:
        scaling, asz_code, seg_no, index, base = operand_bits_extended(ext)
    if seg_no > 5:
        raise InvalidExitInfo(f"segment field (bits 17:15) is {seg_no}; the SDM uses only 0…5")
    seg = SEGMENTS[seg_no]
    long_mode = mode == "64-bit" or mode == "compatibility"  # is_long_mode(): EFER.LMA
    mode64 = mode == "64-bit"  # is_64_bit_mode()

    q = exit.exit_qualification
    disp = q
    if sign_extend and asz_code < 2:  # from bit 15 or bit 31
        low = q & _MASKS[asz_code]
        disp = (low - ((low & _SIGN[asz_code]) << 1)) & MASK64
    reg_mask = MASK32 if truncate_regs and not mode64 else MASK64
    bval = regs[base] & reg_mask if base is not None else 0
    ival = regs[index] & reg_mask if index is not None else 0
    off = (disp + bval + (ival << scaling)) & MASK64
    if mask_ea and asz_code == 1:
        off &= MASK32
    elif mask_ea and asz_code == 0:
        off &= 0xFFFF
    if steps is not None:
        how = (f"sign-extended from bit {15 if asz_code == 0 else 31}" if sign_extend and asz_code < 2
               else "used as is, all 64 bits")
        steps.append(Step("displacement", "exit-qualification", f"exit qualification {q:#x} {how}: displacement = {disp:#x}", disp))
        terms = [f"{REG64[base]} {bval:#x}"] if base is not None else []
        if index is not None:
            terms.append(f"{REG64[index]} {ival:#x} << {scaling}")
        terms.append(f"displacement {disp:#x}")
        trunc = " (registers read as 32 bits)" if reg_mask == MASK32 else ""
        masked = f", masked to {16 << asz_code} bits" if mask_ea and asz_code < 2 else " in 64-bit arithmetic"
        steps.append(Step("effective-address", "effective-address",
                          f"off = {' + '.join(terms)}{trunc} = {off:#x}{masked}", off))

    s = getattr(state, seg)
    vector = "SS" if seg == "ss" else "GP"
    sbase = 0 if long_mode and fsgs_base_only and seg != "fs" and seg != "gs" else s.base
    linear = (sbase + off) & MASK64
    if mask_ea:
        if not long_mode:
            linear &= MASK32  # outside long mode always mod 2^32
    elif asz_code == 1:
        linear &= MASK32  # before 8570f9e8: the 32-bit mask came after the segment base
    if steps is not None:
        steps.append(Step("segment", "segment", f"segment {seg} (bits 17:15 = {seg_no})", seg))
        rule = "segment-base-64" if long_mode else "linear-32"
        steps.append(Step("linear-address", rule, f"linear = {seg} base {sbase:#x} + off {off:#x} = {linear:#x}", linear))
    verdict = _checks(fixes, explain, steps, state, access, s, seg, vector, long_mode, mode64, off, linear)
    if lam and mode64 and verdict.rule == "canonical" and (state.lam_sup or state.lam_u48 or state.lam_u57):
        linear = lam_untag(linear, state)[0]  # KVM goes on with the untagged address
    return _new(Result, (verdict, off, linear, seg, disp, sbase, tuple(steps) if steps else ()))


def _checks(fixes: Fixes, explain: bool, steps: list[Step] | None, state: CpuState, access: Access, s: Segment,
            seg: str, vector: str, long_mode: bool, mode64: bool, off: int, linear: int) -> Outcome:
    if not fixes.checks:
        return outcome(explain, OK, None, None, "no-checks", lambda: "no fault checks (064aea77: not yet written)")
    if long_mode:
        checked = linear
        if fixes.lam_untag and mode64 and (state.lam_sup or state.lam_u48 or state.lam_u57):
            checked, bit = lam_untag(linear, state)
            if bit is not None and steps is not None:
                steps.append(Step("lam", "canonical", f"LAM: untagged {linear:#x} -> {checked:#x}", checked))
        bits = 57 if state.la57 else 48
        top = checked >> (bits - 1)
        if top != 0 and top != (1 << (65 - bits)) - 1:
            return outcome(explain, FAULT, vector, 0, "canonical",
                            lambda: f"{checked:#x} is not canonical ({bits}-bit): #{vector}(0)")
        if steps is not None:
            steps.append(Step("canonical", "canonical", f"{checked:#x} is canonical ({bits}-bit): the only check in long mode"))
        return _OK_CANONICAL

    # Up to 8570f9e8's predecessor the checks below were under is_protmode() (CR0.PE); later
    # sources have a plain else (checks in real mode too). Which commit moved them is not
    # verified (8570f9e8's posted diff has no room for it); the models put the move at 8570f9e8.
    # Only INVPCID can exit in real mode.
    if state.mode == "real" and not fixes.mask_ea:
        return outcome(explain, OK, None, None, "no-checks", lambda: "real mode: no checks")
    t = s.type
    if access.write and (t & 0xA == 0 or t & 8):
        return outcome(explain, FAULT, "GP", 0, "type",
                        lambda: f"write through {seg} of type {t:#x} (read-only data or code): #GP(0)")
    if not access.write and t & 0xA == 8:
        return outcome(explain, FAULT, "GP", 0, "type", lambda: f"read through {seg} of type {t:#x} (execute-only code): #GP(0)")
    if steps is not None:
        steps.append(Step("type", "type", f"{seg} type {t:#x} allows a {access.kind}"))
    if s.unusable:
        return outcome(explain, FAULT, vector, 0, "unusable", lambda: f"{seg} is unusable: #{vector}(0)")
    if fixes.flat_skip and s.base == 0 and s.limit == MASK32 and (t & 8 or not t & 4):
        if steps is not None:
            steps.append(Step("limit", "flat", f"{seg} is flat (base 0, limit 0xffffffff, code or expand-up): no limit check"))
        return _OK_FLAT
    length = access.size if fixes.access_length else 8
    # unsigned 64-bit arithmetic: an offset near 2^64 wraps to a small "last byte"
    last = (off + length - 1 if fixes.limit_inclusive else off + length) & MASK64

    if last > s.limit:
        return outcome(explain, FAULT, vector, 0, "limit", lambda: f"{_last_byte(off, length, fixes)} = {last:#x} > "
                       f"{seg} limit {s.limit:#x}: #{vector}(0)")
    if steps is not None:
        steps.append(Step("limit", "limit", f"{_last_byte(off, length, fixes)} = {last:#x} <= {seg} limit {s.limit:#x}: "
                          "no fault", last))
    return _OK_LIMIT


def _last_byte(off: int, length: int, fixes: Fixes) -> str:
    return f"off {off:#x} + {length} - 1" if fixes.limit_inclusive else f"off {off:#x} + {length}"


# -- the history, one fix per row ------------------------------------------------------------------

_HISTORY: list[tuple[str, str, str, str]] = [
    # (name, field of Fixes switched on, one-line summary, docstring)
    ("kvm-064aea77", "", "KVM 2011 (064aea774768): first decoding, no fault checks at all",
     "KVM as of 064aea774768 'KVM: nVMX: Decoding memory operands of VMX instructions' (2011).\n\n"
     "address = segment base + base + (index << scaling) + exit qualification in 64-bit arithmetic,\n"
     "masked to 32 bits only for a 32-bit address size; no canonical, type, usability or limit check.\n"
     "Ended by f9eb4af67c9d (2015). Gets wrong: every input that must fault (class 'no canonical/type/limit checks')."),
    ("kvm-f9eb4af6", "checks", "KVM 2015 (f9eb4af67c9d): #GP/#SS checks; zero-extended displacement, off + 8 > limit",
     "KVM as of f9eb4af67c9d 'KVM: nVMX: VMX instructions: add checks for #GP/#SS exceptions' (2015).\n\n"
     "Adds the canonical check (long mode) and type, usability and limit checks (protected mode), the\n"
     "limit check as off + 8 > limit. Ended by 946c522b603f (2019). Gets wrong: a negative displacement\n"
     "with a 32- or 16-bit address size (the exit qualification is used unextended: EBP 0x1000 with\n"
     "disp -0x28 gives off 0x100000fd8) — class 'displacement not sign-extended'."),
    ("kvm-946c522b", "sign_extend", "KVM 5.1 (946c522b603f): displacement sign-extended from the address size",
     "KVM as of 946c522b603f 'KVM: nVMX: Sign extend displacements of VMX instr's mem operands' (2019).\n\n"
     "Ended by 8570f9e881e3. Gets wrong: offsets that leave the address size (register bits above it,\n"
     "or a wrap) — the 32-bit mask is applied to base + offset, not to the offset, and 16-bit address\n"
     "sizes are never masked — class 'address-size mask applied to the linear address'."),
    ("kvm-8570f9e8", "mask_ea", "KVM 5.1 (8570f9e881e3): address-size mask on the effective address",
     "KVM as of 8570f9e881e3 'KVM: nVMX: Apply addr size mask to effective address for VMX\n"
     "instructions' (2019). The offset is masked to the address size before the segment base; outside\n"
     "long mode the linear address is mod 2^32. The models also run the type, usability and limit\n"
     "checks in real mode from here (later sources have a plain else where is_protmode() was; the\n"
     "commit that moved them is not verified, and 8570f9e8's posted diff has no room for it).\n"
     "Ended by 34333cc6c2cb. Gets wrong: an access at the top of a flat 4-GiB segment, which VMX\n"
     "processors do not fault — class 'limit check on a flat segment'."),
    ("kvm-34333cc6", "flat_skip", "KVM 5.1 (34333cc6c2cb): no limit check on flat segments",
     "KVM as of 34333cc6c2cb 'KVM: nVMX: Ignore limit checks on VMX instructions using flat segments'\n"
     "(2019). Ended by c1a9acbc5295. Gets wrong: an operand whose last byte is exactly at the limit\n"
     "(off + 8 > limit) — class 'limit check off by one'."),
    ("kvm-c1a9acbc", "limit_inclusive", "KVM 5.3 (c1a9acbc5295): limit check off + 8 - 1 > limit",
     "KVM as of c1a9acbc5295 'kvm: vmx: fix limit checking in get_vmx_mem_address()' (2019).\n\n"
     "Ended by fdb28619a8f0. Gets wrong: a 4-byte VMREAD/VMWRITE operand within 8 bytes of the limit\n"
     "(checked as if 8 bytes long) — class 'access length fixed at 8'."),
    ("kvm-fdb28619", "access_length", "KVM 5.3 (fdb28619a8f0): the real access length in the limit check",
     "KVM as of fdb28619a8f0 'kvm: vmx: segment limit check: use access length' (2019).\n\n"
     "Ended by 6694e4801282. Gets wrong: a 64-bit-mode operand through DS/ES/SS/CS with a non-zero\n"
     "base in the VMCS (the base counts as 0 there) — class 'segment base added in 64-bit mode'."),
    ("kvm-6694e480", "fsgs_base_only", "KVM 5.3 (6694e4801282): in long mode only FS/GS add a base",
     "KVM as of 6694e4801282 'KVM: nVMX: Ignore segment base for VMX memory operand when segment not\n"
     "FS or GS' (2019). Ended by 82277eeed65e, which has no observable effect here: since 8570f9e8\n"
     "the offset is masked to the 32- or 16-bit address size, which already drops bits 63:32 of the\n"
     "base and index registers outside 64-bit mode."),
    ("kvm-82277eee", "truncate_regs", "KVM 5.13 (82277eeed65e): base/index read as 32 bits outside 64-bit mode",
     "KVM as of 82277eeed65e 'KVM: nVMX: Truncate base/index GPR value on address calc in !64-bit'\n"
     "(2021). Ended by 703d794cb8cb. Gets wrong: a 64-bit-mode operand carrying LAM metadata\n"
     "(CR4.LAM_SUP or CR3.LAM_U48/U57), faulted as non-canonical — class 'LAM metadata not removed\n"
     "before the canonical check'."),
    ("kvm-703d794c", "lam_untag", "KVM 6.8 (703d794cb8cb): LAM metadata removed before the canonical check",
     "KVM as of 703d794cb8cb 'KVM: x86: Advertise and enable LAM (user and supervisor)' (v6.8), the\n"
     "commit that made the behaviour reachable: b39bd520a60c ('Untag addresses for LAM emulation\n"
     "where applicable') put the untag call into get_vmx_mem_address() while the helper still\n"
     "returned its argument; 93d1c9f498a7 (supervisor pointers) and 3098e6eca88e (user pointers)\n"
     "made it untag; from 703d794cb8cb a guest could enable LAM. All four in v6.8.\n\n"
     "Still today's behaviour for the legacy instruction-information field (see kvm-current). What\n"
     "it still does differently from the SDM is listed in docs/kvm-divergences.md."),
]

REGISTERED: dict[str, tuple[Any, str]] = {}


def _make(name: str, fixes: Fixes, doc: str) -> Any:
    # partial: one Python call per case, not two (the fuzzer's hot path)
    model: Any = partial(kvm_model, fixes)
    model.__name__ = model.__qualname__ = name.replace("-", "_")
    model.__doc__ = doc
    model.fixes = fixes  # type: ignore[attr-defined]
    model.mnemonics = COVERAGE.get(name, HANDLED)  # type: ignore[attr-defined]
    model.limit_check = LimitCheck(  # type: ignore[attr-defined]
        None if fixes.access_length else 8, not fixes.limit_inclusive, fixes.flat_skip, False)
    return model


_fixes = Fixes()
for _name, _flag, _summary, _doc in _HISTORY:
    if _flag:
        _fixes = _fixes._replace(**{_flag: True})
    REGISTERED[_name] = (_make(_name, _fixes, _doc), _summary)

REGISTERED["kvm-current"] = (
    _make("kvm-current", _fixes,
          "KVM today (mainline): kvm-703d794c's behaviour for the legacy 32-bit instruction-information field.\n\n"
          "The 2025 APX series (RFC, November 2025: an extended 64-bit instruction-information field so\n"
          "that R16-R31 can be named) had not landed in mainline in the material we could check; as\n"
          "posted, it reads the legacy field as before when the extended field is not in use, so the\n"
          "address computation for R0-R15 operands does not change. Its divergences from the SDM are\n"
          "documented in docs/kvm-divergences.md."),
    "KVM today: = kvm-703d794c for the legacy field (the 2025 APX series changes no legacy reading)")

# Posted, not in mainline: named after the posting (20260112235408.168200-1-chang.seok.bae@intel.com).
REGISTERED["kvm-apx-v2"] = (
    _make("kvm-apx-v2", _fixes._replace(apx_v2=True),
          "KVM as posted in 'KVM: x86: Enable APX for guests' v2 (Chang S. Bae, 2026-01-12), patches 04-08/16:\n"
          "kvm-current's get_vmx_mem_address() reading the extended 64-bit instruction-information field\n"
          "(VMCS 0x2406; layout `struct ext_insn_info`) whenever the host enumerates APX, so base, index and\n"
          "the VMREAD/VMWRITE registers may be R16-R31. Differs observably from every legacy model when an\n"
          "operand names R16-R31: they read the 4-bit fields of the 32-bit field (the low bits of the number),\n"
          "i.e. a different register. Nested: the field is passed to L1 only if L1's CPUID enumerates APX."),
    "KVM APX series v2 (posted 2026-01, not merged): kvm-current reading the extended field (R16-R31)")

HISTORY: tuple[str, ...] = tuple(n for n, *_ in _HISTORY)  # oldest first, each = previous + one fix
FIX_OF: dict[str, str] = {n: f for n, f, *_ in _HISTORY if f}  # model -> the Fixes field it adds

kvm_064aea77 = REGISTERED["kvm-064aea77"][0]
kvm_f9eb4af6 = REGISTERED["kvm-f9eb4af6"][0]
kvm_946c522b = REGISTERED["kvm-946c522b"][0]
kvm_8570f9e8 = REGISTERED["kvm-8570f9e8"][0]
kvm_34333cc6 = REGISTERED["kvm-34333cc6"][0]
kvm_c1a9acbc = REGISTERED["kvm-c1a9acbc"][0]
kvm_fdb28619 = REGISTERED["kvm-fdb28619"][0]
kvm_6694e480 = REGISTERED["kvm-6694e480"][0]
kvm_82277eee = REGISTERED["kvm-82277eee"][0]
kvm_703d794c = REGISTERED["kvm-703d794c"][0]
kvm_current = REGISTERED["kvm-current"][0]
kvm_apx_v2 = REGISTERED["kvm-apx-v2"][0]

# Old names, kept working (vmxaddr.models registers them as aliases, listed by `vmxaddr models`).
ALIASES: dict[str, tuple[str, str]] = {
    "kvm-b39bd520": ("kvm-703d794c", "renamed: at b39bd520a60c the untag helper still returned its argument; "
                     "the untagging came with 93d1c9f498a7 and 3098e6eca88e, and a guest could enable LAM "
                     "only from 703d794cb8cb (all v6.8)"),
}
