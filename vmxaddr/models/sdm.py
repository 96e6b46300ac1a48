"""The reference model: the SDM's rules, applied to what the hypervisor sees.

Order of the computation (each step names its rule in vmxaddr.rules):
  mode (#UD, or INVPCID's #GP(0) in virtual-8086 mode) -> CPL (#GP) -> register operand? ->
  displacement from the exit qualification -> effective address in the address size -> segment ->
  linear address (64-bit mode: FS/GS base only, canonical check; otherwise base + EA mod 2^32,
  then usability, type and limit checks) -> alignment (XSAVES/XRSTORS: 64 bytes).
The derivation of every fault, instruction by instruction, is docs/ud-and-cpl.md.

Each rule is a small function of plain integers written in the rule language (docs/proofs.md):
mypyc compiles this module for the fuzzer's hot path, and vmxaddr.prove runs the same functions on
z3 bit-vectors. So: no lookups keyed by a value that is symbolic in a proof (register values,
segment fields, CPL, the CR4/CR3 flags), only by what a form fixes (mode, address-size code,
segment number, the instruction). The explanation (`_steps`) is built after the rules ran, from
the values they produced.
"""

from __future__ import annotations

from typing import Any

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
_NC48, _NC57 = _NONCANONICAL[False], _NONCANONICAL[True]


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
    nc = _NONCANONICAL[bits == 57]
    top = addr & nc
    return bool((top == 0) | (top == nc))  # `|`: one condition for the prover


def select(cond: Any, a: Any, b: Any) -> Any:
    """`a if cond else b`, the rule language's branch-free choice: on Python values exactly that;
    on a symbolic condition (vmxaddr.prove.sym) one z3 If term, so the prover's paths do not
    split where a rule only picks a value (docs/proofs.md)."""
    if type(cond) is bool or type(cond) is int:
        return a if cond else b
    return cond.select(a, b)


def lam_untag(addr: int, state: CpuState) -> tuple[int, int | None]:
    """Linear-address masking: (untagged address, the bit whose value the metadata bits take),
    or (addr, None) when LAM does not apply. Supervisor pointers (bit 63 = 1) follow CR4.LAM_SUP
    (metadata above bit 56 with CR4.LA57, else above bit 47), user pointers CR3.LAM_U57 (bit 56),
    else CR3.LAM_U48 (bit 47) (Intel ISE, 'Linear Address Masking'). Written with `select`: one
    decision (does LAM apply?) instead of five."""
    sup = addr >> 63
    if not select(sup, state.lam_sup, state.lam_u57 | state.lam_u48):
        return addr, None
    bit = 47 + 9 * select(sup, state.la57, state.lam_u57)  # 56 with LA57 (supervisor) or LAM_U57 (user)
    low = addr & ((2 << bit) - 1)
    ext = low - ((low >> bit & 1) << (bit + 1))  # sign-extend from `bit`
    return (ext & ~(1 << 63) & MASK64) | (addr & (1 << 63)), bit


_new = tuple.__new__  # a Result from a ready tuple: no Python-level __new__ frame
OK_LIMIT = outcome(False, OK, None, None, "limit", str)  # shared with the other models (cheaper comparisons)
OK_CANONICAL = outcome(False, OK, None, None, "canonical", str)
OK_REGISTER = Outcome(OK, rule="register-operand", reason="register operand: no memory access")
_HAS_MEMREG = frozenset(m for m, sp in SPECS.items() if sp.layout in (Layout.VMREAD, Layout.LDT))
_NO_MEMORY = frozenset(m for m, sp in SPECS.items() if sp.memory == "none")
# INS/OUTS: the implicit string operand (vmxaddr.io_exit), rDI for INS, rSI for OUTS.
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


# -- the rules, in the order sdm() applies them; each is a small function of plain integers (the
# -- rule language, docs/proofs.md: vmxaddr.prove runs the same code on z3 bit-vectors) ------------

def mode_fault(ins: str, mode: str, explain: bool) -> Outcome | None:
    """#UD (or INVPCID's #GP(0) in virtual-8086 mode) for an instruction not recognized in `mode`:
    it comes before any VM exit (SDM Vol. 3C "Relative Priority of Faults and VM Exits"; the
    instruction pages' mode exceptions), so a hypervisor sees it only from a buggy processor model."""
    not_here = _MODE_FAULT[mode].get(ins)
    if not_here is None:
        return None
    if not_here == "UD":
        return outcome(explain, FAULT, "UD", None, "mode", lambda: f"{ins.upper()} raises #UD in {mode} mode")
    return outcome(explain, FAULT, not_here, 0, "mode", lambda: f"{ins.upper()} is not recognized in {mode} mode: #{not_here}(0)")


