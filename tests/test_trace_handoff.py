"""The state table handed from piece to piece (vmxaddr/trace/handoff.py, schedule.py), against
the one rule that matters: a trace checked in pieces prints what one process prints, byte for
byte, verdicts and summary.

The traces here are hostile to splitting: a handful of ids defined, redefined and derived from
one another all through the trace (so speculation is often wrong), ids used before they are
defined, a table smaller than the ids in use (so states are evicted, and which one depends on
every use), malformed records that still name a state, keys written with escapes, lines
repeated byte for byte under other definitions, blank, non-object and summary lines, and a
truncated final line. Each is checked whole by one checker and in pieces of random sizes by the
Runner, on an executor that runs tasks late and out of order, both ways forced (speculation
only; the index way from the first piece) and as chosen. The expected value is the single
process's output: the question is only whether splitting changes it.
"""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vmxaddr.trace import chunks, schedule
from vmxaddr.trace.chunks import Chunk, Merger, Options, check_chunk, plan
from vmxaddr.trace.handoff import Packed, RecordingTable, replay, table_ops, verify
from vmxaddr.trace.parse import StateTable

VMREAD = {"instruction": "vmread", "instruction_info": "0x02c10080", "exit_qualification": "0xffffffd8",
          "bytes": "0f7845d8", "code_size": 32}


def _line(rng: random.Random, ids: int) -> str:
    r = rng.random()
    ref = rng.randrange(ids)
    key = rng.choice([str(ref), ref])  # ids may be strings or integers: "3" and 3 are one id
    if r < 0.25:
        rec: dict[str, Any] = {"type": "state", "id": key, "state": {"mode": "protected",
                               "registers": {"rbp": hex(0x1028 + 16 * rng.randrange(3))}}}
        if rng.random() < 0.3:
            rec["state_ref"] = rng.randrange(ids)  # derived from another (maybe undefined) state
            del rec["state"]["mode"]
        if rng.random() < 0.05:
            rec["bogus"] = 1  # malformed, but it names its state_ref first
        text = json.dumps(rec)
        if rng.random() < 0.1:
            text = text.replace('"state"', '"st\\u0061te"', 1)  # the key "type"'s value, escaped
        return text
    if r < 0.85:
        rec = {"state_ref": key, "result": {"kind": "ok", "linear_address": hex(0x1000 + 16 * rng.randrange(3))},
               **VMREAD}
        if rng.random() < 0.1:
            rec["state"] = {"registers": {"rbp": "0x1038"}}
        if rng.random() < 0.05:
            rec["exit_reason"] = 99  # malformed after naming its state
        text = json.dumps(rec)
        if rng.random() < 0.1:
            text = text.replace('"state_ref"', '"st\\u0061te_ref"')
        return text
    return rng.choice(["", "   ", "{not json", "[1, 2]", '{"type": "summary", "lines": 3}', '{"type": "other"}',
                       '"state"', '{"type": "state"}', '{"state_ref": true}'])


def _trace(seed: int, n: int, ids: int) -> bytes:
    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(n):
        if lines and rng.random() < 0.2:
            lines.append(rng.choice(lines))  # a line seen before, perhaps under other definitions
        else:
            lines.append(_line(rng, ids))
    tail = rng.choice(["", '{"state_ref": 1, "instr'])  # sometimes a truncated final line
    return ("\n".join(lines) + "\n" + tail).encode()


