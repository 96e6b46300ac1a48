"""`vmxaddr fuzz` throughput with --jobs N beside one process, and the reports compared.

    python benchmarks/bench_fuzz_jobs.py [--cases N] [--jobs 2] [--repeat R] [--model M] [--against B]

Each repeat runs the same campaign (seed 1, N cases, no shrinking: generation and comparison
only) once in this process (`vmxaddr.fuzz.fuzz`, what `--jobs 1` runs) and once over a pool of
`--jobs` workers (`vmxaddr.fuzz.runner`, what `--jobs N` runs, pool start-up included), in
alternating order so that a noisy neighbour slows both alike. Wall-clock time, since the point is
elapsed time on several cores. Prints each repeat's cases/s and ratio, the median and the spread,
and checks that both runs found the same classes with the same counts and first witnesses.

Also CPU time (this process plus its reaped workers, resource.getrusage): cases per CPU-second
for each path. On a machine whose other cores are busy with other work, wall-clock ratios say
little; equal cases per CPU-second say the parallel path costs nothing extra, so that on N free
cores it runs N times as fast, less the wait for the last block.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmxaddr.exitinfo import Policy  # noqa: E402
from vmxaddr.fuzz import fuzz, model_mnemonics  # noqa: E402
from vmxaddr.fuzz.campaign import BLOCK_SIZE  # noqa: E402
from vmxaddr.fuzz.runner import LocalExecutor, Spec, fuzz_parallel  # noqa: E402
from vmxaddr.models import get  # noqa: E402
from vmxaddr.parallel import cpus  # noqa: E402


def cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for (the pool's workers,
    once it has shut down)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def summary(rep):  # type: ignore[no-untyped-def]
    return [(c.name, c.count, c.first_case) for c in rep.classes.values()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=80_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="kvm-f9eb4af6")
    ap.add_argument("--against", default="sdm")
    args = ap.parse_args()
    a, b = get(args.model), get(args.against)
    spec = Spec(args.model, args.against, "sdm", Policy(), model_mnemonics(a, b), 1, BLOCK_SIZE)
    print(f"{args.cases} cases of {args.model} vs {args.against}, seed blocks of {BLOCK_SIZE}, "
          f"{args.jobs} jobs on {cpus()} CPUs")
    ratios, one_rates, par_rates, cpu_ratios = [], [], [], []
    for r in range(args.repeat):
        rates = {}
        for which in (("one", "par") if r % 2 == 0 else ("par", "one")):
            t0 = time.perf_counter()
            c0 = cpu()
            if which == "one":
                rep = fuzz(a, b, seed=1, max_examples=args.cases, shrink=False, names=(args.model, args.against))
            else:
                rep = fuzz_parallel(spec, LocalExecutor(args.jobs), max_examples=args.cases, seconds=None, shrink=False)
            dt = time.perf_counter() - t0
            rates[which] = (args.cases / dt, summary(rep), args.cases / (cpu() - c0))
        same = rates["one"][1] == rates["par"][1]
        ratio = rates["par"][0] / rates["one"][0]
        ratios.append(ratio)
        one_rates.append(rates["one"][0])
        par_rates.append(rates["par"][0])
        cpu_ratios.append(rates["par"][2] / rates["one"][2])
        print(f"  repeat {r + 1}: 1 job {rates['one'][0]:,.0f} cases/s, {args.jobs} jobs {rates['par'][0]:,.0f} cases/s, "
              f"ratio {ratio:.2f}; per CPU-second {rates['one'][2]:,.0f} and {rates['par'][2]:,.0f} "
              f"(ratio {cpu_ratios[-1]:.2f}); same classes/counts/first cases: {same}")
        if not same:
            print("  REPORTS DIFFER", file=sys.stderr)
            return 1
    print(f"median: 1 job {statistics.median(one_rates):,.0f}/s, {args.jobs} jobs {statistics.median(par_rates):,.0f}/s, "
          f"ratio {statistics.median(ratios):.2f} (spread {min(ratios):.2f}-{max(ratios):.2f}); cases per CPU-second, "
          f"{args.jobs} jobs / 1 job: {statistics.median(cpu_ratios):.2f} (spread {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
