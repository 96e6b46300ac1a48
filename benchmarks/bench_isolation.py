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

`--calls N` measures fuzz's comparison loop without the case generation, less exposed to the
noise: N fuzz cases generated once, then each compared with sdm (vmxaddr.diff.divergence) with
the model in process, and isolated the way fuzz runs it (256 cases per round trip, the next
chunk submitted before this one is compared): wall-clock microseconds per case, best of R
interleaved repeats.

`--cases N` runs whole fuzz campaigns in one process instead (vmxaddr.fuzz.campaign.fuzz on N
cases, seed 1, no shrinking), the model in process and isolated alternately: wall-clock and CPU
seconds of each run. No process start-up, no --time: the steadiest of the three on a busy machine.
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


def calls(model: str, n: int, repeat: int) -> None:
    """Microseconds per case of the model's calls, in process and isolated (fuzz's chunks)."""
    import random
    import time

    sys.path.insert(0, str(ROOT))
    from vmxaddr.diff import divergence, exit_and_access
    from vmxaddr.exitinfo import DEFAULT_POLICY
    from vmxaddr.fuzz.campaign import CHUNK, model_mnemonics
    from vmxaddr.fuzz.choosers import RecordingChooser, gen_case
    from vmxaddr.models import get
    from vmxaddr.realcode import models as rm
    from vmxaddr.realcode.resolve import resolve

    os.environ["VMXADDR_IN_PROCESS"] = "1"
    inproc = resolve(model)
    os.environ.pop("VMXADDR_IN_PROCESS")
    for f in (rm.c_model, rm.release_model, rm.tree_model):
        f.cache_clear()
    isolated = resolve(model)
    ch = RecordingChooser(random.Random(7))
    mn = model_mnemonics(isolated)
    items = []
    for _ in range(n):
        case = gen_case(ch, mn, DEFAULT_POLICY)
        exit, access = exit_and_access(case.instruction, case.state.rip, DEFAULT_POLICY)
        items.append((exit, case.state, access))
    chunks = [items[i:i + CHUNK] for i in range(0, n, CHUNK)]

    sdm = get("sdm")

    def in_process() -> float:
        t = time.perf_counter()
        for e, st, a in items:
            divergence(e, st, a, inproc, sdm)
        return time.perf_counter() - t

    def isolated_run() -> float:
        t = time.perf_counter()
        isolated.submit(chunks[0])
        for k, c in enumerate(chunks):
            isolated.collect(c)
            if k + 1 < len(chunks):
                isolated.submit(chunks[k + 1])
            for e, st, a in c:
                divergence(e, st, a, isolated, sdm)
        return time.perf_counter() - t

    best = {"in process": 1e9, "isolated": 1e9}
    for _ in range(repeat):
        best["in process"] = min(best["in process"], in_process())
        best["isolated"] = min(best["isolated"], isolated_run())
    a, b = (best[k] / n * 1e6 for k in ("in process", "isolated"))
    print(f"{model}: {n} cases, best of {repeat}: in process {a:.2f} us/case, isolated {b:.2f} us/case "
          f"(+{b - a:.2f} us a case)", flush=True)


def campaigns(model: str, n: int, repeat: int) -> None:
    """Whole fuzz campaigns of n cases, in process and isolated alternately, in this process."""
    import time

    sys.path.insert(0, str(ROOT))
    from vmxaddr.fuzz.campaign import fuzz
    from vmxaddr.models import get
    from vmxaddr.realcode import models as rm
    from vmxaddr.realcode.resolve import resolve

    os.environ["VMXADDR_IN_PROCESS"] = "1"
    inproc = resolve(model)
    os.environ.pop("VMXADDR_IN_PROCESS")
    for f in (rm.c_model, rm.release_model, rm.tree_model):
        f.cache_clear()
    from vmxaddr.realcode import xen_compiled

    xen_compiled.release_model.cache_clear()
    isolated = resolve(model)
    sdm = get("sdm")
    fuzz(inproc, sdm, max_examples=min(n, 2000), shrink=False)  # warm both (memos, the worker)
    fuzz(isolated, sdm, max_examples=min(n, 2000), shrink=False)
    runs: dict[str, list[tuple[float, float]]] = {"in process": [], "isolated": []}
    for i in range(repeat):
        order = (("in process", inproc), ("isolated", isolated))
        for name, m in order if i % 2 == 0 else order[::-1]:
            t, c = time.perf_counter(), time.process_time()
            fuzz(m, sdm, max_examples=n, shrink=False, seed=1)
            runs[name].append((time.perf_counter() - t, time.process_time() - c))
    for name, v in runs.items():
        walls = [w for w, _ in v]
        print(f"{model}: {name:10} {n} cases: wall {', '.join(f'{w:.2f}' for w in walls)} s "
              f"(median {n / statistics.median(walls):,.0f} cases/s); vmxaddr's CPU "
              f"{', '.join(f'{c:.2f}' for _, c in v)} s", flush=True)
    w_in = statistics.median([w for w, _ in runs["in process"]])
    w_iso = statistics.median([w for w, _ in runs["isolated"]])
    print(f"{model}: isolated / in process (cases/s, medians) = {w_in / w_iso:.2f}\n", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=float, default=15.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", action="append", help=f"a model to measure (repeatable; default: {', '.join(MODELS)})")
    ap.add_argument("--calls", type=int, metavar="N", help="measure the model's calls on N cases instead (see above)")
    ap.add_argument("--cases", type=int, metavar="N", help="time whole campaigns of N cases in one process (see above)")
    args = ap.parse_args()
    if args.cases:
        for model in args.model or MODELS:
            campaigns(model, args.cases, args.repeat)
        return 0
    if args.calls:
        for model in args.model or MODELS:
            calls(model, args.calls, args.repeat)
        return 0
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