def privilege_level(mode: str, cpl: int) -> int:
    """The CPL the privilege check sees: virtual-8086 code runs at 3 and real-mode code at 0,
    whatever the state says (SDM Vol. 3A "Privilege Levels")."""
    return 3 if mode == "virtual-8086" else 0 if mode == "real" else cpl


def register_operand(ins: str, info: int, ext: int | None) -> bool:
    """Bit 10 (Mem/Reg; bit 4 of the APX extended field) says register, or the layout has no
    memory operand (SDM Vol. 3C "Information for VM Exits Due to Instruction Execution")."""
    return ins in _NO_MEMORY or (ins in _HAS_MEMREG and bool(info & 0x400 if ext is None else ext & 0x10))


def displacement(q: int, code: int) -> int:
    """The displacement: the exit qualification's low address-size bits (the rest is undefined),
    sign-extended from the address size's top bit (SDM Vol. 3C "Exit Qualification for VM Exits
    Due to Instruction Execution"). A signed Python int."""
    low = q & _MASKS[code]
    return low - ((low & _SIGN[code]) << 1)


def effective_address(bval: int, ival: int, scaling: int, disp: int, code: int) -> int:
    """(base + index x scale + displacement) mod 2^address-size (SDM Vol. 1 "Specifying an
    Offset"); `bval`/`ival` already reduced to the address size."""
    return (bval + (ival << scaling) + disp) & _MASKS[code]


def fault_vector(seg_no: int) -> str:
    """#SS for a stack-segment fault, #GP otherwise (SDM Vol. 3A "Limit Checking")."""
    return "SS" if seg_no == 2 else "GP"


def segment_base_64(state: CpuState, seg_no: int, seg: str) -> int:
    """The base added in 64-bit mode: FS's and GS's, the others count as 0; the linear address
    (base + EA mod 2^64) is not truncated (SDM Vol. 1 "Segment Registers in 64-Bit Mode")."""
    return getattr(state, seg).base if seg_no >= 4 else 0


def lam_enabled(state: CpuState) -> bool:
    """True when any linear-address-masking control is on (CR4.LAM_SUP, CR3.LAM_U48 or LAM_U57)."""
    return bool(state.lam_sup | state.lam_u48 | state.lam_u57)  # `|`: one condition for the prover, not three


def noncanonical(linear: int, size: int, la57: bool) -> int | None:
    """The first of the access's first and last byte that is not canonical (48 or 57 bits by
    CR4.LA57; SDM Vol. 1 "Canonical Addressing"), or None. Both are checked, as Bochs and KVM's
    instruction emulator do, so an access running off the lower half faults."""
    last = (linear + (size or 1) - 1) & MASK64
    nc = _NC57 if la57 else _NC48  # a test, not a lookup: the rule language branches on CR4.LA57
    top = linear & nc
    if (top != 0) & (top != nc):  # `&`: one condition for the prover where `and` would be two
        return linear
    top_last = last & nc
    if (top_last != 0) & (top_last != nc):
        return last
    return None


def type_fault(write: bool, t: int) -> bool:
    """A write to a read-only data segment or to any code segment, or a read from an execute-only
    code segment (SDM Vol. 3A "Type Checking"): #GP(0), even through SS."""
    if write:
        return bool(t & 8 or not t & 2)
    return bool(t & 8 and not t & 2)


def expand_down(t: int) -> bool:
    """Type bit 2 is expand-down for data segments, "conforming" for code (SDM Vol. 3A §3.4.5.1)."""
    return t & 0xC == 4


def expand_down_fault(ea: int, last: int, limit: int, db: int) -> bool:
    """Valid offsets of an expand-down segment run from limit + 1 to 0xFFFF (B = 0) or
    0xFFFFFFFF (B = 1) (SDM Vol. 3A "Limit Checking")."""
    return bool(ea <= limit or last > (MASK32 if db else 0xFFFF))


def misaligned(ins: str, linear: int) -> bool:
    """XSAVES/XRSTORS: the linear address must be a multiple of 64 (SDM Vol. 2 XSAVES, XRSTORS)."""
    align = _ALIGN.get(ins)
    return align is not None and bool(linear & (align - 1))


# -- the model -------------------------------------------------------------------------------------

