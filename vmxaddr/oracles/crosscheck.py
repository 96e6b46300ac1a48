"""`vmxaddr crosscheck`: check the decoder and the address computation against independent
oracles — iced-x86 (decoder), unicorn (effective and linear address), Bochs (another module).

Cases come from a seeded walk over every instruction × code size × prefix combination
(vmxaddr/oracles/case_stream.py). Long runs are split over worker processes, each walking its own
seed (seed + job × 1000003); `--jobs 1` gives one sequence from --seed. Exit status 1 when any
disagreement is unexplained. See docs/oracles.md for what each oracle checks and cannot check.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from typing import Any

from vmxaddr.errors import fail
from vmxaddr.oracles import Summary
from vmxaddr.oracles.report import report_text
from vmxaddr.parallel import ParallelError, _die_with_parent, cpus, resolve_jobs
from vmxaddr.progress import Progress
from vmxaddr.throughput import bulk_work

ORACLES = ("iced", "unicorn", "bochs", "llvm")
JOB_SEED_STEP = 1_000_003
PARALLEL_FROM = 50_000  # below this many cases one process is faster than starting workers

EPILOG = """examples:
  vmxaddr crosscheck --oracle iced -n 100000
      decode 100000 encodings with vmxaddr and with iced-x86 and compare every field
  vmxaddr crosscheck --oracle unicorn -n 20000 --seed 7 --json
      run each case's memory operand through unicorn (LEA + a load) and compare the effective
      and linear address with the SDM model; print one JSON object
  vmxaddr crosscheck --oracle llvm -n 100000
      decode legacy and APX (REX2, R16-R31) encodings with vmxaddr and with LLVM 19's
      disassembler (libLLVM-19, package llvm-19) and compare every field
Every oracle gives the same report (text, or one JSON object with --json: cases, agreements,
explained and unexplained cases, disagreements by field, examples with a command to reproduce
them, and what only that oracle tells under "details"). ^C stops the run and prints the counts
of the cases done so far, marked interrupted.
exit status: 0 all disagreements explained, 1 some unexplained, 2 bad usage or oracle missing,
130 interrupted (the report is still printed)
"""


def _runner(oracle: str) -> Any:
    """The oracle's crosscheck function, or a UsageError naming what is missing."""
    try:
        if oracle == "iced":
            import iced_x86  # noqa: F401

            from vmxaddr.oracles.iced import crosscheck_iced as fn
        elif oracle == "unicorn":
            import unicorn  # noqa: F401

            from vmxaddr.oracles.unicorn import crosscheck_unicorn as fn
        elif oracle == "llvm":
            from vmxaddr.oracles.llvm_lib import missing

            why = missing()
            if why:
                fail(f"the llvm oracle cannot run: {why}")
            from vmxaddr.oracles.llvm import crosscheck_llvm as fn
        else:
            from vmxaddr.oracles.bochs import crosscheck_bochs as fn  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        if oracle == "bochs" and e.name in ("vmxaddr.oracles.bochs", None):
            fail("the bochs oracle (vmxaddr/oracles/bochs.py) is not in this installation")
        pkg = {"iced": "iced-x86", "unicorn": "unicorn"}.get(oracle, e.name)
        fail(f"the {oracle} oracle needs the Python package {pkg}: pip install -e '.[oracles]'")
    return fn


class _SharedProgress:
    """Progress sink for a worker process: writes its count into a shared array, and stops the
    worker's loop (as ^C would) once the parent has set `stop`."""

    def __init__(self, counts: Any, job: int, stop: Any) -> None:
        self.counts, self.job, self.stop = counts, job, stop

    def update(self, done: int, note: str = "") -> None:
        self.counts[self.job] = done
        if self.stop.value:
            raise KeyboardInterrupt


def _worker(oracle: str, n: int, seed: int, job: int, counts: Any, stop: Any, out: Any, parent: int) -> None:
    _die_with_parent(parent)  # ignore ^C (the parent asks through `stop`), die with the parent
    try:
        fn = _runner(oracle)
        with bulk_work():
            out.put((job, fn(n, seed, _SharedProgress(counts, job, stop)), None))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        out.put((job, None, f"{type(e).__name__}: {e}"))


STOP_GRACE = 15.0  # seconds the workers get, after ^C, to hand in their counts so far


def _run_bochs(fn: Any, n: int, seed: int, progress: Progress | None) -> Summary:
    from vmxaddr.oracles.bochs import BochsUnavailable, bochs_summary  # type: ignore[import-not-found,unused-ignore]

    del fn  # the Bochs oracle reports through bochs_summary, in the shape of the others
    try:
        return bochs_summary(n, seed, progress)  # type: ignore[no-any-return]
    except BochsUnavailable as e:
        fail(f"the bochs oracle cannot run: {e}")


