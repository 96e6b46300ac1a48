"""Checking a trace in pieces — on every core (--jobs) or on a Dask cluster (--dask) — with
exactly the output one process gives.

A piece (`Chunk`) is a byte range of one file that starts at a line boundary, or a whole file
(compressed files and standard input cannot be split). Each piece is checked by a Checker whose
state table starts as the table the piece is given (handoff.py: how it is known, or found
afterwards to have been right) and returns its output (text or JSON lines) and its counts
(tally.Tally). The number of a piece's first line is not known when it starts (that would need a
pass counting the newlines before it): its verdicts are numbered from 0 and the places of the
numbers are kept (`Piece.holes`), so that the parent renumbers them when the piece's turn comes
(`Piece.shift`). The parent writes the outputs in trace order and merges the counts in trace
order (Tally.merge), which gives the summary one pass gives, byte for byte
(tests/test_trace_parallel.py). schedule.py runs the pieces.

Workers keep their memos from piece to piece (`_worker_checker`); states arriving in a table are
interned, so that a line seen in an earlier piece is recognised as meaning the same thing.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vmxaddr.models import REGISTRY
from vmxaddr.progress import Progress
from vmxaddr.state import CpuState
from vmxaddr.trace.checker import Checker
from vmxaddr.trace.format import DEFAULT_MAX_STATES
from vmxaddr.trace.handoff import Handoff, Items, RecordingTable, _Range, unflatten
from vmxaddr.trace.jsonline import dumps
from vmxaddr.trace.reader import check_stream, decompressing, open_bytes
from vmxaddr.trace.tally import Tally
from vmxaddr.trace.text import verdict_text

CHUNK_BYTES = 16 << 20  # a large file is split into pieces of about this size
FIRST_PIECE = 16  # ...but its first piece is 1/16 of that (at most 1/8 of the others): its states are known first
MIN_PIECE = 1 << 20  # ...and no piece is made smaller than this to share the work out
PER_WORKER = 4


@dataclass(frozen=True)
class Options:
    """What every piece is checked with (picklable: it travels to workers)."""

    reference: str = "sdm"
    fingerprint: str = "wrong"
    max_states: int = DEFAULT_MAX_STATES
    json: bool = False


@dataclass
class Chunk:
    """One piece of a trace file to check: the byte range, and the label its verdicts carry."""
    path: str
    label: str | None  # the name verdicts carry when several files are checked, else None
    start: int = 0
    end: int | None = None  # None: to the end of the file
    first_line: int | None = 0  # lines of the file before `start`; None: not known yet (see Piece.holes)
    states: Items = field(default_factory=list)  # the state table to start with, least recently used first
    last: bool = True  # the file's last piece
    file: int = 0  # which of the files checked
    index: int = 0  # which piece of its file
    report: bool = True  # return the table as the piece leaves it (Handoff.table; the index way needs none)


@dataclass
class Piece:
    """A checked chunk: its output, its counts, what it did with its state table."""

    label: str | None
    output: str
    tally: Tally
    last: bool
    interrupted: bool = False
    holes: list[tuple[int, int]] = field(default_factory=list)  # (offset in output, line number there)
    handoff: Handoff | None = None

    def shift(self, first_line: int) -> None:
        """Number the piece's lines from `first_line` + 1 (it was checked as if from 1)."""
        if first_line:
            parts, at = [], 0
            for pos, n in self.holes:
                parts += (self.output[at:pos], str(n + first_line))
                at = pos + len(str(n))
            parts.append(self.output[at:])
            self.output = "".join(parts)
            t = self.tally
            t.lines += first_line
            if t.truncated is not None:
                t.truncated += first_line
        self.holes = []


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


def _next_line(f: Any, pos: int, size: int) -> int:
    """The offset just after the first newline at or after `pos` (`size` if none)."""
    f.seek(pos)
    while True:
        block = f.read(1 << 16)
        if not block:
            return size
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)


