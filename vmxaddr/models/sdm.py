"""The reference model: the SDM's rules, applied to what the hypervisor sees.

Order of the computation (each step names its rule in vmxaddr.rules):
  mode (#UD, or INVPCID's #GP(0) in virtual-8086 mode) -> CPL (#GP) -> register operand? ->
  displacement from the exit qualification -> effective address in the address size -> segment ->
  linear address (64-bit mode: FS/GS base only, canonical check; otherwise base + EA mod 2^32,
  then usability, type and limit checks) -> alignment (XSAVES/XRSTORS: 64 bytes).
The derivation of every fault, instruction by instruction, is docs/ud-and-cpl.md.
"""

from __future__ import annotations

from vmxaddr.apx import operand_bits_extended
from vmxaddr.exitinfo import _OPERAND_BITS, ExitInfo, operand_bits
from vmxaddr.isa import REG16, REG32, REG64, SEGMENTS, SPECS, Layout
from vmxaddr.models.base import FAULT, IMPL, OK, Access, InvalidExitInfo, Outcome, Result, Step, outcome
from vmxaddr.state import MODES, CpuState

MASK64 = (1 << 64) - 1
MASK32 = 0xFFFFFFFF
_NAMES = {16: REG16, 32: REG32, 64: REG64}
_MASKS = (0xFFFF, MASK32, MASK64, 0, 0, 0, 0, 0)  # by address-size code (3…7 are rejected)
_SIGN = (0x8000, 0x80000000, 1 << 63, 0, 0, 0, 0, 0)
# 64-bit mode: bits that must all equal bit 63 for a canonical address (paging width 48 or 57).
_NONCANONICAL = {False: MASK64 ^ ((1 << 47) - 1), True: MASK64 ^ ((1 << 56) - 1)}


def _h(v: int) -> str:
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


def fields_of(info: int, exit_qualification: int) -> tuple[int, str, int, int | None, int | None, int]:
    """(address size, segment, displacement, base reg, index reg, scale) from the exit info,
    reading only the bits the SDM defines. Raises InvalidExitInfo for unused values."""
    scaling, code, seg, index, base = operand_bits(info)
    if code > 2:
        raise InvalidExitInfo(f"address-size field (bits 9:7) is {code}; the SDM uses only 0, 1, 2")
    if seg > 5:
        raise InvalidExitInfo(f"segment field (bits 17:15) is {seg}; the SDM uses only 0…5")
    q = exit_qualification & _MASKS[code]  # bits beyond the address size are undefined
    return 16 << code, SEGMENTS[seg], q - ((q & _SIGN[code]) << 1), base, index, 1 << scaling


def canonical(addr: int, bits: int) -> bool:
    """Is `addr` canonical for `bits`-bit (48 or 57) linear addresses: bits 63:bits-1 all equal?"""
    top = addr & _NONCANONICAL[bits == 57]
    return top == 0 or top == _NONCANONICAL[bits == 57]


def lam_untag(addr: int, state: CpuState) -> tuple[int, int | None]:
    """Linear-address masking: (untagged address, the bit whose value the metadata bits take),
    or (addr, None) when LAM does not apply. Supervisor pointers (bit 63 = 1) follow CR4.LAM_SUP,
    user pointers CR3.LAM_U57/LAM_U48 (Intel ISE, 'Linear Address Masking')."""
    if addr >> 63:
        if not state.lam_sup:
            return addr, None
        bit = 56 if state.la57 else 47
    elif state.lam_u57:
        bit = 56
    elif state.lam_u48:
        bit = 47
    else:
        return addr, None
    low = addr & ((1 << (bit + 1)) - 1)
    ext = low - (1 << (bit + 1)) if low >> bit else low
    return (ext & ~(1 << 63) & MASK64) | (addr & (1 << 63)), bit