def _run_parallel(oracle: str, n: int, seed: int, jobs: int, progress: Progress | None) -> Summary:
    ctx = mp.get_context("fork")
    counts = ctx.Array("q", jobs)
    stop = ctx.Value("b", 0)
    out = ctx.Queue()
    shares = [n // jobs + (1 if j < n % jobs else 0) for j in range(jobs)]
    parent = os.getpid()
    procs = [ctx.Process(target=_worker, args=(oracle, shares[j], seed + j * JOB_SEED_STEP, j, counts, stop, out, parent),
                         daemon=True) for j in range(jobs)]
    results: dict[int, Summary] = {}
    interrupted = False

    def collect(deadline: float | None) -> None:
        while len(results) < jobs and (deadline is None or time.monotonic() < deadline):
            try:
                job, summ, err = out.get(timeout=0.5)
            except queue.Empty:
                if progress is not None and deadline is None:
                    progress.update(sum(counts))
                if all(not p.is_alive() for p in procs) and out.empty():
                    if deadline is not None:
                        return
                    raise RuntimeError("a cross-check worker died") from None
                continue
            if err:
                raise RuntimeError(f"cross-check worker {job}: {err}")
            results[job] = summ

    try:
        for p in procs:
            p.start()
        try:
            collect(None)
        except KeyboardInterrupt:
            interrupted = True
            stop.value = 1  # each worker ends its loop at its next progress update and sends its counts
            collect(time.monotonic() + STOP_GRACE)
    finally:
        for p in procs:
            p.join(timeout=1)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    summary = Summary(oracle)
    for j in sorted(results):
        summary.merge(results[j])
    summary.interrupted = summary.interrupted or interrupted
    if progress is not None and not summary.interrupted:
        progress.update(n)
    return summary


def run(oracle: str, n: int, seed: int, jobs: int = 1, progress: Progress | None = None) -> Summary:
    """Run the oracle on n cases in `jobs` processes; ^C gives the counts so far, marked interrupted."""
    fn = _runner(oracle)
    start = time.monotonic()
    if oracle == "bochs":
        summary = _run_bochs(fn, n, seed, progress)
    elif jobs <= 1:
        with bulk_work():
            summary = fn(n, seed, progress)
    else:
        summary = _run_parallel(oracle, n, seed, jobs, progress)
    summary.seconds = time.monotonic() - start
    return summary


def _unexplained(summary: Summary) -> int:
    return summary.unexplained


def _jobs(requested: int, n: int, oracle: str) -> int:
    """--jobs as a worker count: 0 picks one per CPU (up to 8) from PARALLEL_FROM cases on; more
    than the CPUs this process may use is capped to them (the work is CPU-bound), with a note;
    never more workers than cases. Bochs runs in one process."""
    if requested == 0:
        jobs = min(cpus(), 8) if n >= PARALLEL_FROM else 1
    else:
        try:
            jobs, note = resolve_jobs(requested)
        except ParallelError as e:
            fail(str(e))
        if note:
            print(f"vmxaddr crosscheck: {note}", file=sys.stderr)
    if oracle == "bochs":
        return 1
    return max(1, min(jobs, n))


def cmd_crosscheck(args: argparse.Namespace) -> int:
    """`vmxaddr crosscheck`: run the oracle on the seeded stream and print the summary; exit status
    1 on an unexplained disagreement."""
    if args.n < 1:
        fail("-n must be at least 1")
    jobs = _jobs(args.jobs, args.n, args.oracle)
    progress = Progress(args.n, f"crosscheck {args.oracle}", enabled=not args.quiet)
    with progress:
        summary = run(args.oracle, args.n, args.seed, jobs, progress)
    if args.json:
        print(json.dumps({**summary.to_json(), "seed": args.seed, "jobs": jobs}, indent=2))
    else:
        print(report_text(summary, args.seed, jobs))
    if summary.interrupted:
        return 130
    return 1 if _unexplained(summary) else 0


def register(sub: Any) -> None:
    """Register `vmxaddr crosscheck` (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("crosscheck", help="check the decoder and address computation against iced-x86, LLVM, unicorn "
                       "or Bochs",
                       description="Cross-check vmxaddr against an independent oracle on a seeded walk over every "
                       "VMX-family instruction × code size × prefix combination. iced-x86 checks the decoder (validity, "
                       "mnemonic, length, segment, base, index, scale, displacement, address size, access size and "
                       "direction); llvm checks the same with LLVM 19's disassembler, APX's REX2 forms (R16-R31) "
                       "included; unicorn executes the same memory-operand encoding (LEA and a load) and checks the "
                       "SDM model's effective and linear address; bochs runs the Bochs oracle if installed. Known, "
                       "documented differences are counted as explained (docs/oracles.md).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oracle", required=True, choices=ORACLES, help="which oracle to compare with")
    p.add_argument("-n", type=int, default=100_000, help="number of cases (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the walk (default 0); the same seed gives the same cases")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per CPU, up to 8, "
                   f"from {PARALLEL_FROM} cases on; else 1); capped to the CPUs this process may use; the "
                   "workers end with the command, and ^C prints the counts so far")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object (summary, counts by field, examples)")
    p.set_defaults(func=cmd_crosscheck)
