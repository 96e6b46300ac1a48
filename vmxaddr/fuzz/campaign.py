"""The campaign: generate cases, run both models on each, group the divergences by class, then
shrink each class's first witness.

Cases come in seed blocks of `block_size` (default 10,000): block 0 is `random.Random(seed)`,
block k > 0 `random.Random(block_seed(seed, k))`, and case numbers run on across blocks. A run of
N cases is always the same blocks, whichever process or Dask worker scans which block
(vmxaddr.fuzz.runner), so `--jobs` and `--dask` give the report one process gives.

Time (`seconds`) bounds the whole run, shrinking included: cases are generated until
GENERATE_SHARE of the time once a divergence is known (otherwise until the end), and the rest is
left to shrinking, each class getting an equal share of the time left when its turn comes (a class
whose shrinking did not start in time keeps its first witness, marked "not shrunk: out of time").
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vmxaddr.diff import case_divergence, divergence, exit_and_access
from vmxaddr.exitinfo import DEFAULT_POLICY, Policy
from vmxaddr.fuzz.choosers import RecordingChooser, gen_case
from vmxaddr.fuzz.classes import ClassReport, FuzzReport, merge, ordered
from vmxaddr.fuzz.failures import PASS_THROUGH, diagnose
from vmxaddr.fuzz.shrink import minimise
from vmxaddr.gen import MEMORY_MNEMONICS
from vmxaddr.models.base import Model
from vmxaddr.progress import Progress
from vmxaddr.throughput import bulk_work

BLOCK_SIZE = 10_000
GENERATE_SHARE = 0.75
DEFAULT_EXAMPLES = 10_000
INTERRUPTED = "not shrunk: interrupted"
OUT_OF_TIME = "not shrunk: out of time"
NOT_SHRUNK = "not shrunk"


def model_mnemonics(*models: Model, forms: Sequence[str] = MEMORY_MNEMONICS) -> tuple[str, ...]:
    """The instructions every one of `models` covers, in the order of `forms` (the fuzzer draws only these)."""
    allowed = set(forms)
    for m in models:
        allowed &= set(getattr(m, "mnemonics", forms))
    return tuple(x for x in forms if x in allowed)


def block_seed(seed: int, block: int) -> int:
    """The seed of block `block` of a run seeded `seed` (block 0: the seed itself)."""
    if block == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"vmxaddr-fuzz:{seed}:{block}".encode()).digest()[:8], "little")


def block_sizes(max_examples: int, block_size: int) -> list[int]:
    """`max_examples` cut into blocks of `block_size` cases (the last one shorter), the unit of work of a campaign."""
    full, rest = divmod(max_examples, block_size)
    return [block_size] * full + ([rest] if rest else [])


@dataclass
class Block:
    """What scanning one seed block found."""
    index: int
    cases: int
    classes: dict[str, ClassReport]
    interrupted: bool = False
    stopped: bool = False  # stop_when said enough


@dataclass(frozen=True)
class Limits:
    """When a block stops early (wall-clock times, time.time(), so that they hold on any worker)."""
    hard_stop: float | None = None  # the end of the generating phase, whatever was found
    soft_stop: float | None = None  # the end once a divergence is known
    known: bool = False  # a divergence is already known (from other blocks)
    start: float = 0.0  # the run's start, for first_seconds


def scan_block(a: Model, b: Model, mnemonics: Sequence[str], policy: Policy, encoder: str, seed: int, index: int,
               n: int, block_size: int, limits: Limits = Limits(), stop: Any = None,
               progress: Callable[[int, int], None] | None = None,
               stop_when: Callable[[dict[str, ClassReport]], bool] | None = None) -> Block:
    """Scan up to `n` cases of seed block `index`. `stop`: an object with is_set() (a worker's
    stop event), polled with the clock every 256 cases. ^C ends the block with what it found."""
    ch = RecordingChooser(random.Random(block_seed(seed, index)))
    bseed = block_seed(seed, index)
    base = index * block_size
    classes: dict[str, ClassReport] = {}
    out = Block(index, 0, classes)
    timed = limits.hard_stop is not None or stop is not None
    # Models that run in a worker process (vmxaddr.realcode.worker) get each chunk of cases in one
    # round trip before it is compared: the cases are generated a chunk ahead, in the same order.
    ahead = list({id(m): m for m in (b, a) if getattr(m, "submit", None) is not None}.values()) \
        if encoder == "sdm" else []
    chunk: list[tuple[Any, ...]] = []
    following: list[tuple[Any, ...]] = []  # the next chunk, submitted to the workers
    cut = False  # the worker's cases ran out of time within a chunk
    i = 0
    try:
        with bulk_work():  # millions of short-lived objects (vmxaddr.throughput)
            while i < n:
                if timed and i & 255 == 0:
                    if stop is not None and stop.is_set():
                        out.interrupted = True
                        break
                    now = time.time()
                    if limits.hard_stop is not None and now >= limits.hard_stop:
                        break
                    if limits.soft_stop is not None and (classes or limits.known) and now >= limits.soft_stop:
                        break
                if ahead and not chunk:
                    if cut:
                        break
                    chunk = following or _submit(ahead, _chunk(ch, mnemonics, policy, min(CHUNK, n - i)))
                    items = [(e, c.state, acc) for c, _, e, acc in chunk]
                    for m in ahead:
                        done = m.collect(items, limits.hard_stop)
                        if done < len(chunk):  # (a model that hangs on many cases)
                            del chunk[done:], items[done:]
                            cut = True
                    left = n - i - len(chunk)
                    # the workers run the next chunk while this one is compared
                    following = _submit(ahead, _chunk(ch, mnemonics, policy, min(CHUNK, left))) if left > 0 and \
                        not cut else []
                    chunk.reverse()
                if chunk:
                    case, log, exit, access = chunk.pop()
                else:
                    ch.log = []
                    case = gen_case(ch, mnemonics, policy)
                    log = ch.log
                try:
                    if encoder == "sdm":
                        if not ahead:
                            exit, access = exit_and_access(case.instruction, case.state.rip, policy)
                        name = divergence(exit, case.state, access, a, b)
                    else:
                        name = case_divergence(case, a, b, encoder)
                except PASS_THROUGH:
                    raise
                except BaseException:  # noqa: BLE001 - a model that fails is a finding (vmxaddr.fuzz.failures)
                    name = diagnose(case, a, b, encoder)
                i += 1
                if name is not None:
                    rep = classes.get(name)
                    if rep is None:
                        rep = classes[name] = ClassReport(name, 0, base + i, time.time() - limits.start, log, case,
                                                          first_seed=bseed)
                        if stop_when is not None and stop_when(classes):
                            rep.count += 1
                            out.stopped = True
                            break
                    rep.count += 1
                if progress is not None and i & 1023 == 0:
                    progress(i, len(classes))
    except KeyboardInterrupt:
        out.interrupted = True
    finally:
        if following:  # submitted, not needed: a worker still busy with it is stopped
            for m in ahead:
                m.cancel()
    out.cases = i
    return out


CHUNK = 256  # cases per round trip to a model's worker process (a multiple of the 256 of the clock checks)


def _chunk(ch: RecordingChooser, mnemonics: Sequence[str], policy: Policy, k: int) -> list[tuple[Any, ...]]:
    """The next `k` cases of the chooser, each with its recorded choices, exit and access."""
    out = []
    for _ in range(k):
        ch.log = []
        case = gen_case(ch, mnemonics, policy)
        exit, access = exit_and_access(case.instruction, case.state.rip, policy)
        out.append((case, ch.log, exit, access))
    return out


def _submit(models: list[Any], chunk: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    items = [(e, c.state, acc) for c, _, e, acc in chunk]
    for m in models:
        m.submit(items)
    return chunk


def fuzz(a: Model, b: Model, *, seed: int = 0, max_examples: int | None = None, seconds: float | None = None,
         policy: Policy = DEFAULT_POLICY, mnemonics: Sequence[str] | None = None, shrink: bool = True,
         hypothesis_examples: int = 200, hypothesis_seconds: float = 2.0, progress: Progress | None = None,
         names: tuple[str, str] = ("A", "B"),
         stop_when: Callable[[dict[str, ClassReport]], bool] | None = None, encoder: str = "sdm",
         block_size: int = BLOCK_SIZE) -> FuzzReport:
    """Run A against B (the reference) on generated cases until `max_examples` cases or `seconds`
    (the whole run, shrinking included), in this process. With an `encoder` other than "sdm", A
    gets that encoder's exit information, B the SDM's, and each class names the side that caused
    it (vmxaddr.encoder_consumer). ^C ends the run with the classes found so far (`interrupted`)."""
    if max_examples is None and seconds is None:
        max_examples = DEFAULT_EXAMPLES
    mn = tuple(mnemonics) if mnemonics else model_mnemonics(a, b)
    start = time.time()
    end = start + seconds if seconds is not None else None
    limits = Limits(end, start + GENERATE_SHARE * seconds if seconds is not None else None, False, start)
    classes: dict[str, ClassReport] = {}
    n = 0
    interrupted = False
    index = 0
    try:
        while max_examples is None or n < max_examples:
            size = block_size if max_examples is None else min(block_size, max_examples - n)
            done_before = n

            def tick(i: int, k: int, done_before: int = done_before) -> None:
                if progress is not None:
                    progress.update(done_before + i, f"{len(classes) + k} classes")

            blk = scan_block(a, b, mn, policy, encoder, seed, index, size, block_size,
                             Limits(limits.hard_stop, limits.soft_stop, bool(classes), start),
                             progress=tick if progress is not None else None,
                             stop_when=(lambda found: stop_when({**classes, **found})) if stop_when else None)
            merge(classes, blk.classes.values())
            n += blk.cases
            index += 1
            if blk.interrupted:
                interrupted = True
            if blk.interrupted or blk.stopped or blk.cases < size:
                break
    except KeyboardInterrupt:  # between two blocks: the blocks merged so far stand
        interrupted = True
    classes = ordered(classes)
    elapsed = generating = time.time() - start
    if interrupted:
        for rep in classes.values():
            rep.shrunk_by = INTERRUPTED
    elif shrink:
        interrupted = shrink_all(classes, a, b, mn, policy, seed, hypothesis_examples, hypothesis_seconds, encoder,
                                 end, progress)
        elapsed = time.time() - start
    else:
        for rep in classes.values():
            rep.shrunk_by = NOT_SHRUNK
    return FuzzReport(names[0], names[1], seed, n, elapsed, classes, encoder, interrupted, 1, "local", block_size,
                      generating)


def shrink_all(classes: dict[str, ClassReport], a: Model, b: Model, mnemonics: Sequence[str], policy: Policy,
               seed: int, hypothesis_examples: int, hypothesis_seconds: float, encoder: str, end: float | None,
               progress: Progress | None) -> bool:
    """Minimise every class's witness in this process, by `end` (time.time()) if given. True if
    ^C stopped it (the classes not yet shrunk keep their first witness)."""
    reps = list(classes.values())
    for i, rep in enumerate(reps):
        if end is not None and time.time() >= end:
            for r in reps[i:]:
                r.shrunk_by = OUT_OF_TIME
            return False
        if progress is not None and progress.enabled:
            progress.stream.write(f"shrinking {i + 1}/{len(reps)}: {rep.name}\n")
            progress.stream.flush()
        # each class its share of the time left, so that the first does not take it all
        mine = None if end is None else min(end, time.time() + (end - time.time()) / (len(reps) - i))
        try:
            minimise(rep, a, b, mnemonics, policy, seed, hypothesis_examples, hypothesis_seconds, encoder, mine)
        except KeyboardInterrupt:
            for r in reps[i:]:
                r.shrunk_by = INTERRUPTED
            return True
    return False
