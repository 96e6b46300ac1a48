"""Running the pieces of a trace (chunks.py) on an executor — a process pool or a Dask client —
and handing them back in trace order, each numbered and checked with the state table in force
at its start, so that merging them gives what one process prints.

Per file (handoff.py explains the two ways):
- The first piece starts with an empty table and line 1: it is exact. It is small
  (chunks.FIRST_PIECE), and the file's other pieces wait for it: it defines the states most
  traces then use throughout. When it starts the run, it is checked here, before the pool's
  workers exist (they fork on the first task and inherit the checker it warmed).
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

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from vmxaddr.state import CpuState
from vmxaddr.trace.chunks import Chunk, Options, Piece, check_chunk
from vmxaddr.trace.handoff import Items, Op, Packed, advance, flat_table, replay, table_ops, verify
from vmxaddr.trace.parse import StateTable
from vmxaddr.trace.reader import InputError

DENSE = 100  # a first piece with a state record in more than 1 line in this many: index the file
REJECTIONS = 2  # speculation failing this often in a file: index the rest of it
POLL = 0.002  # seconds between looks at tasks that cannot be waited on
WAIT = 1.0  # longest wait for a task before looking again


@dataclass
class _File:
    table: OrderedDict[str, CpuState] = field(default_factory=OrderedDict)  # at the next piece to merge
    lines: int = 0  # lines merged so far
    started: bool = False  # its first piece is merged
    rejected: int = 0
    index_from: int | None = None  # the index way from this chunk (position in the run) on
    replay: StateTable | None = None  # the index way: the table replayed up to `replayed`
    replayed: int = 0  # the next chunk whose operations to replay
    ops_error: tuple[int, str] | None = None  # the chunk whose operations could not be listed, and why


class TaskFailed(Exception):
    """A task failed on a worker for a reason of the worker's (it died, it cannot import vmxaddr,
    a cluster lost it): one line for the user."""


def _outcome(fut: Any) -> Any:
    """A task's result; a failure that is not the trace's (OSError, InputError) as TaskFailed."""
    try:
        return fut.result()
    except (OSError, InputError):
        raise
    except Exception as e:  # noqa: BLE001 - whatever the executor raises: one line
        text = str(e).strip().splitlines()
        raise TaskFailed(f"a check-trace task failed on a worker: {type(e).__name__}"
                         + (f": {text[0]}" if text else "")) from None


def wait_futures(futures: list[Any]) -> None:
    """Return when one of `futures` (concurrent.futures' or Dask's) is done, or after WAIT s."""
    if not futures:
        return
    if not all(hasattr(f, "add_done_callback") for f in futures):
        time.sleep(POLL)
        return
    done = threading.Event()
    for f in futures:
        f.add_done_callback(lambda _f: done.set())
    done.wait(WAIT)


class _Done:
    """A task already done (a future's methods)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False


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
        f = self._file(c)
        indexed = f.index_from is not None and i >= f.index_from  # the table is known from the replay
        chunk = replace(c, states=states, first_line=0 if c.index == 0 else first_line, report=not indexed)
        self.checks[i] = self.submit(check_chunk, chunk, self.options)
        self.exact[i] = exact
        self.given[i] = (states, chunk.first_line)

    def _fill(self, head: int) -> bool:
        """Submit what can start — checks up to `window` pieces ahead of `head`, then table
        operations for the pieces after them (at most half a window under way, so that they do
        not queue ahead of checks that could run) — and replay what came back; whether
        anything moved."""
        moved = self._replay()
        n = len(self.chunks)
        end = min(n, head + self.window)
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
                self._check(i, Packed(f.table.items()), False)
            else:
                break  # keep to trace order: nothing after a piece that cannot start yet
            moved = True
        under_way = sum(1 for fut in self.ops if fut is not None and not fut.done())
        for i in range(head, end):  # the index way: the operations the next snapshots need
            if under_way >= max(1, self.window // 2):
                break
            c = self.chunks[i]
            f = self._file(c)
            if f.index_from is not None and i >= f.replayed and self.ops[i] is None and not c.last:
                self.ops[i] = self.submit(table_ops, c.path, c.start, c.end)
                under_way += 1
                moved = True
        return moved

    def _replay(self) -> bool:
        """Replay, in order, the table operations that have come back, making the snapshots of
        the chunks after them; whether any were."""
        moved = False
        for f in self.files.values():
            if f.replay is None:
                continue
            while True:
                j = f.replayed
                fut = self.ops[j] if j < len(self.chunks) else None
                if fut is None or not fut.done():
                    break
                self.ops[j] = None
                try:
                    ops: list[Op] = _outcome(fut)
                except (OSError, InputError) as e:  # the file cannot be read on: the merge ends it at j
                    f.ops_error = (j, str(e))
                    f.replay = None
                    break
                replay(f.replay, ops)
                f.replayed = j + 1
                moved = True
                if not self.chunks[j].last:
                    self.snapshots[j + 1] = Packed(f.replay.states.items())
        return moved

    def _wait(self, head: int) -> Piece:
        """The piece at `head`, keeping the rest moving while it is under way: between looks,
        wait for it or for table operations that would let more pieces start."""
        while True:
            moved = self._fill(head)
            fut = self.checks[head]
            if fut is not None and fut.done():
                return _outcome(fut)  # type: ignore[no-any-return]
            if not moved:
                wait_futures([f for f in [fut, *self.ops] if f is not None and not f.done()])

    def _to_index(self, i: int, why: str) -> None:
        """Check the chunks of i's file after i the index way (i is merged: its table is known)."""
        c = self.chunks[i]
        f = self._file(c)
        if f.index_from is not None or c.last:
            return
        self.note(f"{c.path}: {why}: the rest of it is indexed first, so that every piece starts with the "
                  "exact state table")
        f.index_from = i + 1
        f.replay = flat_table(list(f.table.items()), self.options.max_states)
        f.replayed = i + 1
        self.snapshots[i + 1] = Packed(f.table.items())
        for j in range(i + 1, len(self.chunks)):  # speculative checks under way are not wanted
            if self.chunks[j].file != c.file:
                break
            if self.checks[j] is not None:
                self.checks[j].cancel()
                self.checks[j] = None

    def _skip_file(self, i: int) -> int:
        """The chunk after i's file, its pieces under way cancelled."""
        file = self.chunks[i].file
        j = i + 1
        while j < len(self.chunks) and self.chunks[j].file == file:
            for futs in (self.checks, self.ops):
                if futs[j] is not None:
                    futs[j].cancel()
                    futs[j] = None
            self.given.pop(j, None)
            self.snapshots.pop(j, None)
            j += 1
        return j

    # -- merging ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Piece]:
        limit = self.options.max_states
        head = 0
        if self.chunks and not self.chunks[0].last:
            # The first piece of a split file that starts the run is checked here, while nothing
            # else can start: a process pool forked after it inherits the warm checker.
            self.checks[0] = _Done(check_chunk(self.chunks[0], self.options))
            self.given[0] = ([], 0)
            self.exact[0] = True
        while head < len(self.chunks):
            c = self.chunks[head]
            f = self._file(c)
            piece = self._wait(head)
            h = piece.handoff
            assert h is not None
            states, first_line = self.given[head]
            if not self.exact[head] and not verify(f.table, h, limit):
                f.rejected += 1
                self._check(head, Packed(f.table.items()), True, f.lines)
                continue
            if piece.tally.input_error is not None and first_line is None:
                # the message names a line: check the piece again knowing its first line
                self._check(head, states if self.exact[head] else Packed(f.table.items()), True, f.lines)
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
            if f.ops_error is not None and f.ops_error[0] == head and piece.tally.input_error is None:
                piece.tally.input_error = (f"{c.path}: reading failed after line {piece.tally.lines} (listing the "
                                           f"state-table operations of bytes {c.start}-{c.end}): {f.ops_error[1]}")
            if piece.tally.input_error is not None and not c.last:
                # one process stops reading a file where it broke: so does the merge
                piece.last = True
                head = self._skip_file(head)
                yield piece
                continue
            yield piece
            head += 1
