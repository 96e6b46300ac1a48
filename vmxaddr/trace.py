"""Check traces of VM exits caused by VMX-family instructions (format: docs/trace-format.md).

Per exit record three verdicts:
  hardware    did the processor report what the instruction bytes imply? The recorded
              instruction-information field and exit qualification are compared with
              `exitinfo.encode` of the decoded bytes, ignoring what the SDM leaves undefined
              (undefined instruction-information bits; exit-qualification bits above the address
              size, SDM Vol. 3C §28.2.1) and accepting either answer where vmxaddr keeps an open
              question as a policy (segment of an ignored 64-bit-mode override, 16-bit SI/DI).
  hypervisor  is the recorded address or fault the reference model's answer (an
              implementation-specific case accepts either)?
  fingerprint which registered consumer models give exactly the recorded answer?
A check whose inputs are missing is "not-checkable" and names what is missing.

The reader streams: one line at a time, bounded line length, a bounded table of state records.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import IO, Any

from vmxaddr.case import access_of, run_model
from vmxaddr.decode import DecodeError, Instruction, decode
from vmxaddr.exitinfo import (
    DEFAULT_POLICY,
    IGNORED_SEGMENT_POLICIES,
    SI_DI_POLICIES,
    ExitInfo,
    Policy,
    encode,
    encode_info,
    exit_qualification,
    fields,
)
from vmxaddr.isa import REG64, SPECS
from vmxaddr.models.base import FAULT, IMPL, OK, Access, InvalidExitInfo, Model, Outcome, Result
from vmxaddr.progress import Progress
from vmxaddr.state import CpuState, StateError, parse_int

MASK64 = (1 << 64) - 1
MAX_LINE = 1 << 20  # longer lines are reported as malformed and skipped without being held
DEFAULT_MAX_STATES = 4096
VECTORS = ("UD", "GP", "SS")

# basic exit reason -> the instructions reporting it (SDM Vol. 3D Appendix C); 46 and 47 are
# shared, and bits 29:28 of the instruction-information field say which one it was.
REASON_INSTRUCTIONS: dict[int, tuple[str, ...]] = {}
for _m, _s in SPECS.items():
    REASON_INSTRUCTIONS.setdefault(_s.exit_reason, ())
    REASON_INSTRUCTIONS[_s.exit_reason] += (_m,)
_IDENTITY = {s.exit_reason: {} for s in SPECS.values() if s.identity is not None}
for _m, _s in SPECS.items():
    if _s.identity is not None:
        _IDENTITY[_s.exit_reason][_s.identity] = _m

# Linux's names for these exit reasons (VMX_EXIT_REASONS in arch/x86/include/uapi/asm/vmx.h),
# as the kvm_exit / kvm_nested_vmexit tracepoints print them.
KVM_REASON_NAMES = {"VMCLEAR": 19, "VMPTRLD": 21, "VMPTRST": 22, "VMREAD": 23, "VMWRITE": 25, "VMON": 27,
                    "GDTR_IDTR": 46, "LDTR_TR": 47, "INVEPT": 50, "INVVPID": 53, "RDRAND": 57, "INVPCID": 58,
                    "RDSEED": 61, "XSAVES": 63, "XRSTORS": 64}

EXIT_KEYS = frozenset(("type", "exit_reason", "instruction", "rip", "bytes", "code_size", "instruction_info",
                       "exit_qualification", "length", "state", "state_ref", "result", "vcpu", "source"))
STATE_KEYS = frozenset(("type", "id", "state", "state_ref", "source"))
RESULT_KEYS = frozenset(("kind", "vector", "error_code", "linear_address"))


class RecordError(ValueError):
    """A line that is not a valid trace record; the message says why."""


# -- records -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Recorded:
    """What the hypervisor did: went on with `linear_address` (kind "ok") or injected a fault."""

    kind: str
    vector: str | None = None
    error_code: int | None = None
    linear_address: int | None = None

    def short(self) -> str:
        if self.kind == OK:
            return "ok" if self.linear_address is None else f"ok {self.linear_address:#x}"
        code = "" if self.error_code is None else f"({self.error_code})"
        return f"#{self.vector}{code}"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == OK:
            if self.linear_address is not None:
                d["linear_address"] = hex(self.linear_address)
        else:
            d["vector"] = self.vector
            if self.error_code is not None:
                d["error_code"] = self.error_code
        return d


@dataclass(frozen=True, slots=True)
class ExitRecord:
    line: int
    exit_reason: int
    instruction: str | None  # None: reason 46/47 without the instruction-information field
    rip: int | None
    raw: bytes | None
    code_size: int | None
    instruction_info: int | None
    exit_qualification: int | None
    length: int | None
    state: CpuState | None
    state_problem: str | None  # why `state` is None although the record referred to one
    result: Recorded | None


def _uint(obj: dict[str, Any], key: str, bits: int) -> int | None:
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    if type(v) is int and 0 <= v < 1 << bits:
        return v
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise RecordError(f"{key}: expected an integer or a hex string, got {v!r}")
    try:
        n = parse_int(v, key)
    except StateError as e:
        raise RecordError(str(e)) from None
    if not 0 <= n < 1 << bits:
        raise RecordError(f"{key}: {v!r} does not fit in {bits} unsigned bits")
    return n


def _hexbytes(v: Any) -> bytes:
    if not isinstance(v, str):
        raise RecordError(f"bytes: expected a hex string such as \"0f7845d8\", got {v!r}")
    t = "".join(v.split())
    if not t or len(t) % 2 or len(t) > 64:
        raise RecordError(f"bytes: {v!r} is not 1…32 bytes of hex")
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise RecordError(f"bytes: {v!r} is not hexadecimal") from None




def state_from_json(obj: Any, base: CpuState) -> CpuState:
    """A record's state on top of `base` (the format of `CpuState.from_json`)."""
    return CpuState.from_json(obj, base)




