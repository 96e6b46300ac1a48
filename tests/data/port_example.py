"""A user's port written in the rule language (docs/proofs.md, "Your own model"): the SDM's 32-bit
protected-mode rules for VMPTRLD/VMREAD-style operands, except that it knows no expand-down
segments. `vmxaddr prove --model tests.data.port_example:port --form ...` finds exactly that."""

from __future__ import annotations

from vmxaddr.exitinfo import ExitInfo, operand_bits
from vmxaddr.isa import SEGMENTS
from vmxaddr.models.base import FAULT, OK, Access, Outcome, Result
from vmxaddr.models.kvm import LimitCheck
from vmxaddr.state import CpuState

MASK32 = 0xFFFFFFFF


def port(exit: ExitInfo, state: CpuState, access: Access) -> Result:
    if state.mode != "protected":
        return Result(Outcome(FAULT, "UD", None, "mode"))
    if state.cpl > 0:
        return Result(Outcome(FAULT, "GP", 0, "cpl"))
    scaling, code, seg_no, index, base = operand_bits(exit.instruction_info)
    mask = (0xFFFF, MASK32)[code]
    q = exit.exit_qualification & mask
    disp = q - ((q & (0x8000, 0x80000000)[code]) << 1)  # sign-extended from the address size
    b = state.regs[base] & mask if base is not None else 0
    i = state.regs[index] & mask if index is not None else 0
    ea = (b + (i << scaling) + disp) & mask
    seg = SEGMENTS[seg_no]
    s = getattr(state, seg)
    linear = (s.base + ea) & MASK32
    vector = "SS" if seg_no == 2 else "GP"
    done = dict(effective_address=ea, linear_address=linear, segment=seg, displacement=disp & ((1 << 64) - 1),
                segment_base=s.base)
    if s.unusable:
        return Result(Outcome(FAULT, vector, 0, "unusable"), **done)
    t = s.type
    if (access.write and (t & 8 or not t & 2)) or (not access.write and t & 8 and not t & 2):
        return Result(Outcome(FAULT, "GP", 0, "type"), **done)
    last = ea + access.size - 1
    if last > s.limit:  # expand-up only: the bug this port has
        if s.limit == MASK32:
            return Result(Outcome("implementation-specific", vector, 0, "flat"), **done)
        return Result(Outcome(FAULT, vector, 0, "limit"), **done)
    return Result(Outcome(OK, rule="limit"), **done)


# How the port checks a limit, for the classifier (vmxaddr.diff.classify; without it a model is
# taken to check limits as the SDM does, and the difference is only "fault checks differ").
port.limit_check = LimitCheck(fixed_length=None, off_by_one=False, flat_skip=False, expand_down=False)  # type: ignore[attr-defined]


def port_fs_quirk(exit: ExitInfo, state: CpuState, access: Access) -> Result:
    """`port`, except that through FS its limit check faults one byte early (a bug only FS has):
    the prover must not let the FS form share the DS form's proof (tests/test_prove.py)."""
    r = port(exit, state, access)
    if r.segment == "fs" and r.outcome.kind == OK and r.effective_address + access.size > state.fs.limit:
        return r._replace(outcome=Outcome(FAULT, "GP", 0, "limit"))
    return r


port_fs_quirk.limit_check = port.limit_check  # type: ignore[attr-defined]
