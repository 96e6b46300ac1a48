"""The checker: a trace line by line, each line through the same steps —
  read      the line's JSON (records.read_line): malformed, truncated, or an object;
  parse     a state record into the state table, or an exit record (records.parse_exit);
  hardware  the processor's report against the bytes (hardware.check_hardware);
  hypervisor the recorded answer against the reference model (hypervisor.check_hypervisor);
  fingerprint the registered models giving the recorded answer (hypervisor.fingerprint);
  count     the verdicts into the running tally (tally.Tally) — the summary at the end."""

from __future__ import annotations

import json
from typing import Any

from vmxaddr.models.base import Model
from vmxaddr.state import StateError
from vmxaddr.trace.format import DEFAULT_MAX_STATES, MAX_LINE, ExitRecord, RecordError
from vmxaddr.trace.hardware import check_hardware
from vmxaddr.trace.hypervisor import NamedModel, check_hypervisor, consumer_models, fingerprint
from vmxaddr.trace.records import StateTable, parse_exit, parse_state_record
from vmxaddr.trace.tally import Tally


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
        self.tally = Tally()

    # -- read and parse one line -----------------------------------------------------------
    def feed(self, line: int, data: bytes, terminated: bool = True, too_long: bool = False) -> dict[str, Any] | None:
        """The verdict for one line (None for a blank line or a state record)."""
        self.tally.lines = line
        if too_long:
            return self._malformed(line, f"longer than {MAX_LINE} bytes")
        if not data.strip():
            return None
        try:
            obj = json.loads(data)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            if not terminated:
                self.tally.truncated = line
                return {"type": "truncated", "line": line,
                        "reason": "the final line has no newline and is not valid JSON: the trace was cut off"}
            return self._malformed(line, f"not JSON ({e})")
        try:
            if not isinstance(obj, dict):
                raise RecordError(f"a record must be a JSON object, not {type(obj).__name__}")
            kind = obj.get("type", "exit")
            if kind == "state":
                parse_state_record(obj, self.table)
                self.tally.state_records += 1
                return None
            if kind == "summary":
                return None  # the last line of `trace synth/import --json`: counts, nothing to check
            if kind != "exit":
                raise RecordError(f"type must be \"exit\", \"state\" or \"summary\", not {kind!r}")
            rec = parse_exit(obj, line, self.table)
        except RecordError as e:
            return self._malformed(line, str(e))
        except (StateError, RecursionError) as e:
            return self._malformed(line, f"state: {e}")
        return self.check(rec)

    def _malformed(self, line: int, reason: str) -> dict[str, Any]:
        self.tally.malformed += 1
        return {"type": "malformed", "line": line, "reason": reason}

    # -- check one exit record ------------------------------------------------------------
    def check(self, rec: ExitRecord) -> dict[str, Any]:
        v: dict[str, Any] = {"type": "verdict", "line": rec.line, "instruction": rec.instruction,
                             "exit_reason": rec.exit_reason}
        if rec.rip is not None:
            v["rip"] = hex(rec.rip)
        hw = v["hardware"] = check_hardware(rec)
        hv, missing, exit, access = check_hypervisor(rec, self.reference, self.reference_model)
        v["hypervisor"] = hv
        wrong_hv = hv["verdict"] == "wrong"
        fp = v["fingerprint"] = self._fingerprint(rec, hv, missing, exit, access, wrong_hv)
        wrong = hw["verdict"] == "inconsistent" or wrong_hv
        checkable = hw["verdict"] != "not-checkable" or hv["verdict"] != "not-checkable"
        v["status"] = "wrong" if wrong else ("ok" if checkable else "not-checkable")
        self.tally.add(hw, hv, fp, wrong)
        return v

    def _fingerprint(self, rec: ExitRecord, hv: dict[str, Any], missing: list[str], exit: Any, access: Any,
                     wrong_hv: bool) -> dict[str, Any]:
        if missing or exit is None:
            return {"verdict": "not-checkable", "missing": missing or hv.get("missing", [])}
        if not self.models:
            return {"verdict": "skipped", "reason": "no registered models besides the reference"}
        if self.fingerprint == "all" or (self.fingerprint == "wrong" and wrong_hv):
            assert rec.state is not None and rec.result is not None and access is not None
            names = fingerprint(self.models, exit, rec.state, access, rec.result)
            self.tally.add_fingerprint(names, wrong_hv)
            return {"verdict": "matched" if names else "unmatched", "models": names}
        return {"verdict": "skipped"}

    # -- the end ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        self.tally.evicted = self.table.evicted
        return self.tally.summary(self.reference, self.fingerprint, len(self.models))