def _result(v: Any) -> Recorded:
    if not isinstance(v, dict):
        raise RecordError("result must be an object such as {\"kind\": \"ok\", \"linear_address\": \"0x1000\"}")
    for k in v:
        if k not in RESULT_KEYS:
            raise RecordError(f"unknown key {k!r} in result (known: {', '.join(sorted(RESULT_KEYS))})")
    kind = v.get("kind")
    if kind == OK:
        if v.get("vector") is not None:
            raise RecordError("result: kind \"ok\" with a vector")
        return Recorded(OK, linear_address=_uint(v, "linear_address", 64))
    if kind == FAULT:
        vec = v.get("vector")
        if isinstance(vec, str):
            vec = vec.lstrip("#").upper()
        if vec not in VECTORS:
            raise RecordError(f"result: vector must be one of {', '.join(VECTORS)}, not {v.get('vector')!r}")
        return Recorded(FAULT, vec, _uint(v, "error_code", 32))
    raise RecordError(f"result: kind must be \"ok\" or \"fault\", not {kind!r}")


def resolve_instruction(exit_reason: int, instruction_info: int | None) -> str | None:
    names = REASON_INSTRUCTIONS[exit_reason]
    if len(names) == 1:
        return names[0]
    if instruction_info is None:
        return None
    return _IDENTITY[exit_reason][instruction_info >> 28 & 3]


class StateTable:
    """State records by id, the most recently defined or used `limit` of them."""

    def __init__(self, limit: int = DEFAULT_MAX_STATES) -> None:
        self.limit = limit
        self.states: OrderedDict[str, CpuState] = OrderedDict()
        self.evicted = 0

    def get(self, key: str) -> CpuState | None:
        st = self.states.get(key)
        if st is not None:
            self.states.move_to_end(key)
        return st

    def put(self, key: str, st: CpuState) -> None:
        self.states[key] = st
        self.states.move_to_end(key)
        while len(self.states) > self.limit:
            self.states.popitem(last=False)
            self.evicted += 1


def _ref(v: Any, what: str) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise RecordError(f"{what}: expected a string or integer id, got {v!r}")
    return str(v)


def _state_of(obj: dict[str, Any], table: StateTable, code_size: int | None) -> tuple[CpuState | None, str | None]:
    """The record's state: the referenced one (if any) with the inline one applied on top."""
    base: CpuState | None = None
    if obj.get("state_ref") is not None:
        key = _ref(obj["state_ref"], "state_ref")
        base = table.get(key)
        if base is None:
            return None, (f"state_ref {key!r} is unknown (never defined, defined on a malformed line, or "
                          f"evicted: the table keeps the last {table.limit} states, see --max-states)")
    inline = obj.get("state")
    if inline is None:
        return base, None if base is not None else "no CPU state"
    if base is None:
        base = CpuState.for_code_size(code_size if code_size in (16, 32, 64) else 32)
    try:
        return state_from_json(inline, base), None
    except StateError as e:
        raise RecordError(f"state: {e}") from None


def parse_exit(obj: dict[str, Any], line: int, table: StateTable) -> ExitRecord:
    for k in obj:
        if k not in EXIT_KEYS:
            raise RecordError(f"unknown key {k!r} in an exit record (known: {', '.join(sorted(EXIT_KEYS))})")
    info = _uint(obj, "instruction_info", 32)
    reason = _uint(obj, "exit_reason", 16)
    name = obj.get("instruction")
    if name is not None:
        if not isinstance(name, str) or name.lower() not in SPECS:
            raise RecordError(f"instruction: {name!r} is not one of {', '.join(SPECS)}")
        name = name.lower()
        if reason is not None and SPECS[name].exit_reason != reason:
            raise RecordError(f"exit_reason {reason} contradicts instruction {name!r} (whose exit reason is "
                              f"{SPECS[name].exit_reason})")
        reason = SPECS[name].exit_reason
    if reason is None:
        raise RecordError("an exit record needs exit_reason or instruction")
    if reason not in REASON_INSTRUCTIONS:
        raise RecordError(f"exit_reason {reason} is not one of a VMX-family instruction "
                          f"({', '.join(str(r) for r in sorted(REASON_INSTRUCTIONS))})")
    # Reasons 46/47: the hypervisor knows the instruction from bits 29:28 of the field.
    derived = resolve_instruction(reason, info)
    if name is not None and derived is not None and name != derived:
        raise RecordError(f"instruction {name!r} contradicts instruction_info bits 29:28, which say {derived!r}")
    instruction = name or derived
    code_size = _uint(obj, "code_size", 8)
    if code_size is not None and code_size not in (16, 32, 64):
        raise RecordError(f"code_size must be 16, 32 or 64, not {code_size}")
    raw = _hexbytes(obj["bytes"]) if obj.get("bytes") is not None else None
    rip = _uint(obj, "rip", 64)
    state, problem = _state_of(obj, table, code_size)
    if state is not None:
        if code_size is None:
            code_size = state.code_size
        elif state.code_size != code_size:
            raise RecordError(f"code_size {code_size} contradicts the state ({state.mode} mode, cs.db={state.cs.db}: "
                              f"{state.code_size}-bit code)")
        if rip is not None and state.rip != rip:
            state = replace(state, rip=rip)
    res = _result(obj["result"]) if obj.get("result") is not None else None
    return ExitRecord(line, reason, instruction, rip, raw, code_size, info, _uint(obj, "exit_qualification", 64),
                      _uint(obj, "length", 32), state, problem, res)


