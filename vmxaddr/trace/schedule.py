"""Running the pieces of a trace (chunks.py) on an executor — a process pool or a Dask client —
and handing them back in trace order, each numbered and checked with the state table in force
at its start, so that merging them gives what one process prints.

Per file (handoff.py explains the two ways):
- The first piece starts with an empty table and line 1: it is exact. It is small
  (chunks.FIRST_PIECE), and the file's other pieces wait for it: it defines the states most
  traces then use throughout.
- The other pieces are then checked speculatively, each with the newest table known, at most
  `window` pieces ahead. A piece that saw something else than the true table is checked again
  with the true one (the pieces before it are merged by then).
- A file whose first piece defines states on more than one line in DENSE, which fails
  speculation twice, or which needs more than --max-states ids, goes over to the index way for
  its remaining pieces: their table operations are listed in parallel (handoff.table_ops),
  replayed here in order, and each piece starts with the exact table.
Line numbers come from the pieces merged before (Piece.shift); a piece that stopped on an input
error is checked again knowing its first line, so that the message names the right line.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from vmxaddr.state import CpuState
from vmxaddr.trace.chunks import Chunk, Options, Piece, check_chunk
from vmxaddr.trace.handoff import Items, Op, advance, replay, table_ops, verify
from vmxaddr.trace.records import StateTable

DENSE = 100  # a first piece with a state record in more than 1 line in this many: index the file
REJECTIONS = 2  # speculation failing this often in a file: index the rest of it


@dataclass
class _File:
    table: OrderedDict[str, CpuState] = field(default_factory=OrderedDict)  # at the next piece to merge
    lines: int = 0  # lines merged so far
    started: bool = False  # its first piece is merged
    rejected: int = 0
    index_from: int | None = None  # the index way from this chunk (position in the run) on
    replay: StateTable | None = None  # the index way: the table replayed up to `replayed`
    replayed: int = 0  # the next chunk whose operations to replay


class Runner:
    """Pieces of `chunks` checked by `submit` (concurrent.futures' or Dask's), in trace order."""

    def __init__(self, chunks: list[Chunk], options: Options, submit: Callable[..., Any], window: int,
                 note: Callable[[str], None] | None = None) -> None:
        self.chunks = chunks
        self.options = options
        self.submit = submit
        self.window = max(1, window)
        self.note = note or (lambda _msg: None)
        self.files: dict[int, _File] = {}
        self.checks: list[Any] = [None] * len(chunks)  # futures of pieces under way
        self.exact: list[bool] = [False] * len(chunks)  # ...checked with the true table
        self.ops: list[Any] = [None] * len(chunks)  # futures of table operations (index way)
        self.snapshots: dict[int, Items] = {}  # exact tables at the start of chunks (index way)
        self.given: dict[int, tuple[Items, int | None]] = {}  # what the pieces under way started with

    def _file(self, c: Chunk) -> _File:
        f = self.files.get(c.file)
        if f is None:
            f = self.files[c.file] = _File()
        return f

    # -- submitting ---------------------------------------------------------------------------
    def _check(self, i: int, states: Items, exact: bool, first_line: int | None = None) -> None:
        c = self.chunks[i]
        chunk = replace(c, states=states, first_line=0 if c.index == 0 else first_line)
        self.checks[i] = self.submit(check_chunk, chunk, self.options)
        self.exact[i] = exact
        self.given[i] = (states, chunk.first_line)

    def _fill(self, head: int) -> None:
        end = min(len(self.chunks), head + self.window)
        for i in range(head, end):  # table operations ahead, for files on the index way
            c = self.chunks[i]
            f = self._file(c)
            if f.index_from is not None and i >= f.replayed and self.ops[i] is None and not c.last:
                self.ops[i] = self.submit(table_ops, c.path, c.start, c.end)
        self._replay(block_until=None)
        for i in range(head, end):
            if self.checks[i] is not None:
                continue
            c = self.chunks[i]
            f = self._file(c)
            if c.index == 0:
                self._check(i, [], True)
            elif f.index_from is not None and i >= f.index_from:
                if i not in self.snapshots:
                    break
                self._check(i, self.snapshots.pop(i), True)
            elif f.started:
                self._check(i, list(f.table.items()), False)
            else:
                break  # keep to trace order: nothing after a piece that cannot start yet

    def _replay(self, block_until: int | None) -> None:
        """Replay the table operations that have come back, in order (waiting for those of the
        chunks before `block_until`), making the snapshots of the chunks after them."""
        for f in self.files.values():
            if f.replay is None:
                continue
            while True:
                j = f.replayed
                fut = self.ops[j] if j < len(self.chunks) else None
                if fut is None or (not fut.done() and (block_until is None or j >= block_until)):
                    break
                ops: list[Op] = fut.result()
                self.ops[j] = None
                replay(f.replay, ops)
                f.replayed = j + 1
                if not self.chunks[j].last:
                    self.snapshots[j + 1] = list(f.replay.states.items())

    def _to_index(self, i: int, why: str) -> None:
        """Check the chunks of i's file after i the index way (i is merged: its table is known)."""
        c = self.chunks[i]
        f = self._file(c)
        if f.index_from is not None or c.last:
            return
        self.note(f"{c.path}: {why}: the rest of it is indexed first, so that every piece starts with the "
                  "exact state table")
        f.index_from = i + 1
        f.replay = StateTable(self.options.max_states)
        for key, st in f.table.items():
            f.replay.states[key] = st
        f.replayed = i + 1
        self.snapshots[i + 1] = list(f.table.items())
        for j in range(i + 1, len(self.chunks)):  # speculative checks under way are not wanted
            if self.chunks[j].file != c.file:
                break
            if self.checks[j] is not None:
                self.checks[j].cancel()
                self.checks[j] = None

    # -- merging ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Piece]:
        limit = self.options.max_states
        head = 0
        while head < len(self.chunks):
            self._fill(head)
            c = self.chunks[head]
            f = self._file(c)
            if self.checks[head] is None:  # the index way, its snapshot not made yet
                self._replay(block_until=head)
                self._check(head, self.snapshots.pop(head), True)
            piece: Piece = self.checks[head].result()
            h = piece.handoff
            assert h is not None
            states, first_line = self.given[head]
            if not self.exact[head] and not verify(f.table, h, limit):
                f.rejected += 1
                self._check(head, list(f.table.items()), True, f.lines)
                continue
            if piece.tally.input_error is not None and first_line is None:
                # the message names a line: check the piece again knowing its first line
                self._check(head, states if self.exact[head] else list(f.table.items()), True, f.lines)
                continue
            self.checks[head] = None
            del self.given[head]
            if first_line is None:
                piece.shift(f.lines)
            f.lines = piece.tally.lines
            if f.index_from is None:
                advance(f.table, h)
            f.started = True
            if not c.last and f.index_from is None:
                if c.index == 0 and h.defined * DENSE > max(piece.tally.lines, 1):
                    self._to_index(head, "it defines states throughout")
                elif h.evicted or len(f.table) >= limit:
                    self._to_index(head, f"it uses more than --max-states ({limit}) state ids")
                elif f.rejected >= REJECTIONS:
                    self._to_index(head, "its pieces keep needing states defined in the piece before")
            yield piece
            head += 1
