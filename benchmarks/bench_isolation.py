"""What running compiled models in a worker process (vmxaddr.realcode.worker) costs fuzzing:
cases per second of `vmxaddr fuzz` with the model isolated (the default) and loaded into vmxaddr's
process as before (VMXADDR_IN_PROCESS=1), in alternating runs so that a noisy neighbour slows
both alike.

    python benchmarks/bench_isolation.py [--time S] [--repeat R] [--model M ...]

Each run is `python -m vmxaddr.cli fuzz --model M --against sdm --time S --seed 1 --json`; the
figure is the report's cases_per_second (cases over the generating phase, shrinking not counted).
Per model: every run's rate, the median of each mode, and isolated / in-process (1.0: no cost;
issue 21 allows no less than 0.8). Default models: kvm-linux-6.1 (needs `vmxaddr sources fetch
linux-6.1`) and the example adapter c:docs/examples/tinyvmx.c:tinyvmx_operand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("kvm-linux-6.1", "c:docs/examples/tinyvmx.c:tinyvmx_operand")


def rate(model: str, seconds: float, in_process: bool) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VMXADDR_IN_PROCESS", None)
    if in_process:
        env["VMXADDR_IN_PROCESS"] = "1"
    p = subprocess.run([sys.executable, "-m", "vmxaddr.cli", "fuzz", "--model", model, "--against", "sdm", "--time",
                        str(seconds), "--seed", "1", "--json", "--quiet"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=seconds * 10 + 120)
    if p.returncode not in (0, 1):
        raise SystemExit(f"{model}: fuzz failed: {p.stderr.strip()}")
    return float(json.loads(p.stdout)["cases_per_second"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=float, default=15.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", action="append", help=f"a model to measure (repeatable; default: {', '.join(MODELS)})")
    args = ap.parse_args()
    for model in args.model or MODELS:
        rate(model, 1.0, False)  # build the library, the worker and the marshaller once, outside the figures
        runs: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.repeat):
            for in_process in ((True, False) if i % 2 == 0 else (False, True)):
                r = rate(model, args.time, in_process)
                runs[in_process].append(r)
                print(f"{model}: {'in process' if in_process else 'isolated  '} {r:8,.0f} cases/s", flush=True)
        before, after = statistics.median(runs[True]), statistics.median(runs[False])
        print(f"{model}: median in process {before:,.0f}, isolated {after:,.0f} cases/s: "
              f"isolated / in process = {after / before:.2f}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
