"""The live KVM's costs (docs/live-kvm.md): restore to first case, cases per Bochs CPU-second.

    python benchmarks/live_kvm.py [--release linux-6.1] [-n 20000] [--per-case]

Every run is one restored Bochs run whose client stops at Bochs' magic breakpoint at each step
(client.c mark(): exec, VM and vCPU created, L1 in VMX operation, first case, all cases done,
output written); the preload library records the Bochs process' CPU time there, so other load on
the machine inflates wall time, far less these. Runs: one case (restore to first case), then N
generated cases in L1's loop with and without kprobes, and with --per-case the same N cases with
a KVM_RUN each (the slower path, for comparison).
"""

from __future__ import annotations

import argparse
import json

from vmxaddr.live.batch import encode_cases, generate
from vmxaddr.live.bochsrun import CLIENT_MARKS, run_job


def one(release: str, n: int, args: str) -> dict[str, object]:
    job = run_job(release, encode_cases(generate(n, 1)), args=f"marks {args}".strip())
    m = job.bochs.marks

    def cpu(k: str) -> float:
        return round(m[k][0] + m[k][1], 2)

    row: dict[str, object] = {"cases": n, "args": args, "restore_cpu_s": cpu("loaded")}
    for k in CLIENT_MARKS:
        if k in m:
            row[f"{k}_cpu_s"] = cpu(k)
    cases_s = cpu("cases") - cpu("first")
    row["cases_per_bochs_cpu_s"] = round(n / cases_s) if cases_s > 0 else None  # the cases alone
    row["run_cases_per_bochs_cpu_s"] = round(n / job.bochs.cpu_seconds)  # the whole restored run
    row["bochs_cpu_s"] = round(job.bochs.cpu_seconds, 2)
    row["wall_s"] = round(job.bochs.wall_seconds, 1)
    row["bochs_max_rss_mb"] = job.bochs.max_rss_mb
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", default="linux-6.1")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--per-case", action="store_true", help="also the one-KVM_RUN-per-case path")
    args = ap.parse_args()
    runs = [("", 1), ("", args.n), ("noprobes", args.n)] + ([("single", args.n)] if args.per_case else [])
    for extra, n in runs:
        print(json.dumps({"release": args.release, **one(args.release, n, extra)}), flush=True)


if __name__ == "__main__":
    main()
