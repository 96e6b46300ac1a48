"""How a piece of a split trace gets the state table in force at its start.

An exit record names a state defined anywhere before it (state_ref), so the piece that starts at
byte 16 MB needs the table the first 16 MB leave behind. Two ways, chosen per file by
schedule.py:

  speculate  The piece is checked with the latest table the parent knows (from the pieces merged
             so far) in a `RecordingTable`, which notes what the table gave for each id the
             piece uses before defining it (`Handoff.assumed`). When the piece's turn comes, the
             parent compares that with the true table at its start (`verify`): equal, and the
             piece's output is the one a single process prints; different, and the piece is
             checked again with the true table. Traces that define their states once and use them
             for long (what a recorder writes) pass every time, and nothing but the check reads
             the file.
  index      For traces that keep defining states, or define more ids than --max-states (then
             which state is evicted depends on every use, in order): the pieces are first scanned
             in parallel for their table operations (`table_ops`), the parent replays them in
             trace order (`replay`) and every piece starts with the exact table, least recently
             used first.

`table_ops` must see exactly the operations the checker performs: every line that decodes to an
object of type "exit" or "state" naming a valid state_ref uses that id (even when the rest of the
record is malformed: checker.Checker.feed uses it first), and a valid state record defines its id.
"""

from __future__ import annotations

import marshal
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

from vmxaddr.state import CpuState, Segment, StateError
from vmxaddr.trace.format import RecordError
from vmxaddr.trace.jsonline import NotJSON, loads
from vmxaddr.trace.parse import StateTable, parse_state_record, ref_of
from vmxaddr.trace.reader import read_batches

Items = list[tuple[str, CpuState]]  # a state table, least recently used first
# An id used; a state defined (id, state); or a state record on top of another (the id it uses, its line)
Op = str | tuple[str, CpuState] | tuple[str | None, bytes]


# -- the trip between processes ----------------------------------------------------------------------
# A table of 4,096 states pickled field by field took 0.2 s to send and 0.15 s to receive, for
# every piece; as plain tuples through marshal (format 4, the same since Python 3.4) it is 0.02
# and 0.1 s. Ops lists travel the same way.

def _flat(st: CpuState) -> tuple[Any, ...]:
    f = st.__reduce__()[1]
    return (*f[:9], *(seg.__reduce__()[1] for seg in f[9:]))


def unflatten(t: tuple[Any, ...]) -> CpuState:
    """A CpuState from its flat tuple form (the form pieces of a trace hand over)."""
    return CpuState(*t[:9], *(Segment(*seg) for seg in t[9:]))


def _entry_out(e: Any) -> Any:
    return e if isinstance(e, str) or not isinstance(e[1], CpuState) else (e[0], _flat(e[1]))


def _entry_in(e: Any) -> Any:
    return e if isinstance(e, str) or isinstance(e[1], bytes) else (e[0], unflatten(e[1]))


def _unpack(data: bytes, cls: type[list[Any]]) -> list[Any]:
    return cls(_entry_in(e) for e in marshal.loads(data))


def _unpack_flat(data: bytes) -> list[Any]:
    return marshal.loads(data)  # type: ignore[no-any-return]


class Packed(list):  # type: ignore[type-arg]
    """A state table (id, CpuState or its flat tuple) that pickles as marshalled tuples and
    arrives as CpuStates (what a worker's checker needs)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpack, (marshal.dumps([_entry_out(e) for e in self], 4), Packed))


class PackedOps(list):  # type: ignore[type-arg]
    """Table operations that pickle as marshalled tuples and arrive with their states still flat
    tuples: the parent's replay only moves them on to the pieces' tables, so it never builds them."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpack_flat, (marshal.dumps([_entry_out(e) for e in self], 4),))


@dataclass
class Handoff:
    """What a piece did with its state table, for the parent to verify and carry on with."""

    assumed: dict[str, CpuState | None]  # ids used before the piece defined them: what the table gave
    table: Items  # the ids the piece used or defined, as the piece left them (in order of last use);
    # after an eviction, the whole table
    evicted: int
    defined: int  # state records that defined an id