# -- the three checks ----------------------------------------------------------------------------

@lru_cache(maxsize=1 << 14)
def _decode(raw: bytes, code_size: int) -> Instruction | DecodeError:
    try:
        return decode(raw, code_size)
    except DecodeError as e:
        return e


@lru_cache(maxsize=1 << 14)
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


def check_hardware(rec: ExitRecord) -> dict[str, Any]:
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
    if rec.exit_qualification is not None:
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
    out: dict[str, Any] = {"verdict": "inconsistent" if diffs else "consistent", "decoded": _text(instr)}
    if diffs:
        out["differences"] = diffs
    if unchecked:
        out["unchecked"] = unchecked
    return out


def access_for(instruction: str, code_size: int) -> Access:
    """The access a hypervisor emulates, from the exit reason and the code size (what it knows)."""
    spec = SPECS[instruction]
    if spec.access is None:
        return Access(0, False)
    return Access(spec.access_size(code_size), spec.access == "write")


def answer_matches(expected: Result, rec: Recorded) -> bool:
    """Is the recorded answer `expected`'s (for an implementation-specific `expected`: one of the
    answers it allows)? An error code left out of the record is not compared."""
    out = expected.outcome
    code = rec.error_code if rec.error_code is not None or rec.kind != FAULT else out.error_code
    if not out.accepts(Outcome(rec.kind, rec.vector, code)):
        return False
    if rec.kind == OK and rec.linear_address is not None:
        return expected.linear_address is not None and expected.linear_address & MASK64 == rec.linear_address
    return True


def _model_inputs(rec: ExitRecord) -> tuple[list[str], ExitInfo | None, Access | None]:
    missing = []
    if rec.instruction is None:
        missing.append("instruction (exit reason 46/47 needs instruction_info bits 29:28)")
    if rec.instruction_info is None:
        missing.append("instruction_info")
    if rec.exit_qualification is None:
        missing.append("exit_qualification")
    if rec.state is None:
        missing.append(rec.state_problem or "no CPU state")
    if rec.result is None:
        missing.append("result")
    if missing:
        return missing, None, None
    assert rec.instruction is not None and rec.instruction_info is not None and rec.exit_qualification is not None
    assert rec.state is not None
    length = rec.length
    if length is None and rec.raw is not None and rec.code_size is not None:
        d = _decode(rec.raw, rec.code_size)
        length = 0 if isinstance(d, DecodeError) else d.length
    exit = ExitInfo(rec.instruction, rec.instruction_info, rec.exit_qualification, length or 0)
    return [], exit, access_for(rec.instruction, rec.state.code_size)


def _result_json(r: Result) -> dict[str, Any]:
    d: dict[str, Any] = {"outcome": r.outcome.short()}
    if r.linear_address is not None:
        d["linear_address"] = hex(r.linear_address & MASK64)
    if r.outcome.reason:
        d["reason"] = r.outcome.reason
    return d


@dataclass(frozen=True)
class NamedModel:
    name: str
    function: Model


def consumer_models(exclude: str | None) -> list[NamedModel]:
    from vmxaddr.models import REGISTRY

    return [NamedModel(m.name, m.function) for m in REGISTRY.values() if m.kind == "consumer" and m.name != exclude]


