"""Seed blocks in parallel: local worker processes (`--jobs N`) or a Dask cluster (`--dask ADDRESS`).

The parent hands out seed blocks (vmxaddr.fuzz.campaign) and merges what comes back
(vmxaddr.fuzz.classes.merge: counts add up, each class keeps its earliest witness by block, then
case), so with `--max-examples` the report is the one a single process gives, whatever the number
of workers or the order they finish in. Then each class is shrunk as a task of its own.

Models travel by name (a worker calls vmxaddr.models.get), so a user's `module.path:function`
must be importable on every Dask worker. ^C: local workers finish the block in hand at once and
send what they found; Dask tasks still running are cancelled and their blocks are not counted.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any

from vmxaddr.exitinfo import Policy
from vmxaddr.fuzz.campaign import DEFAULT_EXAMPLES, GENERATE_SHARE, INTERRUPTED, OUT_OF_TIME, Block, Limits, block_sizes, scan_block
from vmxaddr.fuzz.classes import ClassReport, FuzzReport, merge, ordered
from vmxaddr.fuzz.failures import resolve
from vmxaddr.fuzz.shrink import minimise
from vmxaddr.models.base import Model
from vmxaddr.parallel import process_pool, stop_pool
from vmxaddr.progress import Progress


class WorkerError(Exception):
    """A task failed on a worker for a reason that is not a model's (e.g. the model cannot be
    imported there): one line for the user."""


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs to scan a block or shrink a class."""
    model: str
    against: str
    encoder: str
    policy: Policy
    mnemonics: tuple[str, ...]
    seed: int
    block_size: int


_MODELS: dict[tuple[str, str], tuple[Model, Model]] = {}
_STOP: Any = None  # a local worker's stop event (set by the parent on ^C)


def _init_worker(stop: Any) -> None:
    global _STOP
    _STOP = stop


def _models(spec: Spec) -> tuple[Model, Model]:
    key = (spec.model, spec.against)
    if key not in _MODELS:
        try:
            _MODELS[key] = (resolve(spec.model), resolve(spec.against))
        except Exception as e:  # noqa: BLE001 - sent back as one line
            raise WorkerError(f"a worker cannot load the models {spec.model!r}, {spec.against!r}: {e}") from None
    return _MODELS[key]


def block_task(spec: Spec, index: int, n: int, limits: Limits) -> Block:
    """Run one block of a campaign in a worker: `n` cases from the block's own seed, the divergences found."""
    a, b = _models(spec)
    return scan_block(a, b, spec.mnemonics, spec.policy, spec.encoder, spec.seed, index, n, spec.block_size, limits,
                      stop=_STOP)


def shrink_task(spec: Spec, rep: ClassReport, hypothesis_examples: int, hypothesis_seconds: float,
                end: float | None, share: float | None = None) -> ClassReport:
    """Minimise one class, by `end`, and within `share` seconds from when the task starts."""
    a, b = _models(spec)
    if end is not None and time.time() >= end:
        rep.shrunk_by = OUT_OF_TIME
        return rep
    if end is not None and share is not None:
        end = min(end, time.time() + share)
    minimise(rep, a, b, spec.mnemonics, spec.policy, spec.seed, hypothesis_examples, hypothesis_seconds,
             spec.encoder, end)
    return rep


# -- executors: the same four operations over a local pool and a Dask client --------------------------

