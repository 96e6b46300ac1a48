"""Reading a trace: bytes (plain, gzip or zstd) into bounded lines, and lines through a Checker."""

from __future__ import annotations

import io
import os
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


def check_stream(stream: IO[bytes], checker: Checker, emit: Callable[[dict[str, Any]], None],
                 progress: Progress | None = None, total_bytes: int | None = None) -> dict[str, Any]:
    done = 0
    for n, data, terminated, too_long, size in iter_lines(stream):
        done += size
        v = checker.feed(n, data, terminated, too_long)
        if v is not None:
            emit(v)
        if progress is not None and not n & 1023:
            note = f"{100 * done / total_bytes:.0f}% of the file" if total_bytes else ""
            progress.update(n, note)
    return checker.summary()



def open_input(path: str) -> tuple[IO[bytes], int | None]:
    from vmxaddr.cli import fail

    if path == "-":
        return sys.stdin.buffer, None
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError:
        size = None
    return f, size or None


def decompressing(stream: IO[bytes]) -> IO[bytes]:
    """`stream`, or a reader of its decompressed bytes when it starts like gzip or zstd data."""
    peek = getattr(stream, "peek", None)
    head = peek(4)[:4] if peek else b""
    if head[:2] == b"\x1f\x8b":
        import gzip

        return gzip.GzipFile(fileobj=stream)  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True))  # type: ignore[arg-type]
    return stream

