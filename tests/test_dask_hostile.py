"""--dask against something that is not a Dask scheduler (issue 21 §3): a server that accepts
the connection and never speaks, one that answers garbage, an empty address, and --jobs with
--dask. Each is one line and exit 2, within the connection time limit (DASK_TIMEOUT)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmxaddr import cli, parallel

pytest.importorskip("distributed")  # in the test extra; under CI=true a skip fails (tests/ci_policy.py)

TRACE = Path(__file__).parent / "data" / "traces" / "good.jsonl"


def _server(answer: bytes | None) -> Iterator[str]:
    """A TCP server on localhost that accepts every connection and then sends `answer` once
    (None: sends nothing) and never closes it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)
            if answer is not None:
                try:
                    conn.settimeout(1)
                    conn.sendall(answer)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


@pytest.fixture
def silent() -> Iterator[str]:
    yield from _server(None)


# Garbage: a frame count of 2**64-1, and one of 2**40 with a length of 2**40 (Dask's reader
# allocates what the header says: MemoryError), and text.
GARBAGE = [b"\xff" * 4096, (1 << 40).to_bytes(8, "little") * 64, b"HTTP/1.0 200 OK\r\n\r\nhello\n" * 100]


@pytest.fixture(params=range(len(GARBAGE)))
def garbage(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _server(GARBAGE[request.param])


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> float:
    # Run in a thread so that a hang fails the test (after 60 s: imports and the probe take a few
    # seconds on a loaded machine) instead of hanging the suite.
    result: list[int] = []
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: result.append(cli.main(argv)), daemon=True)
    worker.start()
    worker.join(60)
    took = time.monotonic() - t0
    assert result, f"vmxaddr {' '.join(argv)} still running after {took:.0f} s"
    status = result[0]
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]
    return took


@pytest.mark.parametrize("command", [["check-trace", "-q", str(TRACE)], ["fuzz", "--model", "kvm-f9eb4af6", "--quiet"]])
def test_a_server_that_never_speaks_is_refused_in_time(silent: str, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    monkeypatch.setattr(parallel, "DASK_TIMEOUT", 2.0)
    _one_line(capsys, [*command, "--dask", silent], silent, "nothing came within 3 s")  # it hung for ever before


@pytest.mark.parametrize("command", [["check-trace", "-q", str(TRACE)], ["fuzz", "--model", "kvm-f9eb4af6", "--quiet"]])
def test_a_server_that_answers_garbage_is_one_line(garbage: str, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    monkeypatch.setattr(parallel, "DASK_TIMEOUT", 2.0)
    _one_line(capsys, [*command, "--dask", garbage], garbage)


@pytest.mark.parametrize("command", [["check-trace", "-q", str(TRACE)], ["fuzz", "--model", "kvm-f9eb4af6", "--quiet"]])
def test_an_empty_dask_address_is_refused(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    _one_line(capsys, [*command, "--dask", ""], "--dask")


def test_jobs_with_dask_is_refused_before_connecting(silent: str, capsys: pytest.CaptureFixture[str]) -> None:
    took = _one_line(capsys, ["check-trace", "-q", "--jobs", "2", "--dask", silent, str(TRACE)], "--jobs", "--dask")
    assert took < parallel.DASK_TIMEOUT  # refused at once, not after waiting for the scheduler
