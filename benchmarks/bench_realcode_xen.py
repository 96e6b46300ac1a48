"""xen-4.17 (Xen's decode_vmx_inst() compiled from Debian's source) against its pure-Python port
xen-c447b730: calls per second, and fuzzing cases per second (issue 14: fuzzing with a real-code
model must be at least as fast as with the pure-Python port of the same release).

    python benchmarks/bench_realcode_xen.py [--cases N] [--fuzz-cases M] [--repeat R]

Fetches the source into the cache if needed (`vmxaddr sources fetch xen-4.17`).

  calls   N cases generated once (vmxaddr.fuzz.gen_case over Xen's instructions, seed 7), each
          model called on each: process CPU time, best of R interleaved repeats (a noisy
          neighbour slows all alike)
  fuzz    `vmxaddr.fuzz.fuzz(model, xen-c447b730 or sdm)` on M cases, seed 1, no shrinking: the whole
          loop (generation, reference, comparison, classification of divergences), best of R
Ratios (port time / real time) are printed; >= 1 means the real code is at least as fast.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmxaddr.diff import exit_and_access  # noqa: E402
from vmxaddr.exitinfo import DEFAULT_POLICY  # noqa: E402
from vmxaddr.fuzz import RecordingChooser, fuzz, gen_case  # noqa: E402
from vmxaddr.models import get  # noqa: E402
from vmxaddr.models.xen_port import MNEMONICS  # noqa: E402
from vmxaddr.realcode import sources  # noqa: E402


def time_calls(model: Any, items: list[tuple[Any, Any, Any]]) -> float:
    t0 = time.process_time()
    for exit, state, access in items:
        model(exit, state, access)
    return time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--fuzz-cases", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    f = sources.fetch("xen-4.17", progress=lambda m: print(m, file=sys.stderr))
    real, port, sdm = get("xen-4.17"), get("xen-c447b730"), get("sdm")
    t0 = time.monotonic()
    real.load()
    print(f"xen-4.17: {f.package} {f.version}; download {f.seconds.get('download', 0):.1f} s, "
          f"extract {f.seconds.get('extract', 0):.1f} s (when fetched); extract + build + load now "
          f"{time.monotonic() - t0:.2f} s (cached build when the .so exists)")

    ch = RecordingChooser(random.Random(7))
    items = []
    for _ in range(args.cases):
        ch.log = []
        case = gen_case(ch, MNEMONICS, DEFAULT_POLICY)
        exit, access = exit_and_access(case.instruction, case.state.rip, case.policy)
        items.append((exit, case.state, access))
    gc.freeze()
    models = {"real (xen-4.17)": real, "port (xen-c447b730)": port}
    best = {k: float("inf") for k in models}
    for _ in range(args.repeat):
        for k, m in models.items():
            best[k] = min(best[k], time_calls(m, items))
    print(f"calls/s over {args.cases:,} cases (best of {args.repeat}):")
    for k, t in best.items():
        print(f"  {k:<22} {args.cases / t:>12,.0f}/s")
    print(f"  ratio port time / real time: {best['port (xen-c447b730)'] / best['real (xen-4.17)']:.2f}")

    for against_name, against in (("sdm", sdm),):
        fbest = {k: float("inf") for k in models}
        for _ in range(args.repeat):
            for k, m in models.items():
                t0 = time.process_time()
                fuzz(m, against, seed=1, max_examples=args.fuzz_cases, shrink=False)
                fbest[k] = min(fbest[k], time.process_time() - t0)
        print(f"fuzz --against {against_name}, {args.fuzz_cases:,} cases (best of {args.repeat}):")
        for k, t in fbest.items():
            print(f"  {k:<22} {args.fuzz_cases / t:>12,.0f} cases/s")
        print(f"  ratio port time / real time: {fbest['port (xen-c447b730)'] / fbest['real (xen-4.17)']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