class Checker:
    """Feed it a trace line by line (`feed`); it returns one verdict per exit record and keeps
    running counts for `summary`. Memory: the state table and the counters only."""

    def __init__(self, reference: str = "sdm", reference_model: Model | None = None,
                 models: list[NamedModel] | None = None, fingerprint: str = "wrong",
                 max_states: int = DEFAULT_MAX_STATES) -> None:
        from vmxaddr.models import get

        self.reference = reference
        self.reference_model = reference_model or get(reference)
        self.models = consumer_models(reference) if models is None else models
        self.fingerprint = fingerprint
        self.table = StateTable(max_states)
        self.lines = 0
        self.exits = 0
        self.state_records = 0
        self.malformed = 0
        self.truncated: int | None = None
        self.wrong = 0
        self.counts: dict[str, Counter[str]] = {"hardware": Counter(), "hypervisor": Counter(),
                                                 "fingerprint": Counter()}
        self.missing: dict[str, Counter[str]] = {"hardware": Counter(), "hypervisor": Counter()}
        self.hardware_fields: Counter[str] = Counter()
        self.model_matches: Counter[str] = Counter()  # over the records fingerprinted
        self.fingerprinted = 0
        self.wrong_matches: Counter[str] = Counter()  # over the wrong-hypervisor records
        self.wrong_fingerprinted = 0

    # -- one line --------------------------------------------------------------------------
    def feed(self, line: int, data: bytes, terminated: bool = True, too_long: bool = False) -> dict[str, Any] | None:
        """The verdict for one line (None for a blank line or a state record)."""
        self.lines = line
        if too_long:
            return self._malformed(line, f"longer than {MAX_LINE} bytes")
        if not data.strip():
            return None
        try:
            obj = json.loads(data)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            if not terminated:
                self.truncated = line
                return {"type": "truncated", "line": line,
                        "reason": "the final line has no newline and is not valid JSON: the trace was cut off"}
            return self._malformed(line, f"not JSON ({e})")
        try:
            if not isinstance(obj, dict):
                raise RecordError(f"a record must be a JSON object, not {type(obj).__name__}")
            kind = obj.get("type", "exit")
            if kind == "state":
                self._state_record(obj)
                return None
            if kind != "exit":
                raise RecordError(f"type must be \"exit\" or \"state\", not {kind!r}")
            rec = parse_exit(obj, line, self.table)
        except RecordError as e:
            return self._malformed(line, str(e))
        except (StateError, RecursionError) as e:
            return self._malformed(line, f"state: {e}")
        return self.check(rec)

    def _malformed(self, line: int, reason: str) -> dict[str, Any]:
        self.malformed += 1
        return {"type": "malformed", "line": line, "reason": reason}

    def _state_record(self, obj: dict[str, Any]) -> None:
        for k in obj:
            if k not in STATE_KEYS:
                raise RecordError(f"unknown key {k!r} in a state record (known: {', '.join(sorted(STATE_KEYS))})")
        if obj.get("id") is None or obj.get("state") is None:
            raise RecordError("a state record needs \"id\" and \"state\"")
        key = _ref(obj["id"], "id")
        base = CpuState.for_code_size(32)
        if obj.get("state_ref") is not None:
            ref = _ref(obj["state_ref"], "state_ref")
            found = self.table.get(ref)
            if found is None:
                raise RecordError(f"state_ref {ref!r} is unknown (never defined, or evicted)")
            base = found
        try:
            st = state_from_json(obj["state"], base)
        except StateError as e:
            raise RecordError(f"state: {e}") from None
        self.table.put(key, st)
        self.state_records += 1

    # -- one exit record ------------------------------------------------------------------
    def check(self, rec: ExitRecord) -> dict[str, Any]:
        self.exits += 1
        v: dict[str, Any] = {"type": "verdict", "line": rec.line, "instruction": rec.instruction,
                             "exit_reason": rec.exit_reason}
        if rec.rip is not None:
            v["rip"] = hex(rec.rip)
        hw = check_hardware(rec)
        v["hardware"] = hw
        missing, exit, access = _model_inputs(rec)
        results: Result | None = None
        if missing:
            hv: dict[str, Any] = {"verdict": "not-checkable", "missing": missing}
        else:
            assert exit is not None and access is not None and rec.state is not None and rec.result is not None
            hv = {"against": self.reference, "recorded": rec.result.to_json()}
            try:
                results = run_model(self.reference_model, exit, rec.state, access)
            except InvalidExitInfo as e:
                hv = {"verdict": "not-checkable", "missing": [f"valid exit information ({e})"]}
            except Exception as e:  # a user's reference model must not stop a multi-GB check
                hv = {"verdict": "not-checkable", "missing": [f"an answer from {self.reference} "
                                                                f"({type(e).__name__}: {e})"]}
            if results is not None:
                ok = answer_matches(results, rec.result)
                hv["verdict"] = "correct" if ok else "wrong"
                if not ok:  # the reason with its numbers (the quiet run formats none)
                    results = run_model(self.reference_model, exit, rec.state, access, explain=True)
                hv["expected"] = _result_json(results)
        v["hypervisor"] = hv
        wrong_hv = hv["verdict"] == "wrong"
        if missing or exit is None:
            fp: dict[str, Any] = {"verdict": "not-checkable", "missing": missing or hv.get("missing", [])}
        elif not self.models:
            fp = {"verdict": "skipped", "reason": "no registered models besides the reference"}
        elif self.fingerprint == "all" or (self.fingerprint == "wrong" and wrong_hv):
            assert rec.state is not None and rec.result is not None and access is not None
            names = []
            for m in self.models:
                try:
                    r = run_model(m.function, exit, rec.state, access)
                except Exception:  # noqa: BLE001 - a model that cannot answer does not match
                    continue
                if answer_matches(r, rec.result):
                    names.append(m.name)
            fp = {"verdict": "matched" if names else "unmatched", "models": names}
            self.fingerprinted += 1
            self.model_matches.update(names)
            if wrong_hv:
                self.wrong_fingerprinted += 1
                self.wrong_matches.update(names)
        else:
            fp = {"verdict": "skipped"}
        v["fingerprint"] = fp
        wrong = hw["verdict"] == "inconsistent" or wrong_hv
        checkable = hw["verdict"] != "not-checkable" or hv["verdict"] != "not-checkable"
        v["status"] = "wrong" if wrong else ("ok" if checkable else "not-checkable")
        self.wrong += wrong
        self.counts["hardware"][hw["verdict"]] += 1
        self.counts["hypervisor"][hv["verdict"]] += 1
        self.counts["fingerprint"][fp["verdict"]] += 1
        for key, d in (("hardware", hw), ("hypervisor", hv)):
            for what in d.get("missing", ()):
                self.missing[key][_category(what)] += 1
        for d in hw.get("differences", ()):
            self.hardware_fields[d["field"]] += 1
        return v

    # -- the end ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        every = sorted(n for n, c in self.model_matches.items() if c == self.fingerprinted) if self.fingerprinted else []
        every_wrong = (sorted(n for n, c in self.wrong_matches.items() if c == self.wrong_fingerprinted)
                       if self.wrong_fingerprinted else [])
        return {
            "type": "summary",
            "against": self.reference,
            "lines": self.lines,
            "exit_records": self.exits,
            "state_records": self.state_records,
            "wrong_records": self.wrong,
            "malformed_lines": self.malformed,
            "truncated_final_line": self.truncated,
            "states_evicted": self.table.evicted,
            "hardware": dict(self.counts["hardware"]),
            "hardware_fields_differing": dict(self.hardware_fields),
            "hypervisor": dict(self.counts["hypervisor"]),
            "not_checkable_because": {k: dict(c) for k, c in self.missing.items()},
            "fingerprint": {
                "mode": self.fingerprint,
                "records": self.fingerprinted,
                "matches": dict(self.model_matches.most_common()),
                "consistent_with_every_record": every,
                "wrong_records": self.wrong_fingerprinted,
                "matches_on_wrong_records": dict(self.wrong_matches.most_common()),
                "consistent_with_every_wrong_record": every_wrong,
            },
            "models_compared": len(self.models),
            "exit_status": 1 if self.wrong or self.malformed else 0,
        }


