"""Parsing: a JSON object of the trace into an `ExitRecord` or a state of the `StateTable`,
every field checked (a bad one is a `RecordError` naming it)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

from vmxaddr.isa import SPECS
from vmxaddr.models.base import FAULT, OK
from vmxaddr.state import CpuState, StateError, _show, check_int
from vmxaddr.trace.format import (
    DEFAULT_MAX_STATES,
    EXIT_KEYS,
    REASON_INSTRUCTIONS,
    RESULT_KEYS,
    STATE_KEYS,
    VECTORS,
    ExitRecord,
    Recorded,
    RecordError,
    resolve_instruction,
)


def _uint(obj: dict[str, Any], key: str, bits: int) -> int | None:
    """An unsigned field of `bits` bits, through the one validator (state.check_int)."""
    v = obj.get(key)
    if v is None:
        return None
    if type(v) is int and 0 <= v < 1 << bits:
        return v
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise RecordError(f"{key}: expected an integer or a hex string, got {_show(v)}")
    try:
        return check_int(v, key, 0, (1 << bits) - 1)
    except StateError as e:
        raise RecordError(str(e)) from None


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


class StateTable:
    """State records by id, the most recently defined or used `limit` of them (a record naming an
    id in state_ref uses it, even a malformed one: checker.Checker.feed)."""

    def __init__(self, limit: int = DEFAULT_MAX_STATES) -> None:
        self.limit = limit
        self.states: OrderedDict[str, CpuState] = OrderedDict()
        self.evicted = 0

    def get(self, key: str) -> CpuState | None:
        """The state record `key` names, or None (least recently used evicted first)."""
        st = self.states.get(key)
        if st is not None:
            self.states.move_to_end(key)
        return st

    def put(self, key: str, st: CpuState) -> None:
        """Define state `key`, evicting the least recently used beyond the limit."""
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
    """An exit record from its JSON object, every field checked; RecordError naming the bad one."""
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
    derived = resolve_instruction(reason, info, _uint(obj, "exit_qualification", 64))
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
    source = obj.get("source")
    processor = source.get("processor") if isinstance(source, dict) else None
    return ExitRecord(line, reason, instruction, rip, raw, code_size, info, _uint(obj, "exit_qualification", 64),
                      _uint(obj, "length", 32), state, problem, res, _uint(obj, "extended_instruction_info", 64),
                      processor if isinstance(processor, str) else None)



def ref_of(obj: dict[str, Any]) -> str | None:
    """The id a record's state_ref names, if it is a valid one."""
    v = obj.get("state_ref")
    return str(v) if isinstance(v, str | int) and not isinstance(v, bool) else None


def parse_state_record(obj: dict[str, Any], table: StateTable) -> tuple[str, CpuState]:
    """Store a state record (`{"type": "state", "id": …, "state": {…}}`) in `table`; its id and state."""
    for k in obj:
        if k not in STATE_KEYS:
            raise RecordError(f"unknown key {k!r} in a state record (known: {', '.join(sorted(STATE_KEYS))})")
    if obj.get("id") is None or obj.get("state") is None:
        raise RecordError("a state record needs \"id\" and \"state\"")
    key = _ref(obj["id"], "id")
    base = CpuState.for_code_size(32)
    if obj.get("state_ref") is not None:
        ref = _ref(obj["state_ref"], "state_ref")
        found = table.get(ref)
        if found is None:
            raise RecordError(f"state_ref {ref!r} is unknown (never defined, or evicted)")
        base = found
    try:
        st = state_from_json(obj["state"], base)
    except StateError as e:
        raise RecordError(f"state: {e}") from None
    table.put(key, st)
    return key, st
