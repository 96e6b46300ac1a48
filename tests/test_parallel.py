"""vmxaddr.parallel: --jobs values, pools that die with their parent, one-line Dask errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vmxaddr import parallel as P


def test_jobs_are_capped_and_checked():
    n = P.cpus()
    assert P.resolve_jobs(0) == (n, None)  # 0: one per CPU
    assert P.resolve_jobs(1) == (1, None)
    got, note = P.resolve_jobs(10_000)
    assert got == n and note is not None and "10000" in note and str(n) in note
    with pytest.raises(P.ParallelError, match="--jobs must be 0"):
        P.resolve_jobs(-3)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    # The parent starts a pool of 2, prints its workers' pids, and is then killed with SIGKILL
    # (no chance to clean up): the workers must not outlive it.
    script = textwrap.dedent("""
        import os, sys, time
        from vmxaddr.parallel import process_pool
        pool = process_pool(2)
        futs = [pool.submit(time.sleep, 60) for _ in range(2)]
        time.sleep(1.0)
        print(" ".join(str(p) for p in pool._processes), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in pids if _alive(p)]
    for p in survivors:  # do not leave them behind when the test fails
        os.kill(p, signal.SIGKILL)
    assert not survivors, "pool workers outlived their killed parent"


def test_pool_refuses_absurd_sizes():
    with pytest.raises(P.ParallelError):
        P.process_pool(0)
    with pytest.raises(P.ParallelError):
        P.process_pool(P.HARD_CAP + 1)


def test_dask_bad_addresses_are_one_line():
    # dask is in the test extra: a missing one fails here (ImportError inside dask_client's message check)
    with pytest.raises(P.ParallelError, match="expected a scheduler address"):
        P.dask_client("nonsense")
    with pytest.raises(P.ParallelError, match="unknown address scheme"):
        P.dask_client("foo://x:1", timeout=1)
    with pytest.raises(P.ParallelError, match="cannot reach a Dask scheduler at tcp://127.0.0.1:1"):
        P.dask_client("tcp://127.0.0.1:1", timeout=1)