def _category(what: str) -> str:
    """Group reasons for the summary (bounded: details in parentheses and ids are dropped)."""
    base = what.split(" (")[0]
    if base.startswith("state_ref "):
        return "unknown state_ref"
    return base


# -- reading ---------------------------------------------------------------------------------------

def iter_lines(stream: IO[bytes], max_line: int = MAX_LINE) -> Iterator[tuple[int, bytes, bool, bool, int]]:
    """(line number, bytes, ended with a newline, too long, bytes consumed) per line; never holds
    more than `max_line` bytes of one line."""
    n = 0
    while True:
        chunk = stream.readline(max_line + 1)
        if not chunk:
            return
        n += 1
        size = len(chunk)
        if size > max_line and not chunk.endswith(b"\n"):
            while True:  # skip the rest of an over-long line
                more = stream.readline(max_line)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield n, b"", True, True, size
            continue
        terminated = chunk.endswith(b"\n")
        yield n, chunk, terminated, False, size


def check_stream(stream: IO[bytes], checker: Checker, emit: Callable[[dict[str, Any]], None],
                 progress: Progress | None = None, total_bytes: int | None = None) -> dict[str, Any]:
    done = 0
    for n, data, terminated, too_long, size in iter_lines(stream):
        done += size
        v = checker.feed(n, data, terminated, too_long)
        if v is not None:
            emit(v)
        if progress is not None and not n & 1023:
            note = f"{100 * done / total_bytes:.0f}% of the file" if total_bytes else ""
            progress.update(n, note)
    return checker.summary()


# -- text output ---------------------------------------------------------------------------------

def verdict_text(v: dict[str, Any]) -> str | None:
    """One line for a wrong record, a malformed or truncated line; None for the rest."""
    if v["type"] == "malformed":
        return f"line {v['line']}: malformed: {v['reason']}"
    if v["type"] == "truncated":
        return f"line {v['line']}: truncated: {v['reason']}"
    if v.get("status") != "wrong":
        return None
    where = f"line {v['line']}" + (f" rip {v['rip']}" if "rip" in v else "") + f" {v['instruction'] or v['exit_reason']}"
    parts = []
    hw = v["hardware"]
    if hw["verdict"] == "inconsistent":
        ds = []
        for d in hw["differences"]:
            if d["field"] == "instruction_info":
                bits = ", ".join(f"{b['name']} [{b['bits']}] {b['recorded']} not {b['expected']}" for b in d["bits"])
                ds.append(f"instruction_info {d['recorded']} not {d['expected']} ({bits})")
            elif "recorded" in d:
                ds.append(f"{d['field']} {d['recorded']} not {d['expected']}" + (f" ({d['detail']})" if "detail" in d else ""))
            else:
                ds.append(d["detail"])
        parts.append(f"hardware inconsistent with {hw['decoded']}: " + "; ".join(ds) if "decoded" in hw
                     else "hardware inconsistent: " + "; ".join(ds))
    hv = v["hypervisor"]
    if hv["verdict"] == "wrong":
        exp = hv["expected"]
        rec = Recorded(hv["recorded"]["kind"], hv["recorded"].get("vector"), hv["recorded"].get("error_code"),
                       int(hv["recorded"]["linear_address"], 16) if "linear_address" in hv["recorded"] else None)
        want = exp["outcome"]
        if "linear_address" in exp:
            want += f" {exp['linear_address']}" if want == "ok" else f" (linear address {exp['linear_address']})"
        parts.append(f"hypervisor wrong: {rec.short()}, {hv['against']} says {want}")
    fp = v["fingerprint"]
    if fp.get("verdict") == "matched":
        parts.append("answer matches " + ", ".join(fp["models"]))
    elif fp.get("verdict") == "unmatched":
        parts.append("answer matches no registered model")
    return f"{where}: " + "; ".join(parts)


