"""`vmxaddr crosscheck`: check the decoder and the address computation against independent
oracles — iced-x86 (decoder), unicorn (effective and linear address), Bochs (another module).

Cases come from a seeded walk over every instruction × code size × prefix combination
(vmxaddr/oracles/encodings.py). Long runs are split over worker processes, each walking its own
seed (seed + job × 1000003); `--jobs 1` gives one sequence from --seed. Exit status 1 when any
disagreement is unexplained. See docs/oracles.md for what each oracle checks and cannot check.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

from vmxaddr.oracles import Summary
from vmxaddr.progress import Progress
from vmxaddr.throughput import bulk_work

ORACLES = ("iced", "unicorn", "bochs")
JOB_SEED_STEP = 1_000_003
PARALLEL_FROM = 50_000  # below this many cases one process is faster than starting workers

EPILOG = """examples:
  vmxaddr crosscheck --oracle iced -n 100000
      decode 100000 encodings with vmxaddr and with iced-x86 and compare every field
  vmxaddr crosscheck --oracle unicorn -n 20000 --seed 7 --json
      run each case's memory operand through unicorn (LEA + a load) and compare the effective
      and linear address with the SDM model; print one JSON object
exit status: 0 all disagreements explained, 1 some unexplained, 2 bad usage or oracle missing
"""


def _runner(oracle: str) -> Any:
    """The oracle's crosscheck function, or a UsageError naming what is missing."""
    from vmxaddr.cli import fail

    try:
        if oracle == "iced":
            import iced_x86  # noqa: F401

            from vmxaddr.oracles.iced import crosscheck_iced as fn
        elif oracle == "unicorn":
            import unicorn  # noqa: F401

            from vmxaddr.oracles.unicorn import crosscheck_unicorn as fn
        else:
            from vmxaddr.oracles.bochs import crosscheck_bochs as fn  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:
        if oracle == "bochs" and e.name in ("vmxaddr.oracles.bochs", None):
            fail("the bochs oracle (vmxaddr/oracles/bochs.py) is not in this installation")
        pkg = {"iced": "iced-x86", "unicorn": "unicorn"}.get(oracle, e.name)
        fail(f"the {oracle} oracle needs the Python package {pkg}: pip install -e '.[oracles]'")
    return fn


class _SharedProgress:
    """Progress sink for a worker process: writes its count into a shared array."""

    def __init__(self, counts: Any, job: int) -> None:
        self.counts, self.job = counts, job

    def update(self, done: int, note: str = "") -> None:
        self.counts[self.job] = done


def _worker(oracle: str, n: int, seed: int, job: int, counts: Any, out: Any) -> None:
    try:
        fn = _runner(oracle)
        with bulk_work():
            out.put((job, fn(n, seed, _SharedProgress(counts, job)), None))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        out.put((job, None, f"{type(e).__name__}: {e}"))


