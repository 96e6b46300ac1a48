"""The hardware verdict: did the processor report (instruction information, exit qualification,
length, exit reason) what the instruction bytes imply? Undefined bits and exit-qualification bits
above the address size are ignored (SDM Vol. 3C §28.2.1, §28.2.5); where vmxaddr keeps an open
question as a policy (exitinfo.Policy) either answer counts as right."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from vmxaddr.apx import encode_extended
from vmxaddr.decode import DecodeError, Instruction, decode_uncached
from vmxaddr.exitinfo import (
    DEFAULT_POLICY,
    IGNORED_SEGMENT_POLICIES,
    SI_DI_POLICIES,
    Policy,
    encode_info,
    exit_qualification,
    fields,
)
from vmxaddr.io_exit import io_qualification
from vmxaddr.isa import Layout
from vmxaddr.trace.format import MASK64, ExitRecord, HardwareCheck, HardwareVerdictName
from vmxaddr.trace.quirks import explain_known


@lru_cache(maxsize=4096)
def _decode(raw: bytes, code_size: int) -> Instruction | DecodeError:
    try:
        return decode_uncached(raw, code_size)  # this lru is the memo: decode's own, sized for fuzzing, would hold 6 x 65536 entries
    except DecodeError as e:
        return e


@lru_cache(maxsize=4096)
def _text(instr: Instruction) -> str:
    return instr.text()


# Decode failures that say nothing about the processor's report: the recorder's bytes or our tools.
_DECODE_UNCHECKABLE = ("empty", "truncated", "decoder-disagreement", "mode")


_POLICY = {(a, b): Policy(ignored_segment=a, si_di=b) for a in IGNORED_SEGMENT_POLICIES for b in SI_DI_POLICIES}


def _policies(instr: Instruction) -> list[Policy]:
    """Encoder policies whose answers all count as right for `instr`, the default first: the
    open questions the SDM does not settle (exitinfo.Policy) where they apply to this operand."""
    op = instr.operand
    if op is None:
        return [DEFAULT_POLICY]
    segs: tuple[str, ...] = ("default",)
    if instr.code_size == 64 and op.segment_prefix and op.segment not in ("fs", "gs"):
        segs = IGNORED_SEGMENT_POLICIES
    sidi: tuple[str, ...] = ("base",)
    if op.address_size == 16 and op.index is None and op.base in (6, 7):
        sidi = SI_DI_POLICIES
    return [_POLICY[a, b] for a in segs for b in sidi]


def _field_differences(recorded: int, expected: int, defined: int, instruction: str) -> list[dict[str, Any]]:
    diff = (recorded ^ expected) & defined
    out = []
    for f in fields(expected, instruction):
        width = f.hi - f.lo + 1
        if diff >> f.lo & ((1 << width) - 1):
            out.append({"name": f.name, "bits": f"{f.hi}:{f.lo}" if f.hi != f.lo else str(f.lo),
                        "recorded": recorded >> f.lo & ((1 << width) - 1), "expected": f.value})
    return out


def check_hardware(rec: ExitRecord) -> HardwareCheck:
    """The hardware verdict of one record: does the reported exit information match what the bytes
    imply?"""
    missing = []
    if rec.raw is None:
        missing.append("bytes")
    if rec.code_size is None:
        missing.append("code_size")
    if rec.instruction_info is None and rec.exit_qualification is None and rec.length is None:
        missing.append("instruction_info, exit_qualification or length")
    if missing:
        return {"verdict": "not-checkable", "missing": missing}
    assert rec.raw is not None and rec.code_size is not None
    instr = _decode(rec.raw, rec.code_size)
    if isinstance(instr, DecodeError):
        if instr.kind in _DECODE_UNCHECKABLE:
            return {"verdict": "not-checkable", "missing": [f"decodable bytes ({instr.kind}: {instr})"]}
        return {"verdict": "inconsistent", "differences": [
            {"field": "bytes", "detail": f"the bytes are not a VMX-family instruction ({instr.kind}: {instr})"}]}
    diffs: list[dict[str, Any]] = []
    unchecked: list[str] = []
    if instr.spec.exit_reason != rec.exit_reason:
        diffs.append({"field": "exit_reason", "recorded": rec.exit_reason, "expected": instr.spec.exit_reason,
                      "detail": f"the bytes are {instr.mnemonic.upper()}"})
    if rec.length is not None and rec.length != instr.length:
        diffs.append({"field": "length", "recorded": rec.length, "expected": instr.length})
    if rec.instruction_info is not None:
        expected, defined = encode_info(instr, DEFAULT_POLICY)
        if (rec.instruction_info ^ expected) & defined and not any(
                not (rec.instruction_info ^ e) & d for e, d in (encode_info(instr, p) for p in _policies(instr)[1:])):
            diffs.append({"field": "instruction_info", "recorded": hex(rec.instruction_info), "expected": hex(expected),
                          "bits": _field_differences(rec.instruction_info, expected, defined, instr.mnemonic)})
    if rec.extended_info is not None:
        expected, defined = encode_extended(instr)
        if (rec.extended_info ^ expected) & defined:
            diffs.append({"field": "extended_instruction_info", "recorded": hex(rec.extended_info),
                          "expected": hex(expected), "detail": f"defined bits {defined:#x} compared (vmxaddr.apx)"})
    if rec.exit_qualification is not None and instr.spec.layout is Layout.IO:
        # INS/OUTS: the I/O qualification; the port (bits 31:16) is DX, known only from a state.
        port = rec.state.regs[2] & 0xFFFF if rec.state is not None else rec.exit_qualification >> 16 & 0xFFFF
        expected = io_qualification(instr, port)
        if (rec.exit_qualification ^ expected) & 0xFFFFFFFF:
            diffs.append({"field": "exit_qualification", "recorded": hex(rec.exit_qualification),
                          "expected": hex(expected), "detail": "I/O qualification (port from DX when a state is given)"})
    elif rec.exit_qualification is not None:
        op = instr.operand
        if op is not None and op.rip_relative and rec.rip is None:
            unchecked.append("exit_qualification (RIP-relative operand: needs rip)")
        else:
            expected = exit_qualification(instr, rec.rip or 0, DEFAULT_POLICY)
            mask = MASK64 if op is None or op.address_size == 64 else (1 << op.address_size) - 1
            if (rec.exit_qualification ^ expected) & mask:
                d: dict[str, Any] = {"field": "exit_qualification", "recorded": hex(rec.exit_qualification),
                                     "expected": hex(expected & mask)}
                if mask != MASK64:
                    d["detail"] = f"bits {op.address_size - 1 if op else 63}:0 compared (address size)"
                diffs.append(d)
    verdict: HardwareVerdictName = "consistent"
    if diffs:
        # a documented departure of the processor named in `source` (trace/quirks.py) is "explained"
        verdict = "explained" if rec.processor is not None and explain_known(rec.processor, instr, rec, diffs) \
            else "inconsistent"
    out: HardwareCheck = {"verdict": verdict, "decoded": _text(instr)}
    if diffs:
        out["differences"] = diffs
    if unchecked:
        out["unchecked"] = unchecked
    return out