def summary_text(s: dict[str, Any]) -> str:
    def counts(c: dict[str, int], order: tuple[str, ...]) -> str:
        return ", ".join(f"{c.get(k, 0)} {k.replace('-', ' ')}" for k in order)

    out = [f"checked {s['exit_records']} exit records ({s['state_records']} state records, {s['lines']} lines) "
           f"against {s['against']}: {s['wrong_records']} wrong"]
    out.append("  hardware:   " + counts(s["hardware"], ("consistent", "inconsistent", "not-checkable")))
    if s["hardware_fields_differing"]:
        out.append("    fields differing: " + ", ".join(f"{k} {n}" for k, n in s["hardware_fields_differing"].items()))
    out.append("  hypervisor: " + counts(s["hypervisor"], ("correct", "wrong", "not-checkable")))
    for key in ("hardware", "hypervisor"):
        why = s["not_checkable_because"][key]
        if why:
            out.append(f"    {key} not checkable: " + ", ".join(f"{k} {n}" for k, n in sorted(why.items(), key=lambda x: -x[1])))
    fp = s["fingerprint"]
    if fp["wrong_records"] and s["models_compared"]:
        top = ", ".join(f"{k} {n}/{fp['wrong_records']}" for k, n in list(fp["matches_on_wrong_records"].items())[:8])
        out.append(f"  fingerprint of the wrong answers: {top or 'no registered model matches'}")
        if fp["consistent_with_every_wrong_record"]:
            out.append("    every wrong answer matches: " + ", ".join(fp["consistent_with_every_wrong_record"]))
    if fp["mode"] != "none" and not s.get("models_compared", 1):
        out.append("  fingerprint: no models to compare (only the reference is registered)")
    elif fp["mode"] == "all" and fp["records"]:
        every = fp["consistent_with_every_record"]
        out.append(f"  models consistent with all {fp['records']} checkable answers: {', '.join(every) or 'none'}")
    if s["malformed_lines"]:
        out.append(f"  malformed lines: {s['malformed_lines']}")
    if s["truncated_final_line"]:
        out.append(f"  truncated final line {s['truncated_final_line']} (not checked)")
    if s["states_evicted"]:
        out.append(f"  state records evicted from the table: {s['states_evicted']} (see --max-states)")
    return "\n".join(out)


# -- synthesis -------------------------------------------------------------------------------------

def _h(v: int) -> str:
    return hex(v)


def _recorded_from(result: Result, rng: random.Random) -> Recorded:
    out = result.outcome
    if out.kind == OK or (out.kind == IMPL and rng.random() < 0.5):
        return Recorded(OK, linear_address=None if result.linear_address is None else result.linear_address & MASK64)
    return Recorded(FAULT, out.vector, out.error_code)