def sdm(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    """The SDM's answer. See the module docstring for the order of the rules; with `explain` the
    steps are built afterwards from the values the rules produced (_explained)."""
    r = _apply(exit, state, access, explain)
    if explain:
        return r._replace(steps=tuple(_steps(exit, state, access, r)))
    return r


def _apply(exit: ExitInfo, state: CpuState, access: Access, explain: bool) -> Result:
    ins = exit.instruction
    mode = state.mode
    info = exit.instruction_info
    fault = mode_fault(ins, mode, explain)
    if fault is not None:
        return _new(Result, (fault, None, None, None, None, None, ()))
    if ins in _CPL_CHECKED:
        cpl = privilege_level(mode, state.cpl)
        if cpl > 0:
            return Result(outcome(explain, FAULT, "GP", 0, "cpl", lambda: f"CPL {cpl} > 0: {ins.upper()} raises #GP(0)"))
    ext = exit.extended_info  # APX: the extended field names R16-R31 (vmxaddr.apx)
    if register_operand(ins, info, ext):
        return _new(Result, (OK_REGISTER, None, None, None, None, None, ()))

    string_base: int | None = None
    if ext is None and ins not in _STRING_BASE:  # the common case, without building a tuple
        regs = state.regs
        scaling, code, seg_no, index, base = _OPERAND_BITS.get(info) or operand_bits(info)
        if code > 2 or seg_no > 5:
            fields_of(info, exit.exit_qualification)  # raises InvalidExitInfo with the reason
    else:
        regs, scaling, code, seg_no, index, base, string_base = operand_fields(exit, state)
    seg = SEGMENTS[seg_no]
    mask = _MASKS[code]
    # INS/OUTS: no displacement (the exit qualification is the I/O qualification)
    disp = displacement(exit.exit_qualification, code) if string_base is None else 0
    bval = regs[base] & mask if base is not None else 0
    ival = regs[index] & mask if index is not None else 0
    ea = effective_address(bval, ival, scaling, disp, code)
    disp &= MASK64
    vector = fault_vector(seg_no)

    if mode == "64-bit":
        sbase = segment_base_64(state, seg_no, seg)
        linear = (sbase + ea) & MASK64
        # With LAM the address translated is the untagged one; its canonical check follows the
        # paging mode (48 or 57 bits), so LAM_U57 under 4-level paging still needs bits 56:47 = bit 63.
        if lam_enabled(state):
            linear = lam_untag(linear, state)[0]
        bad = noncanonical(linear, access.size, state.la57)
        if bad is not None:
            bits = 57 if state.la57 else 48
            lin = linear

            def which() -> str:
                return "" if bad == lin else f"the last byte {bad:#x} of the {access.size}-byte access at {lin:#x} "
            return _new(Result, (outcome(explain, FAULT, vector, 0, "canonical",
                                         lambda: f"{which()}{bad:#x} is not canonical ({bits}-bit); through {seg.upper()}: "
                                         f"#{vector}(0)"), ea, linear, seg, disp, sbase, ()))
        if misaligned(ins, linear):
            return _new(Result, (_misaligned(explain, ins, linear), ea, linear, seg, disp, sbase, ()))
        return _new(Result, (OK_CANONICAL, ea, linear, seg, disp, sbase, ()))

    s = getattr(state, seg)
    sbase = s.base
    linear = (sbase + ea) & MASK32  # SDM Vol. 3A "Logical and Linear Addresses": mod 2^32
    last = ea + access.size - 1
    limit = s.limit
    verdict = OK_LIMIT
    if mode == "protected" or mode == "compatibility":
        if s.unusable:
            verdict = outcome(explain, FAULT, vector, 0, "unusable", lambda: f"{seg.upper()} is unusable: #{vector}(0)")
        elif type_fault(access.write, s.type):
            verdict = _type_fault(explain, access.write, s.type, seg)
        elif expand_down(s.type):
            if expand_down_fault(ea, last, limit, s.db):
                upper = MASK32 if s.db else 0xFFFF
                verdict = outcome(explain, FAULT, vector, 0, "limit",
                                  lambda: f"expand-down {seg}: valid offsets {limit + 1:#x}…{upper:#x}; access "
                                  f"{ea:#x}…{last:#x} is outside: #{vector}(0)")
            elif misaligned(ins, linear):
                verdict = _misaligned(explain, ins, linear)
            return _new(Result, (verdict, ea, linear, seg, disp, sbase, ()))
        if verdict is not OK_LIMIT:
            return _new(Result, (verdict, ea, linear, seg, disp, sbase, ()))
    if last > limit:  # expand-up (SDM Vol. 3A "Limit Checking")
        if limit == MASK32:
            # The limit fault may or may not come; a misaligned XSAVES/XRSTORS faults either way.
            verdict = outcome(explain, IMPL, vector, 0, "flat",
                              lambda: f"{seg} limit is 0xffffffff and the access {ea:#x}…{last:#x} crosses it: "
                              f"may or may not raise #{vector}(0)")
        else:
            return _new(Result, (outcome(explain, FAULT, vector, 0, "limit",
                                         lambda: f"last byte {ea:#x} + {access.size} - 1 = {last:#x} > {seg} limit "
                                         f"{limit:#x}: #{vector}(0)"), ea, linear, seg, disp, sbase, ()))
    if misaligned(ins, linear):
        verdict = _misaligned(explain, ins, linear)
    return _new(Result, (verdict, ea, linear, seg, disp, sbase, ()))


def operand_fields(exit: ExitInfo, state: CpuState) -> tuple[tuple[int, ...], int, int, int, int | None, int | None, int | None]:
    """(registers, scaling, address-size code, segment number, index, base, string base) read from
    the 32-bit field or APX's extended one (each field read once per value: the fuzzer's hot path).
    INS/OUTS: no index; the base is rDI (INS, through ES whatever bits 17:15 say: they are undefined
    for INS) or rSI (OUTS, through the reported segment)."""
    ins = exit.instruction
    info = exit.instruction_info
    ext = exit.extended_info
    regs = state.regs
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
    string_base = _STRING_BASE.get(ins)
    if string_base is not None:
        index, base, scaling = None, string_base, 0
        if ins == "ins":
            seg_no = 0
    return regs, scaling, code, seg_no, index, base, string_base


def _type_fault(explain: bool, write: bool, t: int, seg: str) -> Outcome:
    if write:
        what = "a code segment" if t & 8 else "a read-only data segment"
        return outcome(explain, FAULT, "GP", 0, "type", lambda: f"write to {what} (type {t:#x}) through {seg.upper()}: #GP(0)")
    return outcome(explain, FAULT, "GP", 0, "type", lambda: f"read from an execute-only code segment (type {t:#x}): #GP(0)")


def _misaligned(explain: bool, ins: str, linear: int) -> Outcome:
    """#GP(0) "regardless of segment" when the linear address is not a multiple of the alignment
    (SDM Vol. 2 XSAVES/XRSTORS). It comes after the VM exit, so the hypervisor must make it;
    vmxaddr makes it after the segment checks (the SDM leaves that order to the implementation:
    docs/ud-and-cpl.md)."""
    align = _ALIGN[ins]
    rest = linear & (align - 1)
    return outcome(explain, FAULT, "GP", 0, "alignment",
                   lambda: f"linear address {linear:#x} is not a multiple of {align} ({linear:#x} mod {align} = "
                   f"{rest:#x}): {ins.upper()} raises #GP(0), whatever the segment")


# -- the explanation, built after the rules from the values they produced ------------------------

def _steps(exit: ExitInfo, state: CpuState, access: Access, r: Result) -> list[Step]:
    """The steps `explain` shows, in the order the rules ran, up to the rule that decided."""
    ins, mode, o = exit.instruction, state.mode, r.outcome
    if o.rule == "mode":
        return []
    steps = [Step("mode", "mode", f"{mode} mode: {ins.upper()} may execute here", mode)]
    if ins in _CPL_CHECKED:
        if o.rule == "cpl":
            return steps
        cpl = privilege_level(mode, state.cpl)
        steps.append(Step("cpl", "cpl", f"CPL {cpl}: the privilege check passes", cpl))
    if o.rule == "register-operand":
        steps.append(Step("register-operand", "register-operand",
                          "bit 10 = 1 (or a register-only layout): the operand is a register, no memory address"))
        return steps
    regs, scaling, code, seg_no, index, base, string_base = operand_fields(exit, state)
    assert r.effective_address is not None and r.linear_address is not None and r.displacement is not None
    ea, disp, seg, mask = r.effective_address, r.displacement, SEGMENTS[seg_no], _MASKS[code]
    asz, q = 16 << code, exit.exit_qualification
    names = _NAMES[asz]
    if string_base is not None:
        what = ("INS writes its element to ES:[rDI] (ES cannot be overridden; bits 17:15 are undefined for INS)"
                if ins == "ins" else f"OUTS reads its element from {seg.upper()}:[rSI] (bits 17:15 = {seg_no})")
        steps.append(Step("string-operand", "string-operand",
                          f"exit qualification {q:#x}: I/O exit, {({0: 1, 1: 2, 3: 4}.get(q & 7, '?'))}-byte "
                          f"{'IN' if q >> 3 & 1 else 'OUT'}, string, {'REP, ' if q >> 5 & 1 else ''}port {q >> 16 & 0xFFFF:#x}; "
                          f"{what}", None))
        steps.append(Step("effective-address", "effective-address",
                          f"address size {asz} bits (bits 9:7 = {code}): EA = {names[string_base]} = {ea:#x} (the first "
                          "element: RFLAGS.DF only moves the next ones)", ea))
    else:
        ext = exit.extended_info
        if ext is not None:
            steps.append(Step("extended-info", "apx-extended",
                              f"extended instruction information {ext:#x} (VMCS 0x2406): 5-bit register numbers "
                              f"(base {'none' if base is None else REG64[base]}, index "
                              f"{'none' if index is None else REG64[index]}); the 32-bit field cannot name R16-R31", ext))
        sdisp = disp - (1 << 64) if disp >> 63 else disp
        if asz == 64:
            text = f"exit qualification {q:#x}: the address size is 64 bits, so all of it is the displacement: {_h(sdisp)}"
        else:
            text = (f"exit qualification {q:#x}: address size {asz} bits, so bits {asz - 1}:0 = {q & mask:#x} count "
                    f"(higher bits are undefined); sign-extended from bit {asz - 1}: displacement = {_h(sdisp)}")
        if base is None and index is None and asz != 16:
            text += " (no base, no index: for a RIP-relative operand this already includes the next RIP)"
        steps.append(Step("displacement", "exit-qualification", text, disp))
        terms = []
        if base is not None:
            terms.append(f"{names[base]} {regs[base] & mask:#x}")
        if index is not None:
            terms.append(f"{names[index]} {regs[index] & mask:#x} x {1 << scaling}")
        terms.append(f"displacement {_h(sdisp)}")
        steps.append(Step("effective-address", "effective-address", f"EA = {' + '.join(terms)} = {ea:#x} (mod 2^{asz})", ea))
    steps.append(Step("segment", "segment", f"segment {seg} (bits 17:15 = {seg_no})", seg))
    linear = r.linear_address
    if mode == "64-bit":
        sbase = segment_base_64(state, seg_no, seg)
        tagged = (sbase + ea) & MASK64
        why = "FS/GS keep their base" if seg in ("fs", "gs") else f"the {seg.upper()} base counts as 0 in 64-bit mode"
        steps.append(Step("linear-address", "segment-base-64",
                          f"linear = {seg} base {sbase:#x} + EA {ea:#x} = {tagged:#x} ({why}; no truncation)", tagged))
        if lam_enabled(state):
            untagged, lam_bit = lam_untag(tagged, state)
            if lam_bit is not None:
                steps.append(Step("lam", "canonical", f"LAM: metadata bits 62:{lam_bit + 1} of {tagged:#x} take the "
                                  f"value of bit {lam_bit}: untagged {untagged:#x}", untagged))
        if o.rule == "canonical" and o.kind == FAULT:
            return steps
        last = (linear + (access.size or 1) - 1) & MASK64
        steps.append(Step("canonical", "canonical", f"{linear:#x} … {last:#x} is canonical "
                          f"({57 if state.la57 else 48}-bit addresses): no fault"))
        return _alignment_step(steps, ins, linear, o)
    s = getattr(state, seg)
    steps.append(Step("linear-address", "linear-32",
                      f"linear = {seg} base {s.base:#x} + EA {ea:#x} = {linear:#x} (mod 2^32)", linear))
    last = ea + access.size - 1
    if mode == "protected" or mode == "compatibility":
        if o.rule in ("unusable", "type"):
            return steps
        steps.append(Step("type", "type", f"{seg} usable, type {s.type:#x} allows a {access.kind}"))
        if expand_down(s.type):
            if o.rule == "limit" and o.kind == FAULT:
                return steps
            upper = MASK32 if s.db else 0xFFFF
            steps.append(Step("limit", "limit", f"expand-down {seg}: {ea:#x}…{last:#x} lies within "
                              f"{s.limit + 1:#x}…{upper:#x}: no fault"))
            return _alignment_step(steps, ins, linear, o)
    if last > s.limit:
        return steps if o.rule == "limit" else _alignment_step(steps, ins, linear, o)
    steps.append(Step("limit", "limit", f"last byte {ea:#x} + {access.size} - 1 = {last:#x} <= {seg} limit {s.limit:#x}: no fault"))
    return _alignment_step(steps, ins, linear, o)


def _alignment_step(steps: list[Step], ins: str, linear: int, o: Outcome) -> list[Step]:
    align = _ALIGN.get(ins)
    if align is not None and o.rule != "alignment":
        steps.append(Step("alignment", "alignment", f"linear address {linear:#x} is a multiple of {align}: no fault"))
    return steps