_new = tuple.__new__  # a Result from a ready tuple: no Python-level __new__ frame
OK_LIMIT = outcome(False, OK, None, None, "limit", str)  # shared with the other models (cheaper comparisons)
OK_CANONICAL = outcome(False, OK, None, None, "canonical", str)
OK_REGISTER = Outcome(OK, rule="register-operand", reason="register operand: no memory access")
_HAS_MEMREG = frozenset(m for m, sp in SPECS.items() if sp.layout in (Layout.VMREAD, Layout.LDT))
_NO_MEMORY = frozenset(m for m, sp in SPECS.items() if sp.memory == "none")
# INS/OUTS: the implicit string operand (vmxaddr.string_io), rDI for INS, rSI for OUTS.
_STRING_BASE = {"ins": 7, "outs": 6}
# VMX instructions and the privileged others: CPL > 0 is #GP(0).
_CPL_CHECKED = frozenset(m for m, sp in SPECS.items() if sp.vmx or sp.privileged)
# Per mode, the instructions not recognized there and the fault they raise (each page's mode
# exceptions): VMX instructions #UD outside protected and 64-bit mode, SLDT & co. #UD in real and
# virtual-8086 mode, INVPCID #GP(0) in virtual-8086 mode. (XSAVES/XRSTORS are recognized in
# virtual-8086 mode: "same exceptions as in protected mode", so the CPL check gives #GP(0).)
_MODE_FAULT: dict[str, dict[str, str]] = {
    mode: {m: sp.v8086_fault if mode == "virtual-8086" else "UD" for m, sp in SPECS.items()
           if (sp.vmx and mode in ("real", "virtual-8086", "compatibility"))
           or (mode == "real" and not sp.real_mode) or (mode == "virtual-8086" and not sp.v8086)}
    for mode in MODES}
# Instructions whose operand must be aligned (linear address mod align = 0), after every segment check.
_ALIGN: dict[str, int] = {m: sp.align for m, sp in SPECS.items() if sp.align > 1}


def _done(steps: list[Step] | None, outcome: Outcome, ea: int | None = None, linear: int | None = None,
          seg: str | None = None, disp: int | None = None, sbase: int | None = None) -> Result:
    return _new(Result, (outcome, ea, linear, seg, disp, sbase, tuple(steps) if steps else ()))


