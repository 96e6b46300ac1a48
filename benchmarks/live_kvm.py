"""The live KVM's costs (docs/live-kvm.md): restore, first case, cases per Bochs CPU-second.

    python benchmarks/live_kvm.py [--release linux-6.1] [-n 20000]

One restored run with one case (the fixed cost: restore, then the client up to its first case),
then one with N cases with and without kprobes. CPU-seconds are the Bochs process' own (the
preload library's marks), so other load on the machine inflates wall time, not these.
"""

from __future__ import annotations

import argparse
import json

from vmxaddr.live.batch import encode_cases, generate
from vmxaddr.live.bochsrun import run_job


def one(release: str, n: int, probes: bool) -> dict[str, float]:
    job = run_job(release, encode_cases(generate(n, 1)), args="" if probes else "noprobes")
    m = job.bochs.marks

    def cpu(k: str) -> float:
        return m[k][0] + m[k][1]

    return {"cases": n, "probes": probes, "restore_cpu_s": round(cpu("loaded"), 2),
            "job_cpu_s": round(cpu("done") - cpu("loaded"), 2), "bochs_cpu_s": round(job.bochs.cpu_seconds, 2),
            "wall_s": round(job.bochs.wall_seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", default="linux-6.1")
    ap.add_argument("-n", type=int, default=20000)
    args = ap.parse_args()
    rows = [one(args.release, 1, True), one(args.release, 1, False),
            one(args.release, args.n, True), one(args.release, args.n, False)]
    for probes in (True, False):
        first = next(r for r in rows if r["cases"] == 1 and r["probes"] == probes)
        big = next(r for r in rows if r["cases"] == args.n and r["probes"] == probes)
        per_case = (big["job_cpu_s"] - first["job_cpu_s"]) / (args.n - 1)
        print(json.dumps({"release": args.release, "probes": probes,
                          "restore_to_job_cpu_s": first["restore_cpu_s"],
                          "restore_to_first_case_done_cpu_s": round(first["restore_cpu_s"] + first["job_cpu_s"], 2),
                          "cases_per_bochs_cpu_s": round(1 / per_case) if per_case > 0 else None,
                          "runs": [first, big]}))


if __name__ == "__main__":
    main()
