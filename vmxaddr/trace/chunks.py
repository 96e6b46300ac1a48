"""Checking a trace in pieces — on every core (--jobs) or on a Dask cluster (--dask) — with
exactly the output one process gives.

A piece (`Chunk`) is a byte range of one file that starts at a line boundary, or a whole file
(compressed files and standard input cannot be split). The one hard part is state records:
an exit record refers to a state defined anywhere before it. So a large file is checked in two
passes:
  index  each chunk is scanned for the lines that may be state records (a line holding the
         bytes `"state"`, or a backslash, since a key may be written with escapes) and its
         newlines are counted. The parent then applies those lines in trace order, as the
         checker would, and knows the state table at the start of every chunk, and the number
         of the chunk's first line.
  check  each chunk is checked by a Checker whose state table starts as that snapshot; it
         returns its output (text or JSON lines) and its counts (tally.Tally).
The parent writes the outputs in trace order and merges the counts in trace order (Tally.merge),
which gives the summary one pass gives, byte for byte (tests/test_trace_parallel.py).

The snapshot is exact while the trace defines at most --max-states distinct ids (nothing is
evicted); a file with more is checked in one piece, so that eviction happens as in one process.
Workers keep their memos from chunk to chunk (`_worker_checker`); states arriving in a snapshot
are interned, so that a line seen in an earlier chunk is recognised as meaning the same thing.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from vmxaddr.progress import Progress
from vmxaddr.state import CpuState, StateError
from vmxaddr.trace.checker import Checker
from vmxaddr.trace.format import DEFAULT_MAX_STATES, RecordError
from vmxaddr.trace.jsonline import NotJSON, dumps, loads
from vmxaddr.trace.reader import check_stream, decompressing, open_bytes
from vmxaddr.trace.records import StateTable, parse_state_record
from vmxaddr.trace.tally import Tally
from vmxaddr.trace.text import verdict_text

CHUNK_BYTES = 16 << 20  # a large file is split into pieces of about this size
_CANDIDATE = re.compile(rb'"state"|\\')


@dataclass(frozen=True)
class Options:
    """What every piece is checked with (picklable: it travels to workers)."""

    reference: str = "sdm"
    fingerprint: str = "wrong"
    max_states: int = DEFAULT_MAX_STATES
    json: bool = False


@dataclass
class Chunk:
    path: str
    label: str | None  # the name verdicts carry when several files are checked, else None
    start: int = 0
    end: int | None = None  # None: to the end of the file
    first_line: int = 0  # lines of the file before `start`
    states: dict[str, CpuState] = field(default_factory=dict)  # the state table at `start`
    last: bool = True  # the file's last piece


@dataclass
class Piece:
    """A checked chunk: its output and its counts."""

    label: str | None
    output: str
    tally: Tally
    last: bool
    interrupted: bool = False


# -- planning ---------------------------------------------------------------------------------------

def trace_files(args: Iterable[str]) -> list[str]:
    """FILES|DIR... as files: a directory gives its files (recursively, by name, hidden ones skipped)."""
    out: list[str] = []
    for a in args:
        if a != "-" and os.path.isdir(a):
            found = []
            for root, dirs, files in os.walk(a):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in files if not f.startswith(".")]
            out += sorted(found)
        else:
            out.append(a)
    return out


def _splittable(path: str) -> int | None:
    """The size of a plain regular file (one that can be split by byte range), else None."""
    if path == "-":
        return None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head[:2] == b"\x1f\x8b" or head == b"\x28\xb5\x2f\xfd":
        return None
    return st.st_size


def _boundaries(path: str, size: int, pieces: int) -> list[int]:
    """Offsets just after a newline, about size/pieces apart (0 first, `size` last)."""
    out = [0]
    with open(path, "rb") as f:
        for k in range(1, pieces):
            target = max(size * k // pieces, out[-1])
            f.seek(target)
            pos = target
            while True:
                block = f.read(1 << 16)
                if not block:
                    pos = size
                    break
                i = block.find(b"\n")
                if i >= 0:
                    pos += i + 1
                    break
                pos += len(block)
            if out[-1] < pos < size:
                out.append(pos)
    out.append(size)
    return out


def plan(paths: list[str], split: bool, chunk_bytes: int | None = None) -> list[Chunk]:
    """Chunks of `paths`: a large plain file in pieces of about `chunk_bytes` when `split`, the
    rest whole. The pieces of a file still need `index` before they are checked."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    many = len(paths) > 1
    chunks = []
    for p in paths:
        label = p if many else None
        size = _splittable(p) if split else None
        if size is None or size <= chunk_bytes:
            chunks.append(Chunk(p, label))
            continue
        cuts = _boundaries(p, size, -(-size // chunk_bytes))
        for i in range(len(cuts) - 1):
            chunks.append(Chunk(p, label, cuts[i], cuts[i + 1], last=i == len(cuts) - 2))
    return chunks


# -- pass 1: index ---------------------------------------------------------------------------------

def index_chunk(path: str, start: int, end: int) -> tuple[int, list[bytes]]:
    """(newlines in the range, its state records, in order: the lines that decode to an object
    of type "state"; whether each is valid is for `apply_index` to find, in trace order)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = []
    if b"\\" in data:  # a key may be escaped: every line with a backslash is a candidate too
        starts = sorted({m.start() for m in _CANDIDATE.finditer(data)})
    else:
        starts = []
        i = data.find(b'"state"')
        while i >= 0:
            starts.append(i)
            i = data.find(b'"state"', data.find(b"\n", i) + 1 or len(data))
    last = -1
    for s in starts:
        if s <= last:
            continue  # this line is taken already
        a = data.rfind(b"\n", 0, s) + 1
        b = data.find(b"\n", s)
        b = len(data) if b < 0 else b
        line = data[a:b]
        last = b
        try:
            obj = loads(line)
        except NotJSON:
            continue
        if isinstance(obj, dict) and obj.get("type") == "state":
            lines.append(line)
    return data.count(b"\n"), lines


class TooManyStates(Exception):
    pass


def apply_index(chunks: list[Chunk], found: list[tuple[int, list[bytes]]], max_states: int) -> None:
    """Give each piece of one file its first line number and the state table at its start."""
    table = StateTable(limit=1 << 62)
    line = 0
    for c, (newlines, candidates) in zip(chunks, found, strict=True):
        c.first_line = line
        c.states = dict(table.states)
        line += newlines
        for data in candidates:
            try:
                obj = loads(data)
                if isinstance(obj, dict) and obj.get("type") == "state":
                    parse_state_record(obj, table)
            except (NotJSON, RecordError, StateError, RecursionError):
                continue  # not a state record, or a malformed one: it defines nothing
        if len(table.states) > max_states:
            raise TooManyStates


# -- pass 2: check ---------------------------------------------------------------------------------

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


_CHECKERS: dict[tuple[Options, int], Checker] = {}
_INTERNED: dict[str, list[CpuState]] = {}


def _worker_checker(options: Options, states: dict[str, CpuState]) -> Checker:
    """This process's checker for `options` with a fresh table (`states`) and tally, its memos kept."""
    key = (options, threading.get_ident())  # a Dask worker may run tasks in several threads
    c = _CHECKERS.get(key)
    if c is None:
        c = _CHECKERS[key] = Checker(options.reference, fingerprint=options.fingerprint,
                                         max_states=options.max_states)
    c.table = StateTable(options.max_states)
    c.tally = Tally()
    for key, st in states.items():
        seen = _INTERNED.setdefault(key, [])
        for s in seen:
            if s == st:
                st = s
                break
        else:
            seen.append(st)
            if len(seen) > 4:
                seen.pop(0)
        c.table.put(key, st)
    if len(_INTERNED) > 4 * DEFAULT_MAX_STATES:
        _INTERNED.clear()
    return c


def writer(options: Options, label: str | None, out: Callable[[str], Any]) -> Callable[[dict[str, Any]], None]:
    """The function writing one verdict (text or JSON line, with the file's name when several)."""
    if options.json:
        if label is None:
            return lambda v: out(dumps(v) + "\n")

        def emit_json(v: dict[str, Any]) -> None:
            out(dumps({"type": v["type"], "file": label, **v}) + "\n")
        return emit_json

    prefix = "" if label is None else f"{label}: "

    def emit_text(v: dict[str, Any]) -> None:
        t = verdict_text(v)
        if t is not None:
            out(prefix + t + "\n")
    return emit_text


def check_chunk(chunk: Chunk, options: Options, out: Callable[[str], Any] | None = None,
                progress: Progress | None = None) -> Piece:
    """Check one piece; its output as text (or written to `out` as it comes, and then an
    interrupt ends the piece early instead of raising), its counts."""
    checker = _worker_checker(options, chunk.states)
    buf = io.StringIO()
    emit = writer(options, chunk.label, out or buf.write)
    interrupted = False
    try:
        f = open_bytes(chunk.path)
    except OSError as e:
        checker.tally.input_error = f"{chunk.path}: cannot read: {e.strerror}"
        return Piece(chunk.label, "", checker.tally, True)
    try:
        if chunk.end is None:
            stream: Any = decompressing(f)
        else:
            f.seek(chunk.start)
            stream = _Range(f, chunk.end)
        check_stream(stream, checker, emit, progress, findings_only=not options.json, first_line=chunk.first_line)
    except KeyboardInterrupt:
        if out is None:
            raise
        interrupted = True
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    checker.flush()
    if checker.tally.input_error is not None:
        checker.tally.input_error = f"{'standard input' if chunk.path == '-' else chunk.path}: {checker.tally.input_error}"
    return Piece(chunk.label, buf.getvalue(), checker.tally, chunk.last, interrupted)


# -- merging --------------------------------------------------------------------------------------

class Merger:
    """Pieces in trace order -> the outputs written, the counts merged; `summary` at the end."""

    def __init__(self, write: Callable[[str], Any], many: bool) -> None:
        self.write = write
        self.many = many
        self.total = Tally()
        self.file: Tally | None = None  # the file being merged
        self.files: list[dict[str, Any]] = []

    def add(self, piece: Piece) -> None:
        if piece.output:
            self.write(piece.output)
        if self.file is None:
            self.file = piece.tally
        else:
            self.file.merge(piece.tally)
        if piece.last:
            self._end_file(piece.label)

    def _end_file(self, label: str | None) -> None:
        f = self.file
        assert f is not None
        self.file = None
        if self.many:
            self.files.append({"file": label, "lines": f.lines, "truncated_final_line": f.truncated,
                               "input_error": f.input_error})
            f.truncated = None
            self.total.merge(f, lines="add")
        else:
            self.total = f

    def lines(self) -> int:
        done = self.total.lines if self.many or self.file is None else 0
        return done + (self.file.lines if self.file is not None else 0)

    def summary(self, options: Options, models_compared: int) -> dict[str, Any]:
        s = self.total.summary(options.reference, options.fingerprint, models_compared)
        if self.many:
            s["files"] = self.files
        return s


def run_pieces(chunks: list[Chunk], options: Options, submit: Callable[..., Any], window: int) -> Iterator[Piece]:
    """The pieces checked by an executor (`submit` as concurrent.futures' or Dask's), yielded in
    trace order; at most `window` pieces are under way or waiting, so memory stays bounded."""
    pending: list[Any] = []
    todo = iter(chunks)
    for c in todo:
        pending.append(submit(check_chunk, c, options))
        if len(pending) >= window:
            break
    while pending:
        piece = pending.pop(0).result()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(submit(check_chunk, nxt, options))
        yield piece


def index_files(chunks: list[Chunk], options: Options, submit: Callable[..., Any] | None,
                note: Callable[[str], None]) -> list[Chunk]:
    """Index the files split in several pieces (see the module's docstring); a file with more
    distinct state ids than --max-states goes back to one piece."""
    by_file: dict[str, list[Chunk]] = {}
    for c in chunks:
        if c.end is not None:
            by_file.setdefault(c.path, []).append(c)
    futures = {p: [submit(index_chunk, c.path, c.start, c.end) if submit else None for c in cs]
               for p, cs in by_file.items()}
    whole: set[str] = set()
    for p, cs in by_file.items():
        found = [f.result() if f is not None else index_chunk(c.path, c.start, c.end)  # type: ignore[arg-type]
                 for f, c in zip(futures[p], cs, strict=True)]
        try:
            apply_index(cs, found, options.max_states)
        except TooManyStates:
            note(f"{p}: more than {options.max_states} distinct state ids (--max-states): checked in one piece, "
                 "so that states are evicted as in one process")
            whole.add(p)
    out: list[Chunk] = []
    for c in chunks:
        if c.path in whole:
            if c.start == 0:
                out.append(Chunk(c.path, c.label))
        else:
            out.append(c)
    return out