def sdm(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    """The SDM's answer. See the module docstring for the order of the rules."""
    steps: list[Step] | None = [] if explain else None
    ins = exit.instruction
    mode = state.mode
    info = exit.instruction_info

    # Mode: #UD, and the #GP(0) of a privileged instruction not recognized in virtual-8086 mode,
    # come before any VM exit (Vol. 3C "Relative Priority of Faults and VM Exits"); a hypervisor
    # sees them only from a buggy processor model.
    not_here = _MODE_FAULT[mode].get(ins)
    if not_here is not None:
        if not_here == "UD":
            return _done(steps, outcome(explain, FAULT, "UD", None, "mode", lambda: f"{ins.upper()} raises #UD in {mode} mode"))
        return _done(steps, outcome(explain, FAULT, not_here, 0, "mode",
                                    lambda: f"{ins.upper()} is not recognized in {mode} mode: #{not_here}(0)"))
    if steps is not None:
        steps.append(Step("mode", "mode", f"{mode} mode: {ins.upper()} may execute here", mode))
    if ins in _CPL_CHECKED:
        # Virtual-8086 code runs at CPL 3 and real-mode code at CPL 0, whatever the state says.
        cpl = 3 if mode == "virtual-8086" else 0 if mode == "real" else state.cpl
        if cpl > 0:
            return _done(steps, outcome(explain, FAULT, "GP", 0, "cpl", lambda: f"CPL {cpl} > 0: {ins.upper()} raises #GP(0)"))
        if steps is not None:
            steps.append(Step("cpl", "cpl", f"CPL {cpl}: the privilege check passes", cpl))
    ext = exit.extended_info  # APX: the extended field names R16-R31 (vmxaddr.apx)
    if ins in _NO_MEMORY or (ins in _HAS_MEMREG and (info & 0x400 if ext is None else ext & 0x10)):
        if steps is not None:
            steps.append(Step("register-operand", "register-operand",
                              "bit 10 = 1 (or a register-only layout): the operand is a register, no memory address"))
        return _done(steps, OK_REGISTER)

    # fields_of(), with the bit fields read once per value: this is the fuzzer's hot path
    regs = state.regs
    string_base = _STRING_BASE.get(ins)
    if ext is not None:
        scaling, code, seg_no, index, base = operand_bits_extended(ext)
        regs = regs + state.egprs
        if code > 2 or seg_no > 5:
            raise InvalidExitInfo(f"extended field: address size (bits 3:2) {code} or segment (bits 9:7) {seg_no} "
                                  "is a value the layout does not use")
    else:
        scaling, code, seg_no, index, base = _OPERAND_BITS.get(info) or operand_bits(info)
        if code > 2 or (seg_no > 5 and ins != "ins"):
            fields_of(info, exit.exit_qualification)  # raises InvalidExitInfo with the reason
    if string_base is not None:
        # INS/OUTS: no index, no displacement; the base is rDI (INS, through ES whatever bits
        # 17:15 say: they are undefined for INS) or rSI (OUTS, through the reported segment).
        index, base, scaling = None, string_base, 0
        if ins == "ins":
            seg_no = 0
    seg = SEGMENTS[seg_no]
    mask = _MASKS[code]
    if string_base is None:
        q = exit.exit_qualification & mask  # bits beyond the address size are undefined
        disp = q - ((q & _SIGN[code]) << 1)  # sign-extended from the address size's top bit
    else:
        disp = 0  # the exit qualification is the I/O qualification, not a displacement
    bval = regs[base] & mask if base is not None else 0
    ival = regs[index] & mask if index is not None else 0
    ea = (bval + (ival << scaling) + disp) & mask
    disp &= MASK64
    if steps is not None and string_base is not None:
        asz = 16 << code
        q = exit.exit_qualification
        names = _NAMES[asz]
        what = ("INS writes its element to ES:[rDI] (ES cannot be overridden; bits 17:15 are undefined for INS)"
                if ins == "ins" else f"OUTS reads its element from {seg.upper()}:[rSI] (bits 17:15 = {seg_no})")
        steps.append(Step("string-operand", "string-operand",
                          f"exit qualification {q:#x}: I/O exit, {({0: 1, 1: 2, 3: 4}.get(q & 7, '?'))}-byte "
                          f"{'IN' if q >> 3 & 1 else 'OUT'}, string, {'REP, ' if q >> 5 & 1 else ''}port {q >> 16 & 0xFFFF:#x}; "
                          f"{what}", None))
        steps.append(Step("effective-address", "effective-address",
                          f"address size {asz} bits (bits 9:7 = {code}): EA = {names[string_base]} = {ea:#x} (the first "
                          "element: RFLAGS.DF only moves the next ones)", ea))
    elif steps is not None:
        if ext is not None:
            steps.append(Step("extended-info", "apx-extended",
                              f"extended instruction information {ext:#x} (VMCS 0x2406): 5-bit register numbers "
                              f"(base {'none' if base is None else REG64[base]}, index "
                              f"{'none' if index is None else REG64[index]}); the 32-bit field cannot name R16-R31", ext))
        asz, scale, sdisp = 16 << code, 1 << scaling, disp - (1 << 64) if disp >> 63 else disp
        q = exit.exit_qualification
        if asz == 64:
            text = f"exit qualification {q:#x}: the address size is 64 bits, so all of it is the displacement: {_h(sdisp)}"
        else:
            text = (f"exit qualification {q:#x}: address size {asz} bits, so bits {asz - 1}:0 = {q & mask:#x} count "
                    f"(higher bits are undefined); sign-extended from bit {asz - 1}: displacement = {_h(sdisp)}")
        if base is None and index is None and asz != 16:
            text += " (no base, no index: for a RIP-relative operand this already includes the next RIP)"
        steps.append(Step("displacement", "exit-qualification", text, disp))
        names = _NAMES[asz]
        terms = []
        if base is not None:
            terms.append(f"{names[base]} {bval:#x}")
        if index is not None:
            terms.append(f"{names[index]} {ival:#x} x {scale}")
        terms.append(f"displacement {_h(sdisp)}")
        steps.append(Step("effective-address", "effective-address",
                          f"EA = {' + '.join(terms)} = {ea:#x} (mod 2^{asz})", ea))
    vector = "SS" if seg_no == 2 else "GP"

    if mode == "64-bit":
        sbase = getattr(state, seg).base if seg_no >= 4 else 0  # FS (4) and GS (5) only
        linear = (sbase + ea) & MASK64
        if steps is not None:
            why = "FS/GS keep their base" if seg in ("fs", "gs") else f"the {seg.upper()} base counts as 0 in 64-bit mode"
            steps.append(Step("segment", "segment", f"segment {seg} (bits 17:15 = {seg_no})", seg))
            steps.append(Step("linear-address", "segment-base-64",
                              f"linear = {seg} base {sbase:#x} + EA {ea:#x} = {linear:#x} ({why}; no truncation)", linear))
        # With LAM the address translated is the untagged one; its canonical check follows the
        # paging mode (48 or 57 bits), so LAM_U57 under 4-level paging still needs bits 56:47 = bit 63.
        if state.lam_sup or state.lam_u48 or state.lam_u57:
            untagged, lam_bit = lam_untag(linear, state)
            if lam_bit is not None and steps is not None:
                steps.append(Step("lam", "canonical", f"LAM: metadata bits 62:{lam_bit + 1} of {linear:#x} take the "
                                  f"value of bit {lam_bit}: untagged {untagged:#x}", untagged))
            linear = untagged
        # Every byte accessed must be canonical: the first and the last (as Bochs and KVM's
        # instruction emulator check), so an access running off the lower half faults.
        last = (linear + (access.size or 1) - 1) & MASK64
        nc = _NONCANONICAL[state.la57]
        top, top_last = linear & nc, last & nc
        if (top and top != nc) or (top_last and top_last != nc):
            bits = 57 if state.la57 else 48
            bad = linear if top and top != nc else last

            def which() -> str:
                return "" if bad == linear else f"the last byte {last:#x} of the {access.size}-byte access at {linear:#x} "
            return _done(steps, outcome(explain, FAULT, vector, 0, "canonical",
                                lambda: f"{which()}{bad:#x} is not canonical ({bits}-bit); through {seg.upper()}: #{vector}(0)"),
                        ea, linear, seg, disp, sbase)
        if steps is not None:
            steps.append(Step("canonical", "canonical", f"{linear:#x} … {last:#x} is canonical "
                              f"({57 if state.la57 else 48}-bit addresses): no fault"))
        align = _ALIGN.get(ins)
        if align is not None:
            misaligned = _alignment(explain, steps, ins, linear, align)
            if misaligned is not None:
                return _done(steps, misaligned, ea, linear, seg, disp, sbase)
        if steps is None:
            return _new(Result, (OK_CANONICAL, ea, linear, seg, disp, sbase, ()))
        return _done(steps, OK_CANONICAL, ea, linear, seg, disp, sbase)

    s = getattr(state, seg)
    sbase = s.base
    linear = (sbase + ea) & MASK32
    kw = (ea, linear, seg, disp, sbase)
    if steps is not None:
        steps.append(Step("segment", "segment", f"segment {seg} (bits 17:15 = {seg_no})", seg))
        steps.append(Step("linear-address", "linear-32",
                          f"linear = {seg} base {sbase:#x} + EA {ea:#x} = {linear:#x} (mod 2^32)", linear))
    last = ea + access.size - 1
    limit = s.limit
    if mode == "protected" or mode == "compatibility":
        if s.unusable:
            return _done(steps, outcome(explain, FAULT, vector, 0, "unusable",
                                        lambda: f"{seg.upper()} is unusable: #{vector}(0)"), *kw)
        t = s.type
        if access.write and (t & 8 or not t & 2):
            what = "a code segment" if t & 8 else "a read-only data segment"
            return _done(steps, outcome(explain, FAULT, "GP", 0, "type",
                                        lambda: f"write to {what} (type {t:#x}) through {seg.upper()}: #GP(0)"), *kw)
        if not access.write and t & 8 and not t & 2:
            return _done(steps, outcome(explain, FAULT, "GP", 0, "type",
                                        lambda: f"read from an execute-only code segment (type {t:#x}): #GP(0)"), *kw)
        if steps is not None:
            steps.append(Step("type", "type", f"{seg} usable, type {t:#x} allows a {access.kind}"))
        if t & 0xC == 4:  # expand-down data (type bit 2 means "conforming" for code: §3.4.5.1)
            upper = MASK32 if s.db else 0xFFFF
            if ea <= limit or last > upper:
                return _done(steps, outcome(explain, FAULT, vector, 0, "limit",
                                    lambda: f"expand-down {seg}: valid offsets {limit + 1:#x}…{upper:#x}; access "
                                    f"{ea:#x}…{last:#x} is outside: #{vector}(0)"), *kw)
            if steps is not None:
                steps.append(Step("limit", "limit", f"expand-down {seg}: {ea:#x}…{last:#x} lies within "
                                  f"{limit + 1:#x}…{upper:#x}: no fault"))
            return _done(steps, _aligned_or(explain, steps, ins, linear, OK_LIMIT), *kw)
    if last > limit:
        if limit == MASK32:
            # The limit fault may or may not come; a misaligned XSAVES/XRSTORS faults either way.
            flat = outcome(explain, IMPL, vector, 0, "flat",
                           lambda: f"{seg} limit is 0xffffffff and the access {ea:#x}…{last:#x} crosses it: "
                           f"may or may not raise #{vector}(0)")
            return _done(steps, _aligned_or(explain, steps, ins, linear, flat), *kw)
        return _done(steps, outcome(explain, FAULT, vector, 0, "limit",
                            lambda: f"last byte {ea:#x} + {access.size} - 1 = {last:#x} > {seg} limit {limit:#x}: #{vector}(0)"), *kw)
    if steps is not None:
        steps.append(Step("limit", "limit", f"last byte {ea:#x} + {access.size} - 1 = {last:#x} <= {seg} limit {limit:#x}: no fault"))
    if ins in _ALIGN:
        return _done(steps, _aligned_or(explain, steps, ins, linear, OK_LIMIT), *kw)
    if steps is None:
        return _new(Result, (OK_LIMIT, ea, linear, seg, disp, sbase, ()))
    return _done(steps, OK_LIMIT, *kw)


def _alignment(explain: bool, steps: list[Step] | None, ins: str, linear: int, align: int) -> Outcome | None:
    """#GP(0) "regardless of segment" when the linear address is not a multiple of `align`
    (SDM Vol. 2 XSAVES/XRSTORS), else None (with a step when explaining). It comes after the VM
    exit, so the hypervisor must make it; vmxaddr makes it after the segment checks (the SDM
    leaves that order to the implementation: docs/ud-and-cpl.md)."""
    rest = linear & (align - 1)
    if rest:
        return outcome(explain, FAULT, "GP", 0, "alignment",
                       lambda: f"linear address {linear:#x} is not a multiple of {align} ({linear:#x} mod {align} = "
                       f"{rest:#x}): {ins.upper()} raises #GP(0), whatever the segment")
    if steps is not None:
        steps.append(Step("alignment", "alignment", f"linear address {linear:#x} is a multiple of {align}: no fault"))
    return None


def _aligned_or(explain: bool, steps: list[Step] | None, ins: str, linear: int, otherwise: Outcome) -> Outcome:
    align = _ALIGN.get(ins)
    if align is None:
        return otherwise
    return _alignment(explain, steps, ins, linear, align) or otherwise
