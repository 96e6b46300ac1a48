"""Reading a trace: bytes (plain, gzip or zstd) into bounded lines, and lines through a Checker."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

from vmxaddr.progress import Progress
from vmxaddr.trace.checker import Checker
from vmxaddr.trace.format import MAX_LINE


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


TOO_LONG = None  # stands for an over-long line in a batch: its bytes are never held
BLOCK = 1 << 18
MAX_SKIP = 1 << 28  # an over-long line without a newline in this many bytes ends the reading


class InputError(Exception):
    """The input cannot be read on (decompression failed, no newline in MAX_SKIP bytes): what was
    read before is checked and counted; the message says where it broke."""


def read_batches(stream: IO[bytes], max_line: int = MAX_LINE, block: int = BLOCK
                 ) -> Iterator[tuple[list[bytes | None], bytes | None, int]]:
    """(lines, unterminated final line, bytes consumed) per block of the stream: each line without
    its line end (LF, CRLF or CR), TOO_LONG for a line longer than `max_line` bytes; the final-line slot is set only
    at the end of a stream that does not end with a newline. Holds at most one block and one line."""
    tail = b""
    skipping = 0  # > 0: inside an over-long line, this many bytes of it skipped
    after_cr = False  # the previous block ended with CR: a LF starting this one is its CRLF's
    while True:
        buf = stream.read(block)
        if not buf:
            break
        size = len(buf)
        if after_cr and buf.startswith(b"\n"):
            buf = buf[1:]
        after_cr = buf.endswith(b"\r")
        if b"\r" in buf:  # CRLF and CR-only line ends (a trace saved on Windows or classic Mac OS) are lines too
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if skipping:
            i = buf.find(b"\n")
            if i < 0:
                skipping += size
                if skipping > MAX_SKIP:
                    raise InputError(f"no newline in {MAX_SKIP >> 20} MB: not a trace of JSON lines")
                yield [], None, size
                continue
            skipping = 0
            buf = buf[i + 1:]
            lines: list[bytes | None] = [TOO_LONG]
        else:
            lines = []
        if tail:
            buf = tail + buf
        parts: list[bytes | None] = buf.split(b"\n")  # type: ignore[assignment]
        tail = parts.pop()  # type: ignore[assignment]
        if parts and max(map(len, parts)) > max_line:  # type: ignore[arg-type]
            parts = [TOO_LONG if len(p) > max_line else p for p in parts]  # type: ignore[arg-type]
        if len(tail) > max_line:
            tail, skipping = b"", len(tail)
        lines += parts
        yield lines, None, size
    if skipping:
        yield [TOO_LONG], None, 0
    elif tail:
        yield [], tail, 0


def check_stream(stream: IO[bytes], checker: Checker, emit: Callable[[dict[str, Any]], None],
                 progress: Progress | None = None, total_bytes: int | None = None,
                 findings_only: bool = False, first_line: int = 0) -> dict[str, Any]:
    """Check every line of `stream`; `emit` gets each verdict (with `findings_only`, only those of
    wrong records, malformed and truncated lines). A stream that breaks (InputError, a
    decompression error) ends the check: what came before is checked, and the summary says where."""
    done = 0
    n = last = first_line
    emit = _writing(emit)
    try:
        for lines, final, size in read_batches(stream):
            done += size
            n = checker.feed_batch(n, lines, emit, findings_only)
            if final is not None:
                n += 1
                v = checker.feed(n, final, terminated=False)
                if v is not None:
                    emit(v)
            if progress is not None and n - last >= 4096:
                last = n
                progress.update(n, f"{100 * done / total_bytes:.0f}% of the file" if total_bytes else "")
    except InputError as e:
        checker.tally.input_error = f"after line {n}: {e}"
    except _WriteFailed as w:  # our output, not the trace: the command line reports it (vmxaddr.cli.main)
        raise w.error from None
    except OSError as e:
        checker.tally.input_error = f"reading failed after line {n}: {e.strerror or e}"
    except DECOMPRESSION_ERRORS as e:
        where = getattr(stream, "where", None)
        if where is None:
            checker.tally.input_error = f"reading failed after line {n}: {_reason(e)}"
        else:
            checker.tally.input_error = (f"decompression failed after line {n}, {where()} compressed bytes read: "
                                         f"{_reason(e)}")
    return checker.summary()


class _WriteFailed(Exception):
    def __init__(self, error: OSError) -> None:
        self.error = error


def _writing(emit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """`emit`, whose OSError (a full disk, a closed pipe) is told apart from one reading the trace."""
    def out(v: dict[str, Any]) -> None:
        try:
            emit(v)
        except OSError as e:
            raise _WriteFailed(e) from e

    return out


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text[0].lower() + text[1:] if text else text


def open_bytes(path: str) -> IO[bytes]:
    """`path` opened for reading bytes ("-": standard input). A FIFO with no writer reads as empty
    instead of blocking forever; a directory is an OSError (EISDIR) like any unreadable path."""
    if path == "-":
        return sys.stdin.buffer
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def text_lines(stream: IO[bytes], max_line: int = MAX_LINE) -> Iterator[str | None]:
    """The lines of `stream` as text (undecodable bytes replaced), None for one longer than
    `max_line` bytes; InputError (from read_batches) when no newline comes in MAX_SKIP bytes."""
    for lines, final, _ in read_batches(stream, max_line):
        for b in lines:
            yield None if b is None else b.decode("utf-8", "replace")
        if final is not None:
            yield final.decode("utf-8", "replace")


class Truncated(Exception):
    """A compressed stream that ends inside a frame (gzip member, zstd frame)."""


class _Frames:
    """Compressed frames one after another (as `cat a.gz b.gz` makes) decompressed, for
    read_batches. Whatever decompresses before a fault is delivered first; the fault (a
    decompressor's error, or Truncated when the input ends inside a frame) is raised by the read
    after it. `where()`: compressed bytes read so far."""

    def __init__(self, raw: IO[bytes], new: Callable[[], Any], what: str) -> None:
        self.raw = raw
        self.new = new
        self.what = what
        self.dobj = new()
        self.in_frame = False
        self.pending = b""
        self.count = 0
        self.error: BaseException | None = None

    def where(self) -> int:
        return self.count

    def read(self, n: int = -1) -> bytes:
        while not self.pending and self.error is None:
            data = self.raw.read(1 << 16)
            self.count += len(data)
            if not data:
                if self.in_frame:
                    self.error = Truncated(f"the {self.what} stream ends inside a frame: truncated")
                break
            try:
                while data:
                    self.in_frame = True
                    self.pending += self.dobj.decompress(data)
                    if self.dobj.eof:
                        data = self.dobj.unused_data
                        self.dobj = self.new()
                        self.in_frame = False
                    else:
                        data = b""
            except Exception as e:  # noqa: BLE001 - zlib.error, ZstdError: raised after the data before it
                self.error = e
        if not self.pending:
            if self.error is not None:
                raise self.error
            return b""
        n = len(self.pending) if n < 0 else n
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


class _Gzip(_Frames):
    def __init__(self, raw: IO[bytes]) -> None:
        import zlib

        super().__init__(raw, lambda: zlib.decompressobj(wbits=31), "gzip")  # 31: gzip header and CRC-32 checked


class _Zstd(_Frames):
    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        super().__init__(raw, zstandard.ZstdDecompressor().decompressobj, "zstd")


def _decompression_errors() -> tuple[type[BaseException], ...]:
    import zlib

    errors: list[type[BaseException]] = [zlib.error, Truncated]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


DECOMPRESSION_ERRORS = _decompression_errors()


def decompressing(stream: IO[bytes]) -> Any:
    """`stream`, or a reader of its decompressed bytes (with `where()`) when it starts like gzip
    or zstd data."""
    peek = getattr(stream, "peek", None)
    head = peek(4)[:4] if peek else b""
    if head[:2] == b"\x1f\x8b":
        return _Gzip(stream)
    if head == b"\x28\xb5\x2f\xfd":
        return _Zstd(stream)
    return stream