class _Later:
    """A future that runs its task when asked (or when the executor decides it is done)."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], rng: random.Random) -> None:
        self.fn, self.args, self.rng = fn, args, rng
        self.value: Any = None
        self.error: Exception | None = None
        self.ran = False

    def _run(self) -> None:
        if not self.ran:
            self.ran = True
            try:
                self.value = self.fn(*self.args)
            except Exception as e:  # noqa: BLE001 - kept for result(), as a future does
                self.error = e

    def result(self) -> Any:
        self._run()
        if self.error is not None:
            raise self.error
        return self.value

    def done(self) -> bool:
        if self.rng.random() < 0.5:
            self._run()
        return self.ran

    def cancel(self) -> bool:
        return not self.ran


def _pieces(path: Path, options: Options, chunk_bytes: int, window: int, seed: int) -> tuple[str, dict[str, Any]]:
    rng = random.Random(seed)
    out: list[str] = []
    merger = Merger(out.append, many=False)
    runner = schedule.Runner(plan([str(path)], True, chunk_bytes), options,
                             lambda fn, *a: _Later(fn, a, rng), window)
    for piece in runner:
        merger.add(piece)
    return "".join(out), merger.summary(options, 0)


def _whole(path: Path, options: Options) -> tuple[str, dict[str, Any]]:
    out: list[str] = []
    merger = Merger(out.append, many=False)
    merger.add(check_chunk(Chunk(str(path), None), options, out.append))
    return "".join(out), merger.summary(options, 0)


@pytest.mark.parametrize("way", ["chosen", "speculate", "index"])
@pytest.mark.parametrize("seed", range(12))
def test_pieces_print_what_one_process_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str,
                                              seed: int) -> None:
    if way == "speculate":
        monkeypatch.setattr(schedule, "DENSE", 0)
        monkeypatch.setattr(schedule, "REJECTIONS", 10**9)
    elif way == "index":
        monkeypatch.setattr(schedule, "DENSE", 10**9)
    rng = random.Random(seed)
    ids = rng.choice([3, 6, 20])
    path = tmp_path / "t.jsonl"
    path.write_bytes(_trace(seed, rng.choice([150, 400]), ids))
    options = Options(fingerprint=rng.choice(["wrong", "none"]), max_states=rng.choice([2, 4, ids, 4096]),
                      json=rng.random() < 0.5)
    one = _whole(path, options)
    for k in range(3):
        chunk_bytes = rng.choice([200, 700, 3000])
        assert len(plan([str(path)], True, chunk_bytes)) > 2
        assert _pieces(path, options, chunk_bytes, rng.randint(1, 5), seed * 10 + k) == one
    assert one[1]["malformed_lines"] > 0 and one[1]["state_records"] > 0


def test_the_realistic_shape_is_never_checked_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # states defined once at the start (what `trace synth --shape realistic` writes): after the
    # first piece every piece is checked once, speculatively, and accepted
    from vmxaddr.models import get
    from vmxaddr.trace.synth import synth

    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synth(get("sdm"), 3000, 1, "realistic", 0.01)))
    calls: list[Chunk] = []
    real = chunks.check_chunk

    def counting(chunk: Chunk, options: Options, *a: Any) -> Any:
        calls.append(chunk)
        return real(chunk, options, *a)

    monkeypatch.setattr(schedule, "check_chunk", counting)
    options = Options(json=True)
    pieces = plan([str(path)], True, 50_000)
    assert _pieces(path, options, 50_000, 4, 0) == _whole(path, options)
    assert len(calls) == len(pieces) > 5
    assert all(c.first_line is None and c.states for c in calls[1:])  # speculative, with the six states


def test_recording_table_notes_first_uses_only() -> None:
    from vmxaddr.state import CpuState

    a, b = CpuState(cpl=0), CpuState(cpl=3)
    t = RecordingTable(8, [("x", a), ("y", b)])
    assert t.get("x") is a and t.get("z") is None
    t.put("y", a)
    assert t.get("y") is a and t.get("x") is a
    h = t.handoff()
    # x and z were used before the piece defined them; y was defined first: nothing assumed
    assert h.assumed == {"x": a, "z": None} and h.defined == 1 and h.evicted == 0
    assert [k for k, _ in h.table] == ["y", "x"]  # least recently used first
    from collections import OrderedDict

    assert verify(OrderedDict([("x", CpuState(cpl=0)), ("y", b)]), h, 8)  # equal, not identical, is enough
    assert not verify(OrderedDict([("x", b)]), h, 8)  # x was another state
    assert not verify(OrderedDict([("x", a), ("z", a)]), h, 8)  # z was defined after all
    assert not verify(OrderedDict([("x", a), ("q", b)]), h, 2)  # x, q and y: more than 2 ids


def test_table_ops_match_what_the_checker_does(tmp_path: Path) -> None:
    # the index way replays table_ops; the checker's own table must end the same, eviction included
    from vmxaddr.trace.checker import Checker
    from vmxaddr.trace.reader import check_stream

    for seed in range(6):
        path = tmp_path / "t.jsonl"
        path.write_bytes(_trace(100 + seed, 300, 8))
        checker = Checker(max_states=3)
        with open(path, "rb") as f:
            s = check_stream(f, checker, lambda v: None)
        table = StateTable(3)
        replay(table, table_ops(str(path), 0, path.stat().st_size))
        sent = pickle.loads(pickle.dumps(Packed(table.states.items())))  # flat tuples, rebuilt by the trip
        assert sent == list(checker.table.states.items())
        assert table.evicted == s["states_evicted"] > 0


def test_escaped_state_record_is_an_operation(tmp_path: Path) -> None:
    data = b'{"type": "st\\u0061te", "id": "x", "st\\u0061te": {"registers": {"rbp": 4136}}}\n'
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n" * 10 + data + b'{"st\\u0061te_ref": "x"}\n' + b"\n" * 10)
    from vmxaddr.state import CpuState

    ops = table_ops(str(path), 0, path.stat().st_size)
    assert ops == [("x", CpuState.for_code_size(32, regs=(0,) * 5 + (4136,) + (0,) * 10)), "x"]


def test_packed_tables_and_operations_survive_the_trip() -> None:
    # what goes to and comes back from a worker: states with 64-bit values, R16-R31, unusable
    # segments, and operations of all three kinds
    from vmxaddr.state import CpuState, Segment
    from vmxaddr.trace.handoff import PackedOps

    st = CpuState(mode="64-bit", cpl=3, la57=True, lam_u57=True, regs=tuple(range(2**64 - 16, 2**64)),
                  egprs=(7,) * 16, rip=0xFFFFFFFF81000000, cs=Segment(type=0xB, db=0, l=1),
                  fs=Segment(base=2**64 - 1, unusable=True, selector=0x2B))
    items = Packed([("a", st), ("b", CpuState())])
    back = pickle.loads(pickle.dumps(items))
    assert back == items and type(back) is Packed and back[0][1].fs.unusable is True
    ops = PackedOps(["a", ("b", st), ("c", b'{"type":"state"}'), (None, b"{}")])
    flat = pickle.loads(pickle.dumps(ops))  # the parent's replay keeps states flat
    assert flat[0] == "a" and flat[2:] == ops[2:] and pickle.loads(pickle.dumps(Packed([flat[1]]))) == [("b", st)]


@pytest.mark.parametrize("where", [0.1, 0.5, 0.93])
def test_a_read_that_fails_ends_the_file_where_one_process_ends_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   where: float) -> None:
    # an I/O error at byte B: one process checks the lines before it and says "reading failed
    # after line N"; in pieces, the piece holding B says the same N and the pieces after it are
    # not merged
    from vmxaddr.trace import handoff

    path = tmp_path / "t.jsonl"
    path.write_bytes(_trace(7, 400, 6))
    broken = int(path.stat().st_size * where)
    real_read = handoff._Range.read

    def upto(f: Any, n: int, read: Callable[[int], bytes]) -> bytes:
        at = f.tell()
        if at >= broken:
            raise OSError(5, "Input/output error")
        return read(min(n if n >= 0 else broken, broken - at))  # the bytes before B, then the error

    class Failing:
        def __init__(self, f: Any) -> None:
            self.f = f

        def read(self, n: int = -1) -> bytes:
            return upto(self.f, n, self.f.read)

    monkeypatch.setattr(handoff._Range, "read", lambda self, n=-1: upto(self.f, n, lambda k: real_read(self, k)))
    real_decompressing = chunks.decompressing
    monkeypatch.setattr(chunks, "decompressing", lambda f: Failing(real_decompressing(f)))
    options = Options(json=True)
    one = _whole(path, options)
    lines_before = path.read_bytes()[:broken].count(b"\n")
    assert one[1]["input_error"].endswith(f"reading failed after line {lines_before}: Input/output error")
    assert one[1]["lines"] == lines_before > 30
    assert _pieces(path, options, 3000, 3, 1) == one


def test_a_malformed_record_naming_a_state_uses_it(tmp_path: Path) -> None:
    # --max-states 2, worked by hand: A and B defined; a malformed exit record names A (exit
    # reason 99), which makes B the least recently used; C's definition then drops B, not A. So
    # an exit naming A still finds it, and one naming B does not.
    lines = [{"type": "state", "id": "A", "state": {"registers": {"rbp": "0x1028"}}},
             {"type": "state", "id": "B", "state": {"registers": {"rbp": "0x1028"}}},
             {"state_ref": "A", "exit_reason": 99},
             {"type": "state", "id": "C", "state": {"registers": {"rbp": "0x1028"}}},
             {"state_ref": "A", "result": {"kind": "ok", "linear_address": "0x1000"}, **VMREAD},
             {"state_ref": "B", "result": {"kind": "ok", "linear_address": "0x1000"}, **VMREAD}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out, summary = _whole(path, Options(json=True, max_states=2))
    verdicts = [json.loads(v) for v in out.splitlines()]
    assert [v["type"] for v in verdicts] == ["malformed", "verdict", "verdict"]
    assert verdicts[1]["hypervisor"]["verdict"] == "correct"  # rbp 0x1028 + disp8 -0x28 = 0x1000
    assert verdicts[2]["hypervisor"]["verdict"] == "not-checkable"
    assert "state_ref 'B' is unknown" in verdicts[2]["hypervisor"]["missing"][0]
    assert summary["states_evicted"] == 1
