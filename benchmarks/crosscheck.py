"""Throughput of the cross-check oracles, one process: cases per second (wall and CPU).

    python benchmarks/crosscheck.py [-n 20000] [--oracle iced llvm unicorn]
    (needs `pip install -e '.[oracles]'`, or PYTHONPATH=. from the checkout; llvm: Debian's llvm-19)

CPU time is printed too because wall time on a shared machine says little. A 1 000 000-case
`vmxaddr crosscheck` run takes about n / (rate × jobs).
"""

from __future__ import annotations

import argparse
import time

from vmxaddr.oracles.iced import crosscheck_iced
from vmxaddr.oracles.llvm import crosscheck_llvm
from vmxaddr.oracles.unicorn import crosscheck_unicorn

RUNNERS = {"iced": crosscheck_iced, "llvm": crosscheck_llvm, "unicorn": crosscheck_unicorn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--oracle", nargs="+", choices=sorted(RUNNERS), default=sorted(RUNNERS))
    args = ap.parse_args()
    for name in args.oracle:
        w0, c0 = time.perf_counter(), time.process_time()
        s = RUNNERS[name](args.n, args.seed)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        print(f"{name:8} {args.n} cases: wall {w:6.1f} s ({args.n / w:7,.0f}/s), CPU {c:6.1f} s "
              f"({args.n / c:7,.0f}/s); {s.unexplained_cases} unexplained")


if __name__ == "__main__":
    main()