def _boundaries(path: str, size: int, first: int, each: int) -> list[int]:
    """Offsets just after a newline: 0, then about `first` bytes on, then about every `each`
    bytes (the rest shared evenly); `size` last."""
    out = [0]
    with open(path, "rb") as f:
        cut = _next_line(f, min(first, size), size)
        if cut < size:
            out.append(cut)
        rest = size - out[-1]
        pieces = -(-rest // each)
        base = out[-1]
        for k in range(1, pieces):
            pos = _next_line(f, max(base + rest * k // pieces, out[-1]), size)
            if out[-1] < pos < size:
                out.append(pos)
    out.append(size)
    return out


def plan(paths: list[str], split: bool, chunk_bytes: int | None = None, workers: int = 1) -> list[Chunk]:
    """Chunks of `paths`: a large plain file in pieces of about `chunk_bytes` (the first one
    smaller; smaller ones too when that gives fewer than PER_WORKER pieces for each of `workers`:
    a trace whose lines are slow to check must still keep every worker busy to the end) when
    `split`, the rest whole. Pieces after a file's first start with their first line and state
    table unknown: schedule.py finds them."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    many = len(paths) > 1
    chunks = []
    for i, p in enumerate(paths):
        label = p if many else None
        size = _splittable(p) if split else None
        each = max(min(chunk_bytes, MIN_PIECE), min(chunk_bytes, (size or 0) // (PER_WORKER * workers)))
        if size is None or size <= each:
            chunks.append(Chunk(p, label, file=i))
            continue
        first = max(1, min(chunk_bytes // FIRST_PIECE, each // 8))
        cuts = _boundaries(p, size, first, each)
        for k in range(len(cuts) - 1):
            chunks.append(Chunk(p, label, cuts[k], cuts[k + 1], 0 if k == 0 else None, last=k == len(cuts) - 2,
                                file=i, index=k))
    return chunks


# -- checking a piece ----------------------------------------------------------------------------

_CHECKERS: dict[tuple[Options, int], Checker] = {}
_INTERNED: dict[str, list[CpuState]] = {}


def _worker_checker(options: Options, states: Items) -> Checker:
    """This process's checker for `options` with a fresh table (`states`, recording what it is
    asked: handoff.RecordingTable) and tally, its memos kept."""
    # a Dask worker may run tasks in several threads; and a checker holds the models it was made
    # with, so a registry that changed since (a source fetched, a cache switched) needs a new one
    key = (options, threading.get_ident(), tuple(id(m.function) for m in REGISTRY.values()))
    c = _CHECKERS.get(key)
    if c is None:
        c = _CHECKERS[key] = Checker(options.reference, fingerprint=options.fingerprint,
                                     max_states=options.max_states)
    c.table = RecordingTable(options.max_states, (_intern(k, st) for k, st in states))
    c.tally = Tally()
    if len(_INTERNED) > 4 * DEFAULT_MAX_STATES:
        _INTERNED.clear()
    return c


def _intern(key: str, st: CpuState | tuple[Any, ...]) -> tuple[str, CpuState]:
    if isinstance(st, tuple):  # a flat state (handoff.Packed) that did not make the trip (threads)
        st = unflatten(st)
    seen = _INTERNED.setdefault(key, [])
    for s in seen:
        if s == st:
            return key, s
    seen.append(st)
    if len(seen) > 4:
        seen.pop(0)
    return key, st


def writer(options: Options, label: str | None, out: Callable[[str], Any],
           holes: list[tuple[int, int]] | None = None) -> Callable[[dict[str, Any]], None]:
    """The function writing one verdict (text or JSON line, with the file's name when several);
    with `holes`, where each line number went (the offset counted in characters written)."""
    written = [0]

    def put(text: str, at: int, line: int) -> None:
        if holes is not None:
            holes.append((written[0] + at, line))
            written[0] += len(text)
        out(text)

    if options.json:
        def emit_json(v: dict[str, Any]) -> None:
            text = dumps(v if label is None else {"type": v["type"], "file": label, **v}) + "\n"
            # the first `"line":` is the key: in the label's JSON string its quotes are escaped
            put(text, text.index('"line":') + 7 if holes is not None else 0, v["line"])
        return emit_json

    prefix = "" if label is None else f"{label}: "

    def emit_text(v: dict[str, Any]) -> None:
        t = verdict_text(v)  # "line N…"
        if t is not None:
            put(prefix + t + "\n", len(prefix) + 5, v["line"])
    return emit_text


def check_chunk(chunk: Chunk, options: Options, out: Callable[[str], Any] | None = None,
                progress: Progress | None = None) -> Piece:
    """Check one piece; its output as text (or written to `out` as it comes, and then an
    interrupt ends the piece early instead of raising), its counts. A piece whose first line is
    not known is numbered from 1 and says where the numbers are (Piece.holes)."""
    checker = _worker_checker(options, chunk.states)
    parts: list[str] = []
    holes: list[tuple[int, int]] | None = [] if chunk.first_line is None else None
    emit = writer(options, chunk.label, out or parts.append, holes)
    interrupted = False
    try:
        f = open_bytes(chunk.path)
    except OSError as e:
        checker.tally.input_error = f"{chunk.path}: cannot read: {e.strerror}"
        return Piece(chunk.label, "", checker.tally, chunk.last)
    try:
        if chunk.end is None:
            stream: Any = decompressing(f)
        else:
            f.seek(chunk.start)
            stream = _Range(f, chunk.end)
        check_stream(stream, checker, emit, progress, findings_only=not options.json,
                     first_line=chunk.first_line or 0)
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
    table = checker.table
    assert isinstance(table, RecordingTable)
    return Piece(chunk.label, "".join(parts), checker.tally, chunk.last, interrupted, holes or [],
                 table.handoff(chunk.report))


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
        """Write a piece's output and add its counts, in trace order."""
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
        """The lines checked so far, over every file."""
        done = self.total.lines if self.many or self.file is None else 0
        return done + (self.file.lines if self.file is not None else 0)

    def summary(self, options: Options, models_compared: int) -> dict[str, Any]:
        """The summary of everything merged, as one process would give it."""
        s = self.total.summary(options.reference, options.fingerprint, models_compared)
        if self.many:
            s["files"] = self.files
        return s
