"""The checker: a trace line by line, each line through the same steps —
  read        the line's JSON (jsonline.loads): malformed, truncated, or an object;
  parse       a state record into the state table, or an exit record (records.parse_exit);
  hardware    the processor's report against the bytes (hardware.check_hardware);
  hypervisor  the recorded answer against the reference model (hypervisor.check_hypervisor);
  fingerprint the registered models giving the recorded answer (hypervisor.fingerprint);
  count       the verdicts into the running tally (tally.Tally) — the summary at the end.

What repeats is worked out once. A line already seen (byte for byte), whose state_ref names the
very state it named then, means what it meant then: its `Shape` (the verdict less the line
number, and what it counts) is reused. Below that, the hardware verdict is remembered per
(bytes, exit information) and the reference model's answer per (exit information, state, access)
(hypervisor.Answers). Every memo is bounded (MEMO_LINES, ANSWERS): memory stays flat."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from vmxaddr.models import get
from vmxaddr.models.base import Model
from vmxaddr.state import StateError
from vmxaddr.trace.format import DEFAULT_MAX_STATES, EXIT_KEYS, MAX_LINE, ExitRecord, FingerprintCheck, RecordError
from vmxaddr.trace.hardware import check_hardware
from vmxaddr.trace.hypervisor import Answers, NamedModel, check_hypervisor, consumer_models
from vmxaddr.trace.jsonline import NotJSON, encode, loads_exact
from vmxaddr.trace.parse import StateTable, parse_exit, parse_state_record, ref_of
from vmxaddr.trace.tally import Tally

MEMO_LINES = 8192  # distinct lines remembered; with the other memos 1 GB stays under 200 MB (docs/trace-format.md)
MEMO_LINE_BYTES = 1024  # longer lines (a whole state inline) seldom repeat: not remembered
PENDING = 4096  # shapes whose counts wait to be added to the tally


class Shape:
    """What one distinct line means, given the state its state_ref resolved to (`base`): for an
    exit record its verdict without the line number and what it adds to the counts; for a state
    record the state it defines."""

    __slots__ = ("ref", "base", "verdict", "hw", "hv", "fp", "wrong", "names", "wrong_hv", "reference_error",
                 "key", "state")

    def __init__(self, ref: str | None, base: Any) -> None:
        self.ref = ref
        self.base = base
        self.verdict: dict[str, Any] | None = None
        self.names: list[str] | None = None  # the fingerprint, when one was taken
        self.key: str | None = None
        self.state: Any = None


def _record_key(obj: dict[str, Any], ref: str | None, base: Any) -> tuple[Any, ...] | None:
    """What an exit record's verdict depends on (every key but vcpu and source, of which only
    source.processor counts) as bytes of JSON (so that 1, 1.0 and true stay apart), with the
    state it refers to; None for a record that is not memoised (an unknown key: parse_exit says
    which)."""
    if not EXIT_KEYS.issuperset(obj):
        return None
    g = obj.get
    src = g("source")
    return (encode((g("exit_reason"), g("instruction"), g("rip"), g("bytes"), g("code_size"), g("instruction_info"),
                    g("exit_qualification"), g("length"), g("state"), g("result"), g("extended_instruction_info"),
                    src.get("processor") if isinstance(src, dict) else None)), ref, id(base))


class Checker:
    """Feed it a trace line by line (`feed`); it returns one verdict per exit record and keeps
    running counts for `summary`. Memory: the state table, the bounded memos and the counters."""

    def __init__(self, reference: str = "sdm", reference_model: Model | None = None,
                 models: list[NamedModel] | None = None, fingerprint: str = "wrong",
                 max_states: int = DEFAULT_MAX_STATES) -> None:
        self.reference = reference
        self.reference_model = reference_model or get(reference)
        self.models = consumer_models(reference) if models is None else models
        self.fingerprint = fingerprint
        self.table = StateTable(max_states)
        self.tally = Tally()
        self.answers = Answers(self.reference_model)
        self.memo: dict[bytes, Shape] = {}  # by the line's bytes
        self.records: dict[tuple[Any, ...], Shape] = {}  # by what an exit record says (_record_key)
        self.pending: defaultdict[Shape, int] = defaultdict(int)

    # -- lines ------------------------------------------------------------------------------
    def feed_batch(self, n: int, lines: list[bytes | None], emit: Callable[[dict[str, Any]], None],
                   findings_only: bool = False) -> int:
        """Feed `lines` (numbered from n + 1; None for an over-long line), emitting each verdict
        (only wrong records, malformed and truncated lines with `findings_only`); the last line number."""
        pending, feed, memo, table = self.pending, self.feed, self.memo, self.table
        for data in lines:
            n += 1
            if data is not None:
                # self.remembered(data), inlined: the one step every repeated line takes
                shape = memo.get(data)
                if shape is not None and shape.ref is not None and table.get(shape.ref) is not shape.base:
                    shape = None
                if shape is not None and shape.verdict is not None:  # (a state record: feed puts it)
                    pending[shape] += 1
                    if shape.wrong or not findings_only:
                        v = shape.verdict.copy()
                        v["line"] = n
                        emit(v)
                    continue
                v = feed(n, data)
            else:
                v = feed(n, b"", too_long=True)
            if v is not None and (not findings_only or v.get("status", "wrong") == "wrong"):
                emit(v)
        self.tally.lines = n
        if len(pending) > PENDING:
            self.flush()
        return n

    def remembered(self, data: bytes) -> Shape | None:
        """The memo's shape for this line, if it still holds: the line names no state, or the state
        it names is the one it was checked under (not redefined since). The one check both
        feed and feed_batch make (naming the state also uses it: StateTable.get)."""
        shape = self.memo.get(data)
        if shape is not None and (shape.ref is None or self.table.get(shape.ref) is shape.base):
            return shape
        return None

    # -- one line ----------------------------------------------------------------------------
    def feed(self, line: int, data: bytes, terminated: bool = True, too_long: bool = False) -> dict[str, Any] | None:
        """The verdict for one line (None for a blank line or a state record)."""
        self.tally.lines = line
        shape = None if too_long else self.remembered(data)
        if shape is not None:
            return self._apply(shape, line)
        if too_long:
            return self._malformed(line, f"longer than {MAX_LINE} bytes")
        if not data.strip():
            return None
        # read
        try:
            obj, exact = loads_exact(data)
        except NotJSON as e:
            if not terminated:
                self.tally.truncated = line
                return {"type": "truncated", "line": line,
                        "reason": "the final line has no newline and is not valid JSON: the trace was cut off"}
            return self._malformed(line, f"not JSON ({e})")
        # parse
        try:
            if not isinstance(obj, dict):
                raise RecordError(f"a record must be a JSON object, not {type(obj).__name__}")
            kind = obj.get("type", "exit")
            if kind == "summary":
                return None  # the last line of `trace synth/import --json`: counts, nothing to check
            ref = ref_of(obj)
            base = None if ref is None else self.table.states.get(ref)  # before parsing: a record may redefine it
            if ref is not None and (kind == "exit" or kind == "state"):
                self.table.get(ref)  # naming a state uses it, even in a record found malformed below (handoff.py)
            if kind == "state":
                shape = Shape(ref, base)
                shape.key, shape.state = parse_state_record(obj, self.table)
            elif kind == "exit":
                rkey = _record_key(obj, ref, base) if exact else None
                shape = self.records.get(rkey) if rkey is not None else None  # type: ignore[assignment]
                if shape is None or shape.base is not base:
                    rec = parse_exit(obj, line, self.table)
                    shape = self._shape(rec, ref)
                    shape.base = base
                    if rkey is not None and len(rkey[0]) <= MEMO_LINE_BYTES:
                        if len(self.records) >= MEMO_LINES:
                            self.records.clear()
                        self.records[rkey] = shape
            else:
                raise RecordError(f"type must be \"exit\", \"state\" or \"summary\", not {kind!r}")
        except RecordError as e:
            return self._malformed(line, str(e))
        except (StateError, RecursionError) as e:
            return self._malformed(line, f"state: {e}")
        if len(data) <= MEMO_LINE_BYTES:
            if len(self.memo) >= MEMO_LINES:
                self.memo.clear()
            self.memo[data] = shape
        return self._apply(shape, line, parsed=True)

    def _apply(self, shape: Shape, line: int, parsed: bool = False) -> dict[str, Any] | None:
        if shape.verdict is None:  # a state record
            if not parsed:
                self.table.put(shape.key, shape.state)  # type: ignore[arg-type]
            self.tally.state_records += 1
            return None
        self.pending[shape] += 1
        v = shape.verdict.copy()
        v["line"] = line
        return v

    def _malformed(self, line: int, reason: str) -> dict[str, Any]:
        self.tally.malformed += 1
        return {"type": "malformed", "line": line, "reason": reason}

    # -- one exit record ------------------------------------------------------------------
    def _shape(self, rec: ExitRecord, ref: str | None) -> Shape:
        s = Shape(ref, None)
        v: dict[str, Any] = {"type": "verdict", "line": rec.line, "instruction": rec.instruction,
                             "exit_reason": rec.exit_reason}
        if rec.rip is not None:
            v["rip"] = hex(rec.rip)
        hw = v["hardware"] = check_hardware(rec)
        hv, missing, exit, access, failed = check_hypervisor(rec, self.reference, self.answers)
        s.reference_error = rec.line if failed else 0  # the line of the first record it failed on
        v["hypervisor"] = hv
        wrong_hv = hv["verdict"] == "wrong"
        if missing or exit is None:
            fp: FingerprintCheck = {"verdict": "not-checkable", "missing": missing or hv.get("missing", [])}
        elif not self.models:
            fp = {"verdict": "skipped", "reason": "no registered models besides the reference"}
        elif self.fingerprint == "all" or (self.fingerprint == "wrong" and wrong_hv):
            assert rec.state is not None and rec.result is not None and access is not None
            names = self.answers.fingerprint(self.models, exit, rec.state, access, rec.result)
            s.names = names
            fp = {"verdict": "matched" if names else "unmatched", "models": names}
        else:
            fp = {"verdict": "skipped"}
        v["fingerprint"] = fp
        wrong = hw["verdict"] == "inconsistent" or wrong_hv
        checkable = hw["verdict"] != "not-checkable" or hv["verdict"] != "not-checkable"
        v["status"] = "wrong" if wrong else ("ok" if checkable else "not-checkable")
        s.verdict, s.hw, s.hv, s.fp, s.wrong, s.wrong_hv = v, hw, hv, fp, wrong, wrong_hv
        return s

    def check(self, rec: ExitRecord) -> dict[str, Any]:
        """The verdict for one parsed exit record (counted)."""
        v = self._apply(self._shape(rec, None), rec.line)
        assert v is not None
        return v

    # -- the end ----------------------------------------------------------------------------
    def flush(self) -> None:
        """Add the waiting counts to the tally (in the order the shapes were first seen, so the
        summary's keys come in the order one record at a time gives)."""
        t = self.tally
        for s, n in self.pending.items():
            t.add(s.hw, s.hv, s.fp, s.wrong, n)
            if s.names is not None:
                t.add_fingerprint(s.names, s.wrong_hv, n)
            if s.reference_error:
                t.note_reference_error(s.hv, n, s.reference_error)
        self.pending.clear()

    def summary(self) -> dict[str, Any]:
        """The summary object of the trace checked so far (after the verdicts still pending)."""
        self.flush()
        self.tally.evicted = self.table.evicted
        return self.tally.summary(self.reference, self.fingerprint, len(self.models))