def synth(model: Model, n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Records of a trace as `model` would have handled n random cases (vmxaddr.gen, seeded):
    state records shared by several exits, some exits overriding registers inline, the exit
    information from the SDM encoder under a random policy, and the model's answer."""
    from vmxaddr.gen import MNEMONICS, RandomChooser, gen_encoding, gen_policy, gen_state

    rng = random.Random(seed)
    ch = RandomChooser(rng)
    pools: dict[int, list[tuple[str, CpuState]]] = {16: [], 32: [], 64: []}
    next_id = 0
    made = 0
    while made < n:
        raw, cs = gen_encoding(ch, mnemonics=MNEMONICS)
        try:
            instr = decode(raw, cs)
        except DecodeError:
            continue
        rec: dict[str, Any] = {"type": "exit"}
        pool = pools[cs]
        if pool and rng.random() < 0.7:
            key, st = pool[int(rng.random() * len(pool))]
            rec["state_ref"] = key
            if rng.random() < 0.5:
                regs = {REG64[rng.randrange(16)]: _h(_interesting(rng)) for _ in range(rng.randint(1, 3))}
                rec["state"] = {"registers": regs}
                st = state_from_json(rec["state"], st)
        else:
            st = gen_state(ch, cs)
            if st.code_size != cs:
                continue  # virtual-8086 mode runs 16-bit code only; these bytes were made for cs
            if rng.random() < 0.2:
                rec["state"] = st.to_json()
            else:
                key = f"s{next_id}"
                next_id += 1
                yield {"type": "state", "id": key, "state": st.to_json()}
                rec["state_ref"] = key
                pool.append((key, st))
                if len(pool) > 8:
                    pool.pop(0)
        rip = rng.choice((st.rip, 0x1000, rng.getrandbits(32), rng.getrandbits(47) if cs == 64 else 0xFFF0))
        st = replace(st, rip=rip)
        pol = gen_policy(ch)
        pol = Policy(pol.exit_qual, pol.undefined_bits, rng.choice(IGNORED_SEGMENT_POLICIES),
                     rng.choice(SI_DI_POLICIES), pol.seed)
        exit = encode(instr, rip, pol)
        rec.update({"exit_reason": exit.exit_reason, "instruction": instr.mnemonic, "rip": _h(rip),
                    "bytes": raw.hex(), "code_size": cs, "instruction_info": _h(exit.instruction_info),
                    "exit_qualification": _h(exit.exit_qualification), "length": exit.length})
        try:
            result = run_model(model, exit, st, access_of(instr))
        except Exception:  # noqa: BLE001 - a model that cannot answer leaves the result out
            result = None
        if result is not None:
            rec["result"] = _recorded_from(result, rng).to_json()
        made += 1
        yield rec


def _interesting(rng: random.Random) -> int:
    return rng.choice((0, 0x1000, 0xFFFF, 0x10000, 0xFFFFFFFF, 1 << 32, (1 << 47) - 8, MASK64 - 0x27,
                       rng.getrandbits(32), rng.getrandbits(64)))


# -- import from ftrace ----------------------------------------------------------------------------

# kvm_exit (and kvm_nested_vmexit since Linux 6.12, which shares its format):
#   "vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info 0x%08x error_code 0x%08x"
# earlier kvm_exit: "vcpu %u reason %s rip 0x%lx info %llx %llx" (and without "vcpu %u" before ~3.x)
# earlier kvm_nested_vmexit:
#   "rip: 0x%016llx reason: %s%s%s ext_inf1: 0x%016llx ext_inf2: 0x%016llx ext_int: 0x%08x ext_int_err: 0x%08x"
_EVENT = re.compile(r"(?:^|\s)(kvm_exit|kvm_nested_vmexit):\s+(.*)$")
_TIME = re.compile(r"\s(\d+\.\d+):\s+kvm_(?:nested_vm)?exit:")
_NEW = re.compile(r"^(?:vcpu (?P<vcpu>\d+) )?reason (?P<reason>\S+)(?P<flags>(?: [A-Z_]+)*) rip 0x(?P<rip>[0-9a-fA-F]+) "
                  r"(?:info1 0x(?P<info1>[0-9a-fA-F]+) info2 0x(?P<info2>[0-9a-fA-F]+)"
                  r"(?: intr_info 0x(?P<intr>[0-9a-fA-F]+) error_code 0x(?P<err>[0-9a-fA-F]+))?"
                  r"|info (?P<oinfo1>[0-9a-fA-F]+) (?P<oinfo2>[0-9a-fA-F]+))")
_OLD_NESTED = re.compile(r"^rip: 0x(?P<rip>[0-9a-fA-F]+) reason: (?P<reason>\S+)(?P<flags>(?: [A-Z_]+)*) "
                         r"ext_inf1: 0x(?P<info1>[0-9a-fA-F]+) ext_inf2: 0x(?P<info2>[0-9a-fA-F]+)")


def _reason(name: str) -> int | None:
    if name.upper() in KVM_REASON_NAMES:
        return KVM_REASON_NAMES[name.upper()]
    try:  # __print_symbolic prints an unnamed value as a number
        n = int(name, 0)
    except ValueError:
        return None
    return n if n in REASON_INSTRUCTIONS else None


def import_ftrace(lines: Iterable[str], problems: Callable[[int, str], None]) -> Iterator[dict[str, Any]]:
    """Exit records from the kvm_exit / kvm_nested_vmexit lines of a trace-cmd report or tracefs
    `trace` text; other events and exits of other reasons are skipped. The tracepoints carry the
    exit reason, RIP and exit qualification (info1), not the instruction-information field, the
    bytes or the state, so most checks of the result are "not checkable"."""
    for n, line in enumerate(lines, 1):
        m = _EVENT.search(line.rstrip("\n"))
        if not m:
            continue
        event, body = m.group(1), m.group(2).strip()
        f = _NEW.match(body) or _OLD_NESTED.match(body)
        if not f:
            problems(n, f"{event} line in a format this importer does not know: {body[:80]!r}")
            continue
        g = f.groupdict()
        if g.get("flags", "").strip():
            continue  # FAILED_VMENTRY: not an exit caused by the instruction
        reason = _reason(g["reason"])
        if reason is None:
            continue
        info1 = g.get("info1") or g.get("oinfo1")
        info2 = g.get("info2") or g.get("oinfo2")
        rec: dict[str, Any] = {"type": "exit", "exit_reason": reason}
        names = REASON_INSTRUCTIONS[reason]
        if len(names) == 1:
            rec["instruction"] = names[0]
        rec["rip"] = hex(int(g["rip"], 16))
        if info1 is not None:
            rec["exit_qualification"] = hex(int(info1, 16))
        source: dict[str, Any] = {"format": "ftrace", "line": n, "event": event}
        if g.get("vcpu") is not None:
            rec["vcpu"] = int(g["vcpu"])
        t = _TIME.search(line)
        if t:
            source["timestamp"] = t.group(1)
        if info2 is not None:
            source["info2"] = hex(int(info2, 16))
        rec["source"] = source
        yield rec


# -- the command line --------------------------------------------------------------------------------

CHECK_EPILOG = """examples:
  vmxaddr trace synth --model kvm-f9eb4af6 -n 10000 | vmxaddr check-trace -
      a trace as KVM of 2015 would have handled 10000 random cases: the records where it differs
      from the SDM are flagged, and their answers fingerprinted to the model
  vmxaddr check-trace --against kvm-current --json trace.jsonl | jq 'select(.status == "wrong")'
      check a trace against today's KVM instead of the SDM, as a JSON Lines stream
  vmxaddr trace import --from ftrace trace.txt | vmxaddr check-trace -
      what a kvm_exit log allows (little: it carries no instruction bytes or CPU state)

verdicts per exit record:
  hardware    consistent | inconsistent | not-checkable (the recorded instruction-information
              field, exit qualification and length against what the bytes imply; undefined
              bits and exit-qualification bits above the address size are ignored)
  hypervisor  correct | wrong | not-checkable (the recorded result against the reference model)
  fingerprint the registered models whose answer equals the recorded one
exit status: 0 nothing wrong, 1 a wrong record or a malformed line, 2 bad usage.
The trace format is in docs/trace-format.md.
"""


def _open_input(path: str) -> tuple[IO[bytes], int | None]:
    from vmxaddr.cli import fail

    if path == "-":
        return sys.stdin.buffer, None
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError:
        size = None
    return f, size or None


def decompressing(stream: IO[bytes]) -> IO[bytes]:
    """`stream`, or a reader of its decompressed bytes when it starts like gzip or zstd data."""
    peek = getattr(stream, "peek", None)
    head = peek(4)[:4] if peek else b""
    if head[:2] == b"\x1f\x8b":
        import gzip

        return gzip.GzipFile(fileobj=stream)  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True))  # type: ignore[arg-type]
    return stream


