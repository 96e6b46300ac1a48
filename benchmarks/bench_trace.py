"""check-trace throughput and peak memory on a synthetic trace.

    python benchmarks/bench_trace.py                       # 20 MB trace in /tmp, checked once
    python benchmarks/bench_trace.py --size-mb 1024        # the 1-GB run (takes a while)
    python benchmarks/bench_trace.py --trace FILE          # an existing trace

The trace is `vmxaddr trace synth --model MODEL` output: a block of --block exits synthesised
once, then repeated (state ids and all) until the file reaches --size-mb; synthesis is far
slower than checking, and repeating does not help the checker (its decode cache is smaller than
the block). The check runs in a child process so that its peak RSS
(resource.getrusage(RUSAGE_SELF).ru_maxrss) is the checker's alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_trace(path: Path, size_mb: float, model: str, block: int, seed: int) -> dict[str, float]:
    from vmxaddr.models import get
    from vmxaddr.trace import synth

    t0 = time.monotonic()
    buf = io.StringIO()
    for rec in synth(get(model), block, seed):
        buf.write(json.dumps(rec, separators=(",", ":")) + "\n")
    chunk = buf.getvalue().encode()
    t1 = time.monotonic()
    target = int(size_mb * (1 << 20))
    written = 0
    with open(path, "wb") as f:
        while written < target:
            f.write(chunk)
            written += len(chunk)
    return {"synth_seconds": round(t1 - t0, 1), "block_bytes": len(chunk), "file_bytes": written}


def check_only(path: Path, fingerprint: str) -> None:
    from vmxaddr.trace import Checker, check_stream

    wrong = 0

    def emit(v: dict[str, object]) -> None:
        nonlocal wrong
        wrong += v.get("status") == "wrong"

    t0 = time.monotonic()
    with open(path, "rb") as f:
        s = check_stream(f, Checker(fingerprint=fingerprint), emit)
    dt = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    maxrss_kb = ru.ru_maxrss  # kilobytes on Linux
    cpu = ru.ru_utime + ru.ru_stime  # includes start-up; on a shared machine wall time overstates the cost
    print(json.dumps({
        "file_bytes": path.stat().st_size, "lines": s["lines"], "exit_records": s["exit_records"],
        "state_records": s["state_records"], "wrong_records": s["wrong_records"], "seconds": round(dt, 1),
        "cpu_seconds": round(cpu, 1), "records_per_second": round(s["exit_records"] / dt),
        "records_per_cpu_second": round(s["exit_records"] / cpu), "mb_per_second": round(path.stat().st_size / dt / 2**20, 2),
        "peak_rss_mb": round(maxrss_kb / 1024, 1), "fingerprint": fingerprint,
        "models_compared": s["models_compared"],
    }))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, help="check this trace instead of making one")
    p.add_argument("--size-mb", type=float, default=20.0, help="size of the synthetic trace (default 20)")
    p.add_argument("--model", default="sdm", help="model whose answers the synthetic trace records (default sdm)")
    p.add_argument("--block", type=int, default=20000, help="exits synthesised before repeating (default 20000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fingerprint", choices=("wrong", "all", "none"), default="wrong")
    p.add_argument("--out", type=Path, default=Path("/tmp/vmxaddr-bench-trace.jsonl"),
                   help="where the synthetic trace goes (default /tmp/vmxaddr-bench-trace.jsonl)")
    p.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.check_only:
        check_only(args.trace, args.fingerprint)
        return 0
    made: dict[str, float] = {}
    path = args.trace
    if path is None:
        path = args.out
        made = make_trace(path, args.size_mb, args.model, args.block, args.seed)
    r = subprocess.run([sys.executable, __file__, "--check-only", "--trace", str(path),
                        "--fingerprint", args.fingerprint], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode:
        print(r.stderr, file=sys.stderr)
        return r.returncode
    out = json.loads(r.stdout)
    out.update(made)
    out["model"] = args.model if made else None
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
