"""Worker pools and Dask clients for the commands that run in parallel.

- `resolve_jobs(n)`: a `--jobs` value as a worker count. 0 means one per CPU this process may run
  on; more than that is capped to it (the work is CPU-bound: more processes than cores only add
  memory, each worker holding its own memos), and the caller gets a note to print; negative is a
  usage error.
- `process_pool(n)`: a ProcessPoolExecutor (fork) whose workers ignore ^C (the parent handles it
  and collects what they finished) and die with their parent, even when the parent is killed
  (Linux: PR_SET_PDEATHSIG; elsewhere they notice a new parent pid at their next task).
- `dask_client(address)`: a `distributed.Client` for a running scheduler, or a one-line usage
  error when Dask is not installed (`pip install 'vmxaddr[dask]'`), the address is malformed, or
  no scheduler answers there, or what answers is not one (all within the time limit).
- `dask_address(value)`: an empty --dask is an error, not "run locally".
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from vmxaddr.errors import ParallelError as ParallelError  # (defined in the leaf module; importable from here)

HARD_CAP = 256  # never more workers than this, whatever the machine says
DASK_TIMEOUT = 10.0  # seconds to wait for a scheduler


def cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_jobs(requested: int, option: str = "--jobs") -> tuple[int, str | None]:
    """(workers, note): 0 → one per CPU; above the CPU count → the CPU count, with a note saying so."""
    if requested < 0:
        raise ParallelError(f"{option} must be 0 (one per CPU) or a positive number, not {requested}")
    limit = min(cpus(), HARD_CAP)
    if requested == 0:
        return limit, None
    if requested > limit:
        return limit, f"{option} {requested}: using {limit}, the number of CPUs this process may use"
    return requested, None


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, then: Callable[..., None] | None = None, args: tuple[Any, ...] = ()) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    if then is not None:
        then(*args)


def process_pool(workers: int, initializer: Callable[..., None] | None = None,
                 initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """A fork pool of `workers` processes; `initializer(*initargs)` runs in each after the setup
    above (with fork, initargs may hold multiprocessing objects such as an Event)."""
    if not 1 <= workers <= HARD_CAP:
        raise ParallelError(f"worker count {workers} outside 1..{HARD_CAP}")
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(), initializer, initargs))


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool now: cancel what has not started and kill the workers (for ^C, when their
    current tasks are not wanted; shutdown() alone would wait for them)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=5)


def dask_address(value: str | None) -> str | None:
    """A --dask value checked before anything runs: None when not given; an empty one is an error
    (it used to mean "run locally" without a word)."""
    if value is None:
        return None
    if not value.strip():
        raise ParallelError("--dask '': give a scheduler address such as tcp://host:8786 (or leave --dask out to "
                            "run here)")
    return value


def dask_client(address: str, timeout: float | None = None) -> Any:
    """A connected `distributed.Client`, or ParallelError with one line saying why not (after
    `timeout` seconds, default DASK_TIMEOUT, when nothing answers, or nothing that speaks Dask)."""
    timeout = DASK_TIMEOUT if timeout is None else timeout
    try:
        from distributed import Client
    except ImportError:
        raise ParallelError("--dask needs Dask's distributed scheduler: pip install 'vmxaddr[dask]'") from None
    if "://" not in address and ":" not in address:
        raise ParallelError(f"--dask {address!r}: expected a scheduler address such as tcp://host:8786")
    # Probe first: a Client that fails to connect leaves an object whose finaliser blocks for
    # seconds at exit and prints a traceback. The probe as a whole is bounded: Dask's connect
    # bounds the TCP connection, not the handshake, so a server that accepts and never speaks
    # would hang it for ever.
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address, timeout=timeout)
        await comm.close()

    # (a little longer than connect's own limit, so that an address where nothing listens gets
    # connect's own "cannot reach" first)
    bound = timeout + max(1.0, timeout / 2)
    try:
        asyncio.run(asyncio.wait_for(probe(), bound))
    except TimeoutError:  # (asyncio.TimeoutError is TimeoutError; before OSError, its base)
        raise ParallelError(f"no Dask scheduler answered at {address}: the connection was accepted, then "
                            f"nothing came within {bound:g} s (--dask waits {timeout:g} s to connect)") from None
    except OSError as e:
        raise ParallelError(f"cannot reach a Dask scheduler at {address} within {timeout:g} s: "
                            f"{_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - what a stranger sends: ValueError, MemoryError (a huge frame length), ...
        raise ParallelError(f"something answered at {address}, but not a Dask scheduler ({type(e).__name__}: "
                            f"{_first_line(e)[:120]})") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ParallelError(f"cannot reach a Dask scheduler at {address} within {timeout:g} s: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__
