"""Real-code models against the Python ports of the same release: calls per second, and fuzzing
cases per second (issue 14: fuzzing with a real-code model must be at least as fast as with the
pure-Python port of the same release).

    python benchmarks/bench_realcode.py [--cases N] [--repeat R] [--fuzz-cases M]

Needs the Debian sources in the cache (`vmxaddr sources fetch linux-6.1 linux-6.12`).
Pairs: kvm-linux-6.1 / kvm-82277eee and kvm-linux-6.12 / kvm-703d794c (docs/real-code.md says why
these ports). The port is timed twice: pure Python (vmxaddr.models.kvm) and, if built, compiled
(mypyc, what `vmxaddr models` uses by default).

  calls   N cases generated once (vmxaddr.fuzz.gen_case, seed 7), each model called on each
          (the real code also without its compiled marshaller: "ctypes only"):
          process CPU time, best of R interleaved repeats (a noisy neighbour slows all alike)
  fuzz    `vmxaddr.fuzz.fuzz(model, sdm)` on M cases, seed 1, no shrinking: the whole loop
          (generation, SDM reference, comparison), best of R
Ratios (real / pure port) are printed; >= 1 means the real code is at least as fast.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmxaddr.diff import exit_and_access  # noqa: E402
from vmxaddr.fuzz import RecordingChooser, fuzz, gen_case  # noqa: E402
from vmxaddr.models import get  # noqa: E402
from vmxaddr.models import kvm as kvm_pure  # noqa: E402
from vmxaddr.models.kvm import HANDLED  # noqa: E402
from vmxaddr.throughput import bulk_work  # noqa: E402

PAIRS = (("kvm-linux-6.1", "kvm-82277eee"), ("kvm-linux-6.12", "kvm-703d794c"))


def time_calls(model, items) -> float:
    t0 = time.process_time()
    for exit, state, access in items:
        model(exit, state, access)
    return time.process_time() - t0


def _ctypes_only(name: str):
    """The same real-code model without the compiled marshaller (VMXADDR_NO_MARSHAL's path)."""
    from vmxaddr.realcode import models as rm

    saved = rm.marshaller
    rm.marshaller = lambda: None
    try:
        m = rm.release_model.__wrapped__(name)
        m.load()
    finally:
        rm.marshaller = saved
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--fuzz-cases", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    ch = RecordingChooser(random.Random(7))
    items = []
    for _ in range(args.cases):
        ch.log = []
        case = gen_case(ch, HANDLED, __import__("vmxaddr.exitinfo").exitinfo.DEFAULT_POLICY)
        exit, access = exit_and_access(case.instruction, case.state.rip, case.policy)
        items.append((exit, case.state, access))
    gc.freeze()
    for real_name, port_name in PAIRS:
        real = get(real_name)
        pure = kvm_pure.REGISTERED[port_name][0]
        native = get(port_name)
        models = {"real": real, "real, ctypes only": _ctypes_only(real_name), "port (pure Python)": pure}
        if native is not pure:
            models["port (compiled)"] = native
        best = {k: float("inf") for k in models}
        with bulk_work():
            for _ in range(args.repeat):
                for k, m in models.items():
                    best[k] = min(best[k], time_calls(m, items))
        print(f"{real_name} vs {port_name}: calls/s over {args.cases} cases (best of {args.repeat})")
        for k, t in best.items():
            print(f"  {k:<20} {args.cases / t:>12,.0f}/s")
        print(f"  ratio real / pure port: {best['port (pure Python)'] / best['real']:.2f}")
        fz = {}
        sdm = get("sdm")
        for _ in range(args.repeat):
            for k, m in (("real", real), ("port (pure Python)", pure)):
                t0 = time.process_time()
                fuzz(m, sdm, seed=1, max_examples=args.fuzz_cases, shrink=False)
                fz[k] = min(fz.get(k, float("inf")), time.process_time() - t0)
        print(f"  fuzz against sdm, {args.fuzz_cases} cases: real {args.fuzz_cases / fz['real']:,.0f}/s, "
              f"pure port {args.fuzz_cases / fz['port (pure Python)']:,.0f}/s, "
              f"ratio {fz['port (pure Python)'] / fz['real']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