def cmd_check(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail
    from vmxaddr.models import UnknownModel, get

    try:
        ref = get(args.against)
    except UnknownModel as e:
        fail(str(e))
    if args.max_states < 1:
        fail("--max-states must be at least 1")
    checker = Checker(args.against, ref, fingerprint=args.fingerprint, max_states=args.max_states)
    raw_stream, size = _open_input(args.file)
    stream = decompressing(raw_stream)
    if stream is not raw_stream:
        size = None  # progress counts lines only: the compressed size says little
    out = sys.stdout
    if args.json:
        def emit(v: dict[str, Any]) -> None:
            out.write(json.dumps(v, separators=(",", ":")) + "\n")
    else:
        def emit(v: dict[str, Any]) -> None:
            t = verdict_text(v)
            if t is not None:
                out.write(t + "\n")
    with Progress(None, "check-trace", enabled=not args.quiet, unit="lines") as prog:
        try:
            summary = check_stream(stream, checker, emit, prog, size)
        finally:
            if raw_stream is not sys.stdin.buffer:
                raw_stream.close()
    if args.json:
        out.write(json.dumps(summary, separators=(",", ":")) + "\n")
    else:
        out.write(summary_text(summary) + "\n")
    return int(summary["exit_status"])


def cmd_synth(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail
    from vmxaddr.models import UnknownModel, get

    try:
        model = get(args.model)
    except UnknownModel as e:
        fail(str(e))
    if args.n < 0:
        fail("-n must not be negative")
    if args.out and args.out != "-":
        try:
            out: IO[str] = open(args.out, "w")  # noqa: SIM115
        except OSError as e:
            fail(f"cannot write {args.out}: {e.strerror}")
    else:
        out = sys.stdout
    try:
        with Progress(args.n, "synth", enabled=not args.quiet, unit="exits") as prog:
            made = 0
            for rec in synth(model, args.n, args.seed):
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                if rec["type"] == "exit":
                    made += 1
                    if not made & 1023:
                        prog.update(made)
            prog.update(made)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail

    if args.file == "-":
        src: IO[str] = sys.stdin
    else:
        try:
            src = open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as e:
            fail(f"cannot read {args.file}: {e.strerror}")
    bad = 0

    def problem(n: int, msg: str) -> None:
        nonlocal bad
        bad += 1
        print(f"line {n}: {msg}", file=sys.stderr)

    count = 0
    out = sys.stdout
    try:
        for rec in import_ftrace(src, problem):
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            count += 1
    finally:
        if src is not sys.stdin:
            src.close()
    if not args.quiet:
        print(f"imported {count} exits of VMX-family instructions" + (f"; {bad} lines not understood" if bad else ""),
              file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    from vmxaddr.cli import Parser, no_command

    p = sub.add_parser("check-trace", help="check a trace of VM exits: processor report, hypervisor answer, fingerprint",
                       description="Check a JSON Lines trace of VM exits caused by VMX-family instructions, record by "
                       "record: did the processor report what the instruction bytes imply, did the hypervisor "
                       "compute the reference model's address or fault, and which known implementations give the "
                       "answer it recorded. Streams: memory stays flat on multi-gigabyte traces.",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the trace (JSON Lines, docs/trace-format.md); - reads standard input")
    p.add_argument("--against", default="sdm", metavar="MODEL",
                   help="reference model for the hypervisor verdict (default sdm; `vmxaddr models` lists them)")
    p.add_argument("--fingerprint", choices=("wrong", "all", "none"), default="wrong",
                   help="run every registered model on: the records the hypervisor got wrong (default), all "
                   "checkable records (slower; the summary then names the models consistent with the whole trace), "
                   "or none")
    p.add_argument("--max-states", type=int, default=DEFAULT_MAX_STATES, metavar="N",
                   help=f"state records kept for state_ref (default {DEFAULT_MAX_STATES}, least recently used dropped)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines: one verdict object per exit record, one per malformed line, then a summary "
                   "object (type \"summary\") — a stream rather than one object, so memory stays flat")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    p.set_defaults(func=cmd_check)

    t = sub.add_parser("trace", help="make traces: import a kvm_exit log, or synthesise one from a model",
                       description="Make traces for check-trace.")
    tsub = t.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", parser_class=Parser)
    s = tsub.add_parser("synth", help="a trace as a model would have handled random cases",
                        description="Write a trace (JSON Lines) as MODEL would have handled N random cases from "
                        "vmxaddr's generator: instruction bytes, the exit information a processor reports (SDM "
                        "encoder, random policy), the CPU state (shared state records and inline changes) and the "
                        "model's answer. Same seed, same trace.",
                        epilog="example:\n  vmxaddr trace synth --model kvm-f9eb4af6 -n 1000 --seed 7 | vmxaddr check-trace -",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="the hypervisor model whose answers are recorded")
    s.add_argument("-n", type=int, default=1000, help="number of exit records (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    s.set_defaults(func=cmd_synth)
    i = tsub.add_parser("import", help="convert kvm_exit / kvm_nested_vmexit lines of an ftrace log",
                        description="Convert the kvm_exit and kvm_nested_vmexit events of a trace-cmd report or "
                        "tracefs `trace` text into trace records: exit reason, RIP and exit qualification (info1). "
                        "Exits of other reasons are skipped. The records carry no instruction bytes, "
                        "instruction-information field or CPU state, so check-trace can say little about them.",
                        epilog="example:\n  trace-cmd record -e kvm:kvm_exit ...; trace-cmd report > log.txt\n"
                        "  vmxaddr trace import --from ftrace log.txt > trace.jsonl",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--from", dest="source", choices=("ftrace",), required=True, help="the log's format")
    i.add_argument("file", metavar="FILE", help="the log; - reads standard input")
    i.add_argument("-q", "--quiet", action="store_true", help="no count on standard error")
    i.set_defaults(func=cmd_import)
    t.set_defaults(func=lambda a: no_command(t))


__all__ = ["Checker", "ExitRecord", "Recorded", "answer_matches", "check_hardware", "check_stream", "import_ftrace",
           "iter_lines", "parse_exit", "state_from_json", "synth"]