class RecordingTable(StateTable):
    """A state table that starts as `items` and records what it was asked about (see Handoff)."""

    def __init__(self, limit: int, items: Iterable[tuple[str, CpuState]] = ()) -> None:
        super().__init__(limit)
        for key, st in items:
            self.states[key] = st
        while len(self.states) > limit:  # a snapshot never holds more, but a smaller --max-states may
            self.states.popitem(last=False)
        self.seen: set[str] = set()
        self.assumed: dict[str, CpuState | None] = {}
        self.defined = 0

    def get(self, key: str) -> CpuState | None:
        """The state `key` names, recording that the piece asked for it before defining it."""
        st = self.states.get(key)
        if key not in self.seen:
            self.seen.add(key)
            self.assumed[key] = st
        if st is not None:
            self.states.move_to_end(key)
        return st

    def put(self, key: str, st: CpuState) -> None:
        """Define state `key`, counting the definition."""
        self.seen.add(key)
        self.defined += 1
        super().put(key, st)

    def handoff(self, tables: bool = True) -> Handoff:
        """What the next piece needs: the states assumed at the start, the table at the end
        (`tables`: else counts only)."""
        if not tables:
            return Handoff({}, [], self.evicted, self.defined)
        seen = self.seen
        table = Packed(self.states.items() if self.evicted else ((k, s) for k, s in self.states.items() if k in seen))
        return Handoff(self.assumed, table, self.evicted, self.defined)


def verify(table: OrderedDict[str, CpuState], h: Handoff, limit: int) -> bool:
    """Whether a piece checked speculatively saw what the true table at its start (`table`) gives:
    every id it used before defining it found (or missed) as there, and no eviction either way."""
    if h.evicted:
        return False
    for key, st in h.assumed.items():
        t = table.get(key)
        if t is not st and (t is None or st is None or t != st):
            return False
    return len(table) + sum(k not in table for k, _ in h.table) <= limit


def advance(table: OrderedDict[str, CpuState], h: Handoff) -> None:
    """`table` as the piece left it (the piece was verified, or checked with `table` itself)."""
    if h.evicted:
        table.clear()
    for key, st in h.table:
        table[key] = st
        table.move_to_end(key)


# -- index mode ------------------------------------------------------------------------------------

class _Range:
    """Bytes start..end of an open file."""

    def __init__(self, f: IO[bytes], end: int) -> None:
        self.f = f
        self.left = end - f.tell()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _line_ops(data: bytes, ops: list[Op]) -> None:
    if b"state" not in data and b"\\" not in data:
        return  # neither a state_ref nor a state record (a key written with escapes has a backslash)
    try:
        obj = loads(data)
    except NotJSON:
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get("type", "exit")
    if kind == "exit":
        ref = ref_of(obj)
        if ref is not None:
            ops.append(ref)
    elif kind == "state":
        if obj.get("state_ref") is None:  # a whole state: parsed here, in parallel, not by the replay
            try:
                ops.append(parse_state_record(obj, StateTable(1)))
            except (RecordError, StateError, RecursionError):
                pass  # a malformed state record uses and defines nothing
        else:
            ops.append((ref_of(obj), data))


def table_ops(path: str, start: int, end: int) -> list[Op]:
    """The state-table operations of the lines in bytes start..end of `path`, in order (the lines
    split and bounded as the checker reads them: reader.read_batches)."""
    ops: list[Op] = PackedOps()
    with open(path, "rb") as f:
        f.seek(start)
        for lines, final, _ in read_batches(_Range(f, end)):  # type: ignore[arg-type]
            for data in lines:
                if data is not None:
                    _line_ops(data, ops)
            if final is not None:
                _line_ops(final, ops)
    return ops


def replay(table: StateTable, ops: list[Op]) -> None:
    """Apply a piece's operations to `table`, as the checker does. The table holds states as flat
    tuples (Packed sends them on as they are); a state record on top of another is parsed here."""
    for op in ops:
        if isinstance(op, str):
            table.get(op)
            continue
        key, value = op
        if isinstance(value, tuple | CpuState):
            table.put(key, _flat(value) if isinstance(value, CpuState) else value)  # type: ignore[arg-type]
            continue
        base = table.get(key) if key is not None else None  # (the id it names: used even if malformed)
        scratch = StateTable(2)
        if base is not None:
            scratch.states[key] = unflatten(base)  # type: ignore[index, arg-type]
        try:
            new, st = parse_state_record(loads(value), scratch)
        except (NotJSON, RecordError, StateError, RecursionError):
            continue  # a malformed state record defines nothing
        table.put(new, _flat(st))  # type: ignore[arg-type]


def flat_table(items: Items, limit: int) -> StateTable:
    """A table for `replay`, holding `items` (least recently used first)."""
    t = StateTable(limit)
    for key, st in items:
        t.states[key] = _flat(st)  # type: ignore[assignment]
    return t
