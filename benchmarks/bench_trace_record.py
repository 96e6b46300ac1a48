"""`trace record --bochs` and check-trace on what it recorded: wall time of each, the time Bochs
itself took, and the verdict counts (the issue's acceptance: 0 unexplained hardware verdicts).

    python benchmarks/bench_trace_record.py                     # -n 1000, seed 0, three runs
    python benchmarks/bench_trace_record.py -n 20000 --seed 7 --repeat 1
    python benchmarks/bench_trace_record.py --hypervisor kvm-f9eb4af6

Each run is a child process (`python -m vmxaddr.cli`), timed by wall clock: Bochs is a child of
it too, so CPU time of the recorder alone would leave Bochs out. The machine's other load moves
the numbers: the spread over --repeat runs is printed. One JSON object on standard output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _run(argv: list[str]) -> tuple[float, str]:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vmxaddr.cli", *argv], capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"vmxaddr {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return seconds, p.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hypervisor", default="sdm")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "t.jsonl"
        for _ in range(args.repeat):
            rec_s, out = _run(["trace", "record", "--bochs", "-n", str(args.n), "--seed", str(args.seed),
                               "--hypervisor", args.hypervisor, "--out", str(trace), "--json", "-q"])
            rec = json.loads(out.splitlines()[-1])
            chk_s, out = _run(["check-trace", "--json", "-q", str(trace)])
            lines = [json.loads(x) for x in out.splitlines()]
            known: dict[str, int] = {}
            for v in lines[:-1]:
                for d in v.get("hardware", {}).get("differences", ()):
                    k = d.get("known", "unexplained")
                    known[k] = known.get(k, 0) + 1
            s = lines[-1]
            runs.append({"record_seconds": round(rec_s, 2), "bochs_seconds": rec["bochs_seconds"],
                         "boots": rec["boots"], "check_seconds": round(chk_s, 2),
                         "exit_records": s["exit_records"], "hardware": s["hardware"], "differences": known,
                         "hypervisor": s["hypervisor"],
                         "every_wrong_answer_matches": s["fingerprint"]["consistent_with_every_wrong_record"]})
    rs = [r["record_seconds"] for r in runs]
    cs = [r["check_seconds"] for r in runs]
    print(json.dumps({"n": args.n, "seed": args.seed, "hypervisor": args.hypervisor, "runs": runs,
                      "record_seconds": {"median": statistics.median(rs), "min": min(rs), "max": max(rs)},
                      "check_seconds": {"median": statistics.median(cs), "min": min(cs), "max": max(cs)}},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
