"""`vmxaddr trace record`: a trace recorded from a processor — Bochs 2.7 (--bochs, the recorder
in vmxaddr.trace.record_bochs) or Debian's KVM nested under Bochs (--kvm, vmxaddr.live.record).
Registered under `trace` through vmxaddr.trace.commands.TRACE_SUBCOMMANDS."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmxaddr.cli import add_call_timeout
from vmxaddr.errors import BochsError, BochsUnavailable, UnknownModel, fail
from vmxaddr.models import get
from vmxaddr.progress import Progress
from vmxaddr.trace.quirks import BOCHS_27 as PROCESSOR

RECORD_EPILOG = """examples:
  vmxaddr trace record --bochs -n 1000 --seed 1 --out bochs.jsonl && vmxaddr check-trace bochs.jsonl
      1000 random cases run under Bochs 2.7, answered as the SDM says: hardware verdicts consistent
      or explained by Bochs's documented quirks, hypervisor verdicts correct
  vmxaddr trace record --bochs -n 1000 --hypervisor kvm-f9eb4af6 | vmxaddr check-trace -
      the same exits answered as KVM of 2015 did: the wrong answers are fingerprinted to it
Needs bochs and binutils (scripts/system-deps.sh). Same seed, same trace.
"""


def cmd_record(args: Any) -> int:
    """`vmxaddr trace record --bochs|--kvm`: record a trace from an emulated or a live processor."""
    if getattr(args, "kvm", None):  # the live KVM under Bochs: vmxaddr/live/record.py
        from vmxaddr.live.record import cmd_record_kvm
        return cmd_record_kvm(args)
    if not args.bochs:
        fail("trace record needs a processor to record from: --bochs, or --kvm RELEASE")
    # Here, not at the top: check-trace registers `trace record` too, and must not load the Bochs oracle.
    from vmxaddr.trace import record_bochs as recorder

    try:
        model = get(args.hypervisor)
    except UnknownModel as e:
        fail(str(e))
    if args.n < 0:
        fail("-n must not be negative")
    try:
        out = open(args.out, "w") if args.out and args.out != "-" else sys.stdout  # noqa: SIM115
    except OSError as e:
        fail(f"cannot write {args.out}: {e.strerror}")
    stats = recorder.RecordStats()
    states = lines = 0
    first_error: str | None = None  # the line of the first record the model gave no answer for
    interrupted = False
    try:
        with Progress(args.n, "record (bochs)", enabled=not args.quiet, unit="cases") as prog:
            for rec in recorder.record_bochs(model, args.hypervisor, args.n, args.seed, batch=recorder.BATCH,
                                             progress=prog.update, stats=stats):
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                states += rec["type"] == "state"
                lines += 1
                if stats.model_errors and first_error is None:
                    first_error = f"line {lines}: {stats.model_error}"
    except KeyboardInterrupt:  # keep what was recorded: the records of the boots that finished
        interrupted = True
    except BochsUnavailable as e:
        fail(str(e))
    except BochsError as e:  # not "found something" (1): the recording could not go on
        where = f" (in {args.out})" if args.out and args.out != "-" else ""
        print(f"vmxaddr trace record: error: {str(e).splitlines()[0]}; recorded {stats.exits} exits of "
              f"{stats.cases} cases before it{where}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    if not args.quiet or interrupted:
        print(("interrupted: " if interrupted else "")
              + f"recorded {stats.exits} exits of {stats.cases} cases in {stats.boots} Bochs boot(s), "
              f"{stats.seconds:.1f} s in Bochs; {stats.no_exit} without a VMX-family exit"
              + (f"; {stats.model_errors} without an answer from {args.hypervisor} (first: {first_error})"
                 if stats.model_errors else ""),
              file=sys.stderr)
    if not args.quiet:
        for line in stats.other_exits[:10]:
            print("  " + line, file=sys.stderr)
    if args.json:  # the summary object last (check-trace skips it)
        print(json.dumps({"type": "summary", "command": "trace record", "processor": PROCESSOR,
                          "hypervisor": args.hypervisor, "seed": args.seed, "cases": stats.cases,
                          "exit_records": stats.exits, "state_records": states, "no_exit": stats.no_exit,
                          "other_exits": stats.other_exits[:50], "model_errors": stats.model_errors,
                          "model_error_first": first_error,
                          "boots": stats.boots, "bochs_seconds": round(stats.seconds, 2),
                          "out": args.out or "-", "interrupted": interrupted}, separators=(",", ":")))
    return 130 if interrupted else 1 if stats.model_errors else 0


def register_trace(tsub: Any) -> None:
    """Register `trace record` under `vmxaddr trace`."""
    r = tsub.add_parser("record", help="record a trace from a processor: random cases run under Bochs 2.7",
                        description="Run N random cases (vmxaddr's generator) as guest code under Bochs 2.7 with "
                        "VMX and write one trace record per VM exit: what the emulated processor wrote (exit "
                        "reason, exit qualification, instruction information, length, guest RIP), the "
                        "instruction bytes, the guest state (segments, CPL, mode, GPRs) and the answer of the "
                        "hypervisor model --hypervisor to that exit. Records are marked "
                        f"source.processor = {PROCESSOR!r}, so check-trace explains Bochs's documented quirks "
                        "(docs/known-oracle-issues.md).",
                        epilog=RECORD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--bochs", action="store_true", help="record from Bochs 2.7 (needs scripts/system-deps.sh)")
    r.add_argument("--kvm", metavar="RELEASE", help="record Debian's live KVM (linux-6.1, linux-6.12) answering, "
                   "nested under Bochs 2.7 (`vmxaddr live build RELEASE`; docs/live-kvm.md)")
    r.add_argument("--cases", metavar="FILE", help="with --kvm: replay the cases of a trace or a fuzz witness file")
    r.add_argument("--shadow-vmcs", action="store_true", help="with --kvm: kvm-intel enable_shadow_vmcs=1 (docs/live-kvm.md)")
    r.add_argument("-n", type=int, default=1000, help="number of random cases (default 1000)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--hypervisor", default="sdm", metavar="MODEL",
                   help="the consumer model whose answers are recorded (default sdm; `vmxaddr models` lists them)")
    add_call_timeout(r)
    r.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress or counts on standard error")
    r.add_argument("--json", action="store_true",
                   help="end with one summary object (type \"summary\"; check-trace skips it); with --out, "
                   "standard output gets only it")
    r.set_defaults(func=cmd_record)
