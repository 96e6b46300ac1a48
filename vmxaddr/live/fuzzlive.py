"""`vmxaddr fuzz --model kvm-live:RELEASE --against MODEL`: fuzzing the running KVM in batches.

A Bochs run costs a restore (~2 CPU-s) and then runs thousands of cases per CPU-second, so the
live model cannot be called case by case like the Python models: cases come from the live
generator (vmxaddr/live/batch.py: random encodings, registers and VM-entry-legal segments), are
run BATCH at a time in one restored run, and each is compared with --against on the exit
information KVM received (kprobe). Disagreements are grouped into classes by vmxaddr's diff
classifier; the first case of each class is its witness (not shrunk: shrinking would need a
Bochs run per step). --max-examples counts cases (default 10,000), --time bounds the wall time.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from vmxaddr.case import access_of
from vmxaddr.decode import decode
from vmxaddr.diff import agree, classify, first_difference
from vmxaddr.errors import LiveError, ToolMissing, fail
from vmxaddr.live.batch import generate
from vmxaddr.live.campaign import RunStats, run_live
from vmxaddr.live.model import live_result, resolve
from vmxaddr.models import UnknownModel, get

BATCH = 20_000


def cmd_fuzz_live(args: Any) -> int:
    """`vmxaddr fuzz --model kvm-live:RELEASE`: random cases in batches of Bochs runs, the
    divergences from the reference classified."""
    try:
        live = resolve(args.model)
        ref = get(args.against)
    except UnknownModel as e:
        fail(str(e))
    if args.encoder != "sdm":
        fail("--model kvm-live: the exit information is the processor's (Bochs'), not an encoder's")
    n = args.max_examples if args.max_examples is not None else (10**9 if args.time else 10_000)
    deadline = time.monotonic() + args.time if args.time else None
    stats = RunStats()
    classes: dict[str, dict[str, Any]] = {}
    compared = done = 0
    try:
        while done < n and (deadline is None or time.monotonic() < deadline):
            k = min(BATCH, n - done)
            for r in run_live(live.release, generate(k, args.seed + done), stats=stats):
                exit = r.exit_info()
                if exit is None:
                    continue
                instr = decode(r.case.raw, r.case.code_size)
                st, acc = r.case.state(), access_of(instr)
                mine = live_result(r)  # KVM's answer to the exit it received
                theirs = ref(exit, st, acc)
                compared += 1
                if agree(theirs, mine):
                    continue
                klass = classify(exit, st, acc, theirs, mine, ref, None)
                c = classes.setdefault(str(klass), {"class": str(klass), "count": 0})
                c["count"] += 1
                c.setdefault("witness", {"bytes": r.case.raw.hex(" "), "mode": r.case.code_size,
                                         "state": st.to_json(), "difference": first_difference(theirs, mine),
                                         "exit_qualification": hex(exit.exit_qualification),
                                         "instruction_info": f"{exit.instruction_info:#010x}"})
            done += k
            if not args.quiet:
                print(f"vmxaddr fuzz: {done} cases, {compared} decoded by KVM and compared, {len(classes)} "
                      f"classes", file=sys.stderr)
    except ToolMissing as e:
        fail(str(e))
    except (LiveError, RuntimeError) as e:
        print(f"vmxaddr fuzz: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    rate = stats.cases / stats.job_cpu_s if stats.job_cpu_s else 0.0
    obj = {"model": args.model, "against": args.against, "seed": args.seed, "cases": done, "compared": compared,
           "classes": list(classes.values()), "runs": stats.runs, "bochs_cpu_seconds": round(stats.bochs_cpu_s, 1),
           "cases_per_cpu_second": round(rate)}
    if args.json:
        print(json.dumps(obj))
    else:
        print(f"{args.model} vs {args.against}: {done} cases in {stats.runs} Bochs run(s), {compared} decoded by "
              f"KVM and compared, {len(classes)} classes ({rate:.0f} cases per Bochs CPU-s)")
        for c in classes.values():
            print(f"  {c['count']:7d}  {c['class']}: {c['witness']['mode']}-bit {c['witness']['bytes']} "
                  f"({c['witness']['difference']})")
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps({"about": f"Witnesses from `vmxaddr fuzz --model {args.model} --against "
                                f"{args.against} --seed {args.seed}` (live KVM, not shrunk)",
                                "models": [args.against, args.model],
                                "cases": [c["witness"] for c in classes.values()]}, indent=2) + "\n")
    return 0