def run(oracle: str, n: int, seed: int, jobs: int = 1, progress: Progress | None = None) -> Summary | Any:
    fn = _runner(oracle)
    start = time.monotonic()
    if oracle == "bochs":
        # the Bochs oracle reports progress as progress(done, total) and returns a dict
        from vmxaddr.cli import fail
        from vmxaddr.oracles.bochs import BochsUnavailable  # type: ignore[import-not-found,unused-ignore]

        try:
            summary = fn(n, seed, (lambda done, total: progress.update(done)) if progress is not None else None)
        except BochsUnavailable as e:
            fail(f"the bochs oracle cannot run: {e}")
    elif jobs <= 1:
        with bulk_work():
            summary = fn(n, seed, progress)
    else:
        ctx = mp.get_context("fork")
        counts = ctx.Array("q", jobs)
        out = ctx.Queue()
        shares = [n // jobs + (1 if j < n % jobs else 0) for j in range(jobs)]
        procs = [ctx.Process(target=_worker, args=(oracle, shares[j], seed + j * JOB_SEED_STEP, j, counts, out), daemon=True)
                 for j in range(jobs)]
        for p in procs:
            p.start()
        results: dict[int, Summary] = {}
        try:
            while len(results) < jobs:
                try:
                    job, summ, err = out.get(timeout=0.5)
                except Exception:  # queue.Empty
                    if progress is not None:
                        progress.update(sum(counts))
                    if any(not p.is_alive() and p.exitcode not in (0, None) for p in procs) and out.empty():
                        raise RuntimeError("a cross-check worker died") from None
                    continue
                if err:
                    raise RuntimeError(f"cross-check worker {job}: {err}")
                results[job] = summ
        finally:
            for p in procs:
                p.join(timeout=5)
        summary = Summary(oracle)
        for j in range(jobs):
            summary.merge(results[j])
        if progress is not None:
            progress.update(n)
    if isinstance(summary, Summary):
        summary.seconds = time.monotonic() - start
    return summary


def _unexplained(summary: Any) -> int:
    if isinstance(summary, Summary):
        return summary.unexplained
    if isinstance(summary, dict):
        return int(summary.get("unexplained_cases", summary.get("unexplained", 0)))
    return int(getattr(summary, "unexplained_cases", getattr(summary, "unexplained", 0)))


def _to_json(summary: Any) -> Any:
    return summary.to_json() if hasattr(summary, "to_json") else summary


def report_text(s: Summary, seed: int, jobs: int) -> str:
    rate = s.cases / s.seconds if s.seconds else 0.0
    lines = [f"crosscheck against {s.oracle}: {s.cases} cases in {s.seconds:.1f} s ({rate:,.0f}/s), "
             f"seed {seed}, {jobs} job(s)",
             f"  agreements     {s.agreements:>10}",
             f"  skipped        {s.skipped:>10}   (the model stops before an address: #UD for the mode, #GP for CPL)"
             if s.skipped else None,
             f"  explained      {s.explained_cases:>10}   cases whose every difference has a documented reason",
             f"  unexplained    {s.unexplained_cases:>10}   cases" + ("" if not s.unexplained_cases else "  <- bugs to look at")]
    out = [x for x in lines if x is not None]
    if s.by_field:
        out.append("disagreements by field:")
        for f, counts in sorted(s.by_field.items()):
            for why, c in sorted(counts.items(), key=lambda kv: (kv[0] != "unexplained", kv[0])):
                out.append(f"  {f:<18} {c:>9}  {why}")
    if s.examples:
        out.append("first disagreements (reproduce with the command):")
        for e in s.examples:
            tag = "UNEXPLAINED" if e.unexplained else "explained"
            diffs = "; ".join(f"{d.field}: ours {d.to_json()['ours']}, {s.oracle} {d.to_json()['theirs']}"
                              for d in e.disagreements)
            out.append(f"  [{tag}] {diffs}   ({e.note})")
            out.append(f"      {e.command}")
    return "\n".join(out)


def cmd_crosscheck(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail

    if args.n < 1:
        fail("-n must be at least 1")
    jobs = args.jobs if args.jobs else (min(os.cpu_count() or 1, 8) if args.n >= PARALLEL_FROM else 1)
    if jobs < 1:
        fail("--jobs must be at least 1")
    progress = Progress(args.n, f"crosscheck {args.oracle}", enabled=not args.quiet)
    with progress:
        summary = run(args.oracle, args.n, args.seed, jobs, progress)
    if args.json:
        obj = _to_json(summary)
        if isinstance(obj, dict):
            obj = {**obj, "seed": args.seed, "jobs": jobs}
        print(json.dumps(obj, indent=2))
    elif isinstance(summary, Summary):
        print(report_text(summary, args.seed, jobs))
    elif isinstance(summary, dict) and "cases" in summary:
        print(f"crosscheck against {args.oracle}: {summary['cases']} cases, {summary.get('agree', '?')} agree, "
              f"{_unexplained(summary)} unexplained, explained {summary.get('explained', {})}, "
              f"{summary.get('seconds', '?')} s")
        for d in summary.get("disagreements", [])[:5]:
            print(f"  {d}")
    else:
        print(json.dumps(_to_json(summary), indent=2, default=str))
    return 1 if _unexplained(summary) else 0


def register(sub: Any) -> None:
    p = sub.add_parser("crosscheck", help="check the decoder and address computation against iced-x86, unicorn or Bochs",
                       description="Cross-check vmxaddr against an independent oracle on a seeded walk over every "
                       "VMX-family instruction × code size × prefix combination. iced-x86 checks the decoder (validity, "
                       "mnemonic, length, segment, base, index, scale, displacement, address size, access size and "
                       "direction); unicorn executes the same memory-operand encoding (LEA and a load) and checks the "
                       "SDM model's effective and linear address; bochs runs the Bochs oracle if installed. Known, "
                       "documented differences are counted as explained (docs/oracles.md).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oracle", required=True, choices=ORACLES, help="which oracle to compare with")
    p.add_argument("-n", type=int, default=100_000, help="number of cases (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the walk (default 0); the same seed gives the same cases")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per CPU, up to 8, "
                   f"from {PARALLEL_FROM} cases on; else 1)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object (summary, counts by field, examples)")
    p.set_defaults(func=cmd_crosscheck)


if __name__ == "__main__":  # pragma: no cover
    from vmxaddr.cli import main

    sys.exit(main(["crosscheck", *sys.argv[1:]]))
