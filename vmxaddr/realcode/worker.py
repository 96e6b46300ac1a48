"""Compiled models run in a worker process of their own, under a supervisor.

A real-code model's C (a user's adapter, a KVM tree, Debian's KVM or Xen) runs in a small program,
shim/worker.c, that loads the library: vmxaddr never loads it. Whatever the C does — dereference
a bad pointer, abort(), overflow its stack, raise a signal, call exit(), loop for ever, print, close
fd 1 — happens to that process. The supervisor here turns it into a `ModelFailure` for the case that
caused it (a finding: fuzz gives it a class of its own, check-trace counts it, a one-case command
prints one line), starts a fresh worker for the next case, and never lets the C's output reach
vmxaddr's stdout or stderr (it goes to a file of the worker's own, whose last line is quoted).

The protocol is built for throughput: the cases travel in shared memory, packed by the compiled
marshaller (shim/marshal.c) straight into the vmxaddr.h structures, up to BATCH per round trip;
one 12-byte request and a 1-byte reply per batch on two pipes. The worker stores the number of
the case it is running before each call, so a crash names its case, and the time limit
(`--call-timeout`, default DEFAULT_CALL_TIMEOUT) is per call: the supervisor waits while that
number moves. ^C interrupts the wait at once (the worker, in a session of its own, does not see
it) and the worker is killed. A third pipe is the worker's lifeline: it ends itself when vmxaddr
is gone, even while the C loops.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vmxaddr.errors import ModelFailure as ModelFailure  # (defined in the leaf module; importable from here)
from vmxaddr.models.guard import one_line
from vmxaddr.realcode.bridge import ACCESS, EXIT, LAYOUT, RESULT, STATE, BridgeError, _Buffers, marshaller
from vmxaddr.realcode.info import DEFAULT_CALL_TIMEOUT, ENV_CALL_TIMEOUT

BATCH = 512
SCRATCH = 1024
TEXT = 4096
RECORD = EXIT.size + STATE + ACCESS.size
HEAD = struct.Struct("<4I12IiIQ")  # current, ready, have_layout, have_mnemonics, layout[12], ret, reserved, address
TEXT_OFFSET = HEAD.size
SCRATCH_OFFSET = TEXT_OFFSET + TEXT
IN_OFFSET = SCRATCH_OFFSET + 4 * SCRATCH
OUT_OFFSET = IN_OFFSET + BATCH * RECORD
SIZE = OUT_OFFSET + BATCH * RESULT.size
OP_BATCH, OP_CALL, OP_STRING, OP_SYMBOL = 1, 2, 3, 4
READY, LOAD_FAILED, INTERNAL_ERROR = 1, 2, 3
_REQUEST = struct.Struct("<3I")
_U32 = struct.Struct("<I")

LOAD_TIMEOUT = 30.0  # loading the library (its constructors run)
OUTPUT_LIMIT = 1 << 20  # the C's output file is emptied beyond this
ENV_TIMEOUT = ENV_CALL_TIMEOUT
ENV_IN_PROCESS = "VMXADDR_IN_PROCESS"  # 1: load the C into vmxaddr as before (benchmarks, debugging)


class Failure:
    """What the worker did instead of answering one case (the supervisor's verdict)."""

    __slots__ = ("finding", "detail")

    def __init__(self, finding: str, detail: str = "") -> None:
        self.finding, self.detail = finding, detail

    def error(self, model: str, case: str = "") -> ModelFailure:
        """The ModelFailure to raise for this failure of `model` on `case`."""
        return ModelFailure(model, self.finding, self.detail, case)


def call_timeout() -> float:
    """The per-call time limit: --call-timeout (passed on in the environment), else the default."""
    try:
        t = float(os.environ.get(ENV_TIMEOUT, ""))
    except ValueError:
        return DEFAULT_CALL_TIMEOUT
    return t if t > 0 else DEFAULT_CALL_TIMEOUT


def set_call_timeout(seconds: float | None) -> None:
    """Set the per-call time limit of compiled models (in the environment, so that worker processes
    inherit it)."""
    if seconds is not None:
        os.environ[ENV_TIMEOUT] = repr(float(seconds))


def isolated() -> bool:
    """True unless VMXADDR_IN_PROCESS asks for compiled models to run in this process."""
    return os.environ.get(ENV_IN_PROCESS, "") in ("", "0")


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


_EXE: list[Path] = []


def worker_program() -> Path:
    """The worker executable, built (and cached) at the first call."""
    if not _EXE:
        from vmxaddr.realcode.build import build_worker

        _EXE.append(build_worker((("VMXADDR_WORKER_SIZE", SIZE), ("VMXADDR_WORKER_IN", IN_OFFSET),
                                  ("VMXADDR_WORKER_OUT", OUT_OFFSET), ("VMXADDR_WORKER_TEXT", TEXT_OFFSET),
                                  ("VMXADDR_WORKER_RECORD", RECORD))))
    return _EXE[0]


class Worker:
    """One library's worker process (started at the first call, again after each failure).

    `run(items, operand_only)` -> one raw result tuple (bridge.RESULT's fields) or Failure per
    (exit, state, access). Calls from several threads take turns; a forked child (fuzz --jobs)
    starts a worker of its own."""

    def __init__(self, lib: Path, function: str, model: str) -> None:
        self.lib, self.function, self.model = lib, function, model
        self.path = lib  # (as bridge.Library names it)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.mm: mmap.mmap | None = None
        self.fds: list[int] = []  # shared memory, output file, request (write), reply (read), lifeline (write)
        self.mnemonics: str | None = None
        self.layout: tuple[int, ...] | None = None
        self.starts = 0
        self.pending = 0  # cases submitted, not collected (negative: the request could not be sent)
        self.stash: list[tuple[int, ...] | Failure] | None = None  # their results, when another call came first
        m = marshaller()  # the module's call(); its pack() writes a case into the shared memory
        self._pack = getattr(getattr(m, "__self__", None), "pack", None)
        self.packs = self._pack is not None  # else run() needs each case's plan (bridge._Buffers.load_operand)
        self._buffers = _Buffers()

    # -- the process --------------------------------------------------------------------------
    def _files(self) -> None:
        if self.pid != os.getpid():  # forked: the parent's worker and memory are not ours
            self.proc, self.mm, self.fds, self.pid, self.pending, self.stash = None, None, [], os.getpid(), 0, None
            self.lock = threading.Lock()
        if self.mm is None:
            shm = os.memfd_create("vmxaddr-worker", os.MFD_CLOEXEC)
            os.ftruncate(shm, SIZE)
            self.mm = mmap.mmap(shm, SIZE)
            self.fds = [shm, self._output_file()]

    @staticmethod
    def _output_file() -> int:
        fd, name = tempfile.mkstemp(prefix="vmxaddr-model-output-")
        os.close(fd)
        out = os.open(name, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        os.unlink(name)
        return out

    def start(self) -> None:
        """Start the worker process with its shared memory, pipes and lifeline."""
        self._files()
        assert self.mm is not None
        shm, out = self.fds[0], self.fds[1]
        self._close_pipes()
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        life_r, life_w = os.pipe()
        self.mm[:HEAD.size] = bytes(HEAD.size)
        try:
            self.proc = subprocess.Popen(
                [str(worker_program()), str(self.lib), self.function, str(shm), str(req_r), str(rep_w), str(life_r)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(shm, req_r, rep_w, life_r),
                start_new_session=True)
        except OSError as e:
            for fd in (req_r, req_w, rep_r, rep_w, life_r, life_w):
                os.close(fd)
            raise BridgeError(f"cannot start the worker process for {self.model}: {e}") from None
        for fd in (req_r, rep_w, life_r):
            os.close(fd)
        self.fds[2:] = [req_w, rep_r, life_w]
        self.starts += 1
        failure = self._wait(LOAD_TIMEOUT, loading=True)
        head = HEAD.unpack_from(self.mm, 0)
        if failure is not None:
            self.stop()
            raise BridgeError(f"{self.model}: loading {self.lib.name} in the worker: {failure.finding}"
                              + (f" ({failure.detail})" if failure.detail else ""))
        if head[1] == LOAD_FAILED:
            text = self._text()
            self.stop()
            raise BridgeError(f"cannot load {self.lib}: {text}" if not text.startswith("no function")
                              else f"{self.lib.name} has no function {self.function!r}")
        self.layout = tuple(head[4:16]) if head[2] else None
        self.mnemonics = self._text() if head[3] else None
        if self.layout is None:
            self.stop()
            raise BridgeError(f"{self.lib.name} does not export vmxaddr_layout: write VMXADDR_EXPORT_LAYOUT; in one "
                              "of its files (vmxaddr.h)")
        if self.layout[0] != LAYOUT[0]:
            self.stop()
            raise BridgeError(f"{self.lib.name} was built against vmxaddr.h ABI {self.layout[0]}, this vmxaddr "
                              f"speaks {LAYOUT[0]}")
        if self.layout != LAYOUT:
            self.stop()
            raise BridgeError(f"{self.lib.name}: the structures' sizes/offsets {self.layout} differ from vmxaddr's "
                              f"{LAYOUT} (a modified vmxaddr.h, or a compiler with other alignment rules)")

    def _close_pipes(self) -> None:
        for fd in self.fds[2:]:
            try:
                os.close(fd)
            except OSError:
                pass
        del self.fds[2:]

    def stop(self) -> None:
        """Kill the worker (if any) and reap it."""
        proc, self.proc = self.proc, None
        self._close_pipes()
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its session: with any process the C started
            except OSError:
                try:
                    proc.kill()
                except OSError:
                    pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """Stop the worker and close its files (only in the process that started it)."""
        if self.pid != os.getpid():
            return
        self.stop()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if self.mm is not None:
            self.mm.close()
            self.mm = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass

    # -- one round trip -------------------------------------------------------------------------
    def _text(self) -> str:
        assert self.mm is not None
        raw = self.mm[TEXT_OFFSET:TEXT_OFFSET + TEXT]
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def _last_output(self) -> str:
        try:
            out = self.fds[1]
            size = os.fstat(out).st_size
            tail = os.pread(out, 400, max(0, size - 400))
        except (OSError, IndexError):
            return ""
        lines = [ln for ln in tail.decode(errors="replace").splitlines() if ln.strip()]
        return one_line(lines[-1], 120) if lines else ""

    def _died(self) -> Failure:
        """The worker is gone (or going): why, as a finding."""
        assert self.proc is not None
        try:
            status = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        said = self._last_output()
        detail = f"its last output: {said!r}" if said else ""
        if status < 0:
            return Failure(f"crashed: {_signal_name(-status)}", detail)
        assert self.mm is not None
        if HEAD.unpack_from(self.mm, 0)[1] == INTERNAL_ERROR:
            return Failure("stopped the worker", self._text())
        return Failure(f"exited (status {status})", detail)

    def _wait(self, limit: float, loading: bool = False) -> Failure | None:
        """Wait for the reply: None when it came, else the failure (the worker is then stopped).
        The time limit runs from the last call the worker started."""
        assert self.proc is not None and self.mm is not None
        rep = self.fds[3]
        poller = select.poll()
        poller.register(rep, select.POLLIN)
        mm = self.mm
        last = _U32.unpack_from(mm, 0)[0]
        since = time.monotonic()
        slice_ms = max(1, min(100, int(limit * 1000)))
        try:
            while True:
                if poller.poll(slice_ms):
                    data = os.read(rep, 1)
                    if data in (b"D", b"R"):
                        return None
                    f = self._died() if data in (b"", b"E") else Failure("stopped the worker", "bad reply")
                    self.stop()
                    return f
                now = time.monotonic()
                cur = _U32.unpack_from(mm, 0)[0]
                if cur != last:
                    last, since = cur, now
                elif now - since >= limit:
                    self.stop()
                    return Failure("timed out", f"no answer within {limit:g} s{'' if loading else ', the --call-timeout'}")
        except BaseException:  # ^C: the worker is stopped, the interrupt goes on
            self.stop()
            raise

    def _request(self, op: int, first: int = 0, count: int = 0) -> Failure | None:
        if self.proc is None or self.pid != os.getpid():
            self.start()
        sent = False
        try:
            os.write(self.fds[2], _REQUEST.pack(op, first, count))
            sent = True
            return self._wait(call_timeout())
        except OSError:
            if sent:
                raise
            f = self._died()  # it died between two requests
            self.stop()
            return f
        except BaseException:  # ^C: a worker left busy would answer the next request late
            self.stop()
            raise

    # -- the calls --------------------------------------------------------------------------
    def pack(self, i: int, exit: Any, state: Any, access: Any, operand_only: bool, plan: Any = None) -> None:
        """Write case `i` into the shared memory's input area (`operand_only`: only what the operand
        needs)."""
        assert self.mm is not None
        off = IN_OFFSET + i * RECORD
        if self._pack is not None:
            self._pack(self.mm, off, exit, state, access, operand_only)
            return
        b = self._buffers
        if operand_only and plan is not None:
            b.load_operand(exit, state, access, plan[0], plan[1], plan[2])
        else:
            b.load(exit, state, access)
        self.mm[off:off + EXIT.size] = b.exit
        self.mm[off + EXIT.size:off + EXIT.size + STATE] = b.state
        self.mm[off + EXIT.size + STATE:off + RECORD] = b.access

    def run(self, items: list[tuple[Any, Any, Any]], operand_only: bool, plans: list[Any] | None = None,
            deadline: float | None = None) -> list[tuple[int, ...] | Failure]:
        """Each case's raw result, or the Failure it caused (the run goes on with a fresh worker).
        After a failure past `deadline` (time.time()) no more cases are run: fewer results."""
        out: list[tuple[int, ...] | Failure] = []
        with self.lock:
            self._drain()
            for start in range(0, len(items), BATCH):
                chunk = items[start:start + BATCH]
                self._pack_all(chunk, operand_only, plans[start:start + BATCH] if plans else None)
                out.extend(self._batch(len(chunk), deadline, False))
                if len(out) < start + len(chunk):
                    break
        return out

    def submit(self, items: list[tuple[Any, Any, Any]], operand_only: bool, plans: list[Any] | None = None) -> None:
        """Start the worker on up to BATCH cases and return at once (fuzz compares the cases of
        one chunk while the worker runs the next): `collect` gives the results."""
        with self.lock:
            self._drain()
            items = items[:BATCH]
            self._pack_all(items, operand_only, plans)
            self.pending = len(items)  # first: a ^C right after the write must find the worker busy
            try:
                os.write(self.fds[2], _REQUEST.pack(OP_BATCH, 0, len(items)))
            except OSError:  # it died after its last request: collect() finds out why
                self.pending = -len(items)

    def collect(self, deadline: float | None = None) -> list[tuple[int, ...] | Failure]:
        """The results of the cases `submit` sent (fewer after a failure past `deadline`)."""
        with self.lock:
            if self.stash is not None:
                out, self.stash = self.stash, None
                return out
            n, self.pending = self.pending, 0
            return self._batch(abs(n), deadline, n > 0)

    def cancel(self) -> None:
        """Drop a batch submitted and not collected (fuzz's block ended: ^C, out of time): a busy
        worker is killed, the next call starts another."""
        with self.lock:
            self.stash = None
            if self.pending:
                self.pending = 0
                self.stop()

    def _drain(self) -> None:
        """Before another request: finish the batch submitted and not collected, its results
        kept for collect()."""
        if self.pending:
            n, self.pending = self.pending, 0
            self.stash = self._batch(abs(n), None, n > 0)

    def _pack_all(self, items: list[tuple[Any, Any, Any]], operand_only: bool, plans: list[Any] | None) -> None:
        if self.proc is None or self.pid != os.getpid():
            self.start()
        for i, (exit, state, access) in enumerate(items):
            self.pack(i, exit, state, access, operand_only, plans[i] if plans else None)

    def _batch(self, n: int, deadline: float | None, sent: bool) -> list[tuple[int, ...] | Failure]:
        """Records 0…n-1 (packed) run: each result or failure. `sent`: the request for all n is
        already on its way."""
        out: list[tuple[int, ...] | Failure] = []
        unpack = RESULT.unpack_from
        first = 0
        while first < n:
            f = self._wait(call_timeout()) if sent else self._request(OP_BATCH, first, n - first)
            sent = False
            assert self.mm is not None
            mm = self.mm
            if f is None:
                out.extend(unpack(mm, OUT_OFFSET + RESULT.size * i) for i in range(first, n))
                break
            bad = min(max(_U32.unpack_from(mm, 0)[0], first), n)  # (at `first`: died before its first call)
            out.extend(unpack(mm, OUT_OFFSET + RESULT.size * i) for i in range(first, bad))
            out.append(f)
            first = bad + 1
            if deadline is not None and first < n and time.time() >= deadline:
                break
        self._trim_output()
        return out

    def _trim_output(self) -> None:
        try:
            if os.fstat(self.fds[1]).st_size > OUTPUT_LIMIT:
                os.ftruncate(self.fds[1], 0)
        except (OSError, IndexError):
            pass

    def call_symbol(self, symbol: str, exit: Any, state: Any, access: Any) -> tuple[int, list[bytes]] | Failure:
        """symbol(exit, state, access, p0, p1, p2, p3), p0…p3 four zeroed scratch areas of SCRATCH
        bytes: its return value and the areas after the call (explain's instrumented calls)."""
        with self.lock:
            self._drain()
            if self.proc is None or self.pid != os.getpid():
                self.start()
            assert self.mm is not None
            self.pack(0, exit, state, access, False)
            self._set_text(symbol)
            f = self._request(OP_CALL)
            if f is not None:
                return f
            mm = self.mm
            ret = HEAD.unpack_from(mm, 0)[16]
            return ret, [bytes(mm[SCRATCH_OFFSET + k * SCRATCH:SCRATCH_OFFSET + (k + 1) * SCRATCH]) for k in range(4)]

    def string_at(self, address: int) -> str:
        """The C string at `address` in the worker (a pointer a call_symbol left in its scratch)."""
        with self.lock:
            self._drain()
            if self.proc is None:
                return ""
            assert self.mm is not None
            struct.pack_into("<Q", self.mm, 72, address)
            f = self._request(OP_STRING)
            return "" if f is not None else self._text()

    def symbol_bytes(self, symbol: str, size: int) -> bytes | None:
        """The first `size` bytes of the library's data symbol `symbol` (None if it has none)."""
        with self.lock:
            self._drain()
            if self.proc is None or self.pid != os.getpid():
                self.start()
            assert self.mm is not None
            self._set_text(symbol)
            struct.pack_into("<Q", self.mm, 72, size)
            f = self._request(OP_SYMBOL)
            if f is not None or not HEAD.unpack_from(self.mm, 0)[16]:
                return None
            return bytes(self.mm[SCRATCH_OFFSET:SCRATCH_OFFSET + min(size, SCRATCH)])

    def _set_text(self, text: str) -> None:
        assert self.mm is not None
        raw = text.encode()[:TEXT - 1] + b"\0"
        self.mm[TEXT_OFFSET:TEXT_OFFSET + len(raw)] = raw
