"""Reading the scanner's inputs, bounded: what `vmxaddr scan` may open and how much it may read.

- Only regular files are read: a FIFO would block forever and a device (/dev/zero) never ends.
- An image is read or decompressed (xz, gzip, zstd, by magic number) in chunks, and the reading
  stops with a ScanError as soon as it passes `limit` bytes (`--max-size`, default MAX_IMAGE):
  a compressed "bomb" of gigabytes of zeros costs at most `limit` bytes of memory and the time
  to decompress that much.
- Directories are walked without following symbolic links; a directory that cannot be read is
  reported, never silently counted as "0 files".
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import zlib
from collections.abc import Callable
from typing import IO, Any

MAX_IMAGE = 256 << 20
"""Default cap on an image's size after decompression: above the largest kernel image or
hypervisor (a Debian vmlinux is under 100 MiB); `vmxaddr scan --max-size` raises it."""

CHUNK = 1 << 20

XZ_MAGIC, GZIP_MAGIC, ZSTD_MAGIC = b"\xfd7zXZ\x00", b"\x1f\x8b", b"\x28\xb5\x2f\xfd"


class ScanError(Exception):
    """A file that cannot be scanned; the message says what is wrong, in one line."""


def mib(n: int) -> str:
    """`n` bytes as MiB for messages, e.g. "256 MiB"."""
    return f"{n / (1 << 20):g} MiB"


def regular_file_problem(path: str) -> str | None:
    """Why `path` is not a file the scanner reads (None when it is a regular file)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISREG(st.st_mode):
        return None
    what = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
            else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    return f"{what}, not a regular file: not read"


def _decompressor(kind: str, fh: IO[bytes]) -> Any:
    if kind == "xz":
        return lzma.LZMAFile(fh)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=fh)
    try:
        import zstandard
    except ImportError:
        raise ScanError("zstd-compressed, and the zstandard module is not installed (pip install zstandard)") from None
    return zstandard.ZstdDecompressor().stream_reader(fh)


def _bad_stream_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [lzma.LZMAError, EOFError, zlib.error, gzip.BadGzipFile]
    try:
        import zstandard

        errs.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errs)


def read_image(path: str, limit: int = MAX_IMAGE) -> tuple[bytes | bytearray, str | None]:
    """The file's bytes, decompressed when it is xz, gzip or zstd (by its magic number), never
    more than `limit` bytes (else ScanError, having read at most limit + CHUNK)."""
    problem = regular_file_problem(path)
    if problem:
        raise ScanError(problem)
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
            fh.seek(0)
            kind = ("xz" if head.startswith(XZ_MAGIC) else "gzip" if head.startswith(GZIP_MAGIC)
                    else "zstd" if head.startswith(ZSTD_MAGIC) else None)
            if kind is None:
                size = os.fstat(fh.fileno()).st_size
                if size > limit:
                    raise ScanError(f"{mib(size)}, over the {mib(limit)} cap on an image (--max-size)")
                data = fh.read(limit + 1)
                if len(data) > limit:
                    raise ScanError(f"over the {mib(limit)} cap on an image (--max-size)")
                return data, None
            buf = bytearray()
            try:
                with _decompressor(kind, fh) as reader:
                    while True:
                        chunk = reader.read(CHUNK)
                        if not chunk:
                            break
                        buf += chunk
                        if len(buf) > limit:
                            raise ScanError(f"{kind} data decompresses to more than the {mib(limit)} cap on an "
                                            f"image (--max-size): stopped there")
            except _bad_stream_errors() as exc:
                raise ScanError(f"bad {kind} data after {len(buf)} decompressed bytes: {exc}") from None
            return buf, kind
    except OSError as exc:
        raise ScanError(exc.strerror or str(exc)) from None


def looks_like_elf(path: str) -> bool:
    """Whether a regular file starts with the ELF magic number, after decompressing when its
    name ends in .xz, .gz or .zst (only the first bytes are decompressed)."""
    if regular_file_problem(path):
        return False
    try:
        with open(path, "rb") as raw:
            if path.endswith((".xz", ".gz", ".zst")):
                kind = {"xz": "xz", "gz": "gzip", "zst": "zstd"}[path.rsplit(".", 1)[1]]
                with _decompressor(kind, raw) as fh:
                    return bool(fh.read(4) == b"\x7fELF")
            return raw.read(4) == b"\x7fELF"
    except (OSError, ScanError, ValueError, *_bad_stream_errors()):
        return path.endswith((".ko.xz", ".ko.gz", ".ko.zst"))  # then scanning says what is wrong


def expand_paths(paths: list[str], on_error: Callable[[str, str], None] | None = None) -> list[str]:
    """Files as given; directories walked (sorted, symbolic links not followed) for ELF files,
    plain or compressed. A directory that cannot be read goes to on_error(path, reason)."""
    out: list[str] = []

    def walk_error(exc: OSError) -> None:
        if on_error is not None:
            on_error(str(exc.filename or "?"), f"cannot read the directory: {exc.strerror or exc}")

    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        for root, dirs, names in os.walk(path, onerror=walk_error):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(root, name)
                if os.path.isfile(full) and not os.path.islink(full) and looks_like_elf(full):
                    out.append(full)
    return out


def printable(text: str) -> str:
    """`text` with every non-printable character escaped (\\x1b, \\u202e, …), so that a symbol or
    section name, or a file name, cannot send control sequences to the user's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