class LocalExecutor:
    """Campaign blocks on a local process pool (fork), with a stop event the workers watch."""
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.where = "local"
        self.stop = mp.get_context("fork").Event()
        self.pool = process_pool(workers, _init_worker, (self.stop,))

    def submit(self, fn: Any, *args: Any) -> Any:
        """Submit one block to the pool."""
        return self.pool.submit(fn, *args)

    def wait(self, futures: set[Any], timeout: float) -> tuple[set[Any], set[Any]]:
        """The blocks done and those still running, after at most `timeout` seconds."""
        done, rest = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return set(done), set(rest)

    def interrupt(self, futures: set[Any]) -> set[Any]:
        """Ask running blocks to stop now; the futures whose result is still worth waiting for."""
        self.stop.set()
        return {f for f in futures if not f.cancel()}

    def close(self, now: bool = False) -> None:
        """Shut the pool down: at once (kill the workers) when `now`, else after the running blocks."""
        if now:
            stop_pool(self.pool)
        else:
            self.pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Campaign blocks on a Dask cluster, through the client given."""
    def __init__(self, client: Any, address: str) -> None:
        self.client = client
        self.where = address
        info = client.scheduler_info()
        self.workers = max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))

    def submit(self, fn: Any, *args: Any) -> Any:
        """Submit one block to the cluster (not pure: the same arguments run again)."""
        return self.client.submit(fn, *args, pure=False)

    def wait(self, futures: set[Any], timeout: float) -> tuple[set[Any], set[Any]]:
        # Polled: distributed.wait() looks for a default client, and this one is not made the default.
        """The blocks done and those still running, polled for at most `timeout` seconds."""
        until = time.monotonic() + timeout
        while True:
            done = {f for f in futures if f.done()}
            if done or time.monotonic() >= until:
                return done, futures - done
            time.sleep(0.02)

    def interrupt(self, futures: set[Any]) -> set[Any]:
        """Cancel the running blocks (^C); none is waited for."""
        self.client.cancel(list(futures))
        return set()

    def close(self, now: bool = False) -> None:
        """Close the client (the cluster keeps running)."""
        self.client.close()


def _result(f: Any) -> Any:
    try:
        return f.result()
    except WorkerError:
        raise
    except Exception as e:  # noqa: BLE001 - a worker died or the cluster failed: one line
        raise WorkerError(f"a fuzz task failed on a worker: {type(e).__name__}: {e}") from None


# -- the run ------------------------------------------------------------------------------------

def fuzz_parallel(spec: Spec, ex: LocalExecutor | DaskExecutor, *, max_examples: int | None, seconds: float | None,
                  shrink: bool = True, hypothesis_examples: int = 200, hypothesis_seconds: float = 2.0,
                  progress: Progress | None = None, start: float | None = None) -> FuzzReport:
    """The run `fuzz()` would make for `spec`, over `ex`'s workers. `start` (time.time()) is when
    the run's time began counting (before connecting to a cluster, say)."""
    start = time.time() if start is None else start
    if max_examples is None and seconds is None:
        max_examples = DEFAULT_EXAMPLES
    end = start + seconds if seconds is not None else None
    soft = start + GENERATE_SHARE * seconds if seconds is not None else None
    planned = block_sizes(max_examples, spec.block_size) if max_examples is not None else None
    classes: dict[str, ClassReport] = {}
    cases = 0
    pending: set[Any] = set()
    next_block = 0
    interrupted = False
    cap = 2 * ex.workers  # blocks in flight: enough to keep every worker busy

    def more_blocks() -> bool:
        if planned is not None:
            return next_block < len(planned)
        now = time.time()
        return not (end is not None and now >= end) and not (soft is not None and classes and now >= soft)

    def take(f: Any) -> None:
        nonlocal cases
        blk: Block = _result(f)
        merge(classes, blk.classes.values())
        cases += blk.cases
        if progress is not None:
            progress.update(cases, f"{len(classes)} classes")

    try:
        while True:
            while len(pending) < cap and more_blocks():
                n = planned[next_block] if planned is not None else spec.block_size
                pending.add(ex.submit(block_task, spec, next_block, n, Limits(end, soft, bool(classes), start)))
                next_block += 1
            if not pending:
                break
            done, pending = ex.wait(pending, 0.5)
            for f in done:
                take(f)
    except KeyboardInterrupt:
        interrupted = True
        for f in ex.interrupt(pending):
            try:
                take(f)
            except (WorkerError, cf.CancelledError):
                pass
    except BaseException:
        ex.close(now=True)
        raise
    classes = ordered(classes)
    generating = time.time() - start
    if interrupted or not shrink:
        for rep in classes.values():
            rep.shrunk_by = INTERRUPTED if interrupted else "not shrunk"
    else:
        interrupted = _shrink_parallel(spec, ex, classes, hypothesis_examples, hypothesis_seconds, end, progress)
    ex.close(now=interrupted)
    return FuzzReport(spec.model, spec.against, spec.seed, cases, time.time() - start, classes, spec.encoder,
                      interrupted, ex.workers, ex.where, spec.block_size, generating)


def _shrink_parallel(spec: Spec, ex: LocalExecutor | DaskExecutor, classes: dict[str, ClassReport],
                     hypothesis_examples: int, hypothesis_seconds: float, end: float | None,
                     progress: Progress | None) -> bool:
    if not classes:
        return False
    say = progress is not None and progress.enabled
    if say and progress is not None:
        progress.stream.write(f"shrinking {len(classes)} class(es) on {ex.workers} worker(s)\n")
    # each class an equal share of the time left, on every worker at once
    share = None if end is None else max(0.0, end - time.time()) * ex.workers / len(classes)
    futures = {ex.submit(shrink_task, spec, rep, hypothesis_examples, hypothesis_seconds, end, share): rep.name
               for rep in classes.values()}
    pending = set(futures)
    done_count = 0
    try:
        while pending:
            done, pending = ex.wait(pending, 0.5)
            for f in done:
                rep = _result(f)
                classes[rep.name] = rep
                done_count += 1
                if say and progress is not None:
                    progress.stream.write(f"shrunk {done_count}/{len(classes)}: {rep.name}\n")
    except KeyboardInterrupt:
        ex.interrupt(pending)
        for f in pending:
            classes[futures[f]].shrunk_by = INTERRUPTED
        return True
    return False
