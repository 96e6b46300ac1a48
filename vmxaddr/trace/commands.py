"""The trace commands: `check-trace`, `trace synth`, `trace import` (and the subcommands of
`trace` that other modules add: see TRACE_SUBCOMMANDS)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import IO, Any

from vmxaddr.progress import Progress
from vmxaddr.trace.checker import Checker
from vmxaddr.trace.format import DEFAULT_MAX_STATES
from vmxaddr.trace.ftrace import import_ftrace
from vmxaddr.trace.reader import check_stream, decompressing, open_input
from vmxaddr.trace.synth import synth
from vmxaddr.trace.text import summary_text, verdict_text

# Modules adding a subcommand to `vmxaddr trace` (each has `register_trace(tsub)`, called with
# the `trace` subparsers); a module not installed is skipped. `trace record` lives in
# vmxaddr/trace/record.py.
TRACE_SUBCOMMANDS = ("vmxaddr.trace.record",)

CHECK_EPILOG = """examples:
  vmxaddr trace synth --model kvm-f9eb4af6 -n 10000 | vmxaddr check-trace -
      a trace as KVM of 2015 would have handled 10000 random cases: the records where it differs
      from the SDM are flagged, and their answers fingerprinted to the model
  vmxaddr check-trace --against kvm-current --json trace.jsonl | jq 'select(.status == "wrong")'
      check a trace against today's KVM instead of the SDM, as a JSON Lines stream
  vmxaddr trace import --from ftrace trace.txt | vmxaddr check-trace -
      what a kvm_exit log allows (little: it carries no instruction bytes or CPU state)

verdicts per exit record:
  hardware    consistent | inconsistent | not-checkable (the recorded instruction-information
              field, exit qualification and length against what the bytes imply; undefined
              bits and exit-qualification bits above the address size are ignored)
  hypervisor  correct | wrong | not-checkable (the recorded result against the reference model)
  fingerprint the registered models whose answer equals the recorded one
exit status: 0 nothing wrong, 1 a wrong record or a malformed line, 2 bad usage.
The trace format is in docs/trace-format.md.
"""



JSON_LINES_HELP = ("JSON Lines as always, then one summary object (type \"summary\": counts) as the last line; "
                   "check-trace skips it")


def cmd_check(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail
    from vmxaddr.models import UnknownModel, get

    try:
        ref = get(args.against)
    except UnknownModel as e:
        fail(str(e))
    if args.max_states < 1:
        fail("--max-states must be at least 1")
    checker = Checker(args.against, ref, fingerprint=args.fingerprint, max_states=args.max_states)
    raw_stream, size = open_input(args.file)
    stream = decompressing(raw_stream)
    if stream is not raw_stream:
        size = None  # progress counts lines only: the compressed size says little
    out = sys.stdout
    if args.json:
        def emit(v: dict[str, Any]) -> None:
            out.write(json.dumps(v, separators=(",", ":")) + "\n")
    else:
        def emit(v: dict[str, Any]) -> None:
            t = verdict_text(v)
            if t is not None:
                out.write(t + "\n")
    with Progress(None, "check-trace", enabled=not args.quiet, unit="lines") as prog:
        try:
            summary = check_stream(stream, checker, emit, prog, size)
        finally:
            if raw_stream is not sys.stdin.buffer:
                raw_stream.close()
    if args.json:
        out.write(json.dumps(summary, separators=(",", ":")) + "\n")
    else:
        out.write(summary_text(summary) + "\n")
    return int(summary["exit_status"])


def cmd_synth(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail
    from vmxaddr.models import UnknownModel, get

    try:
        model = get(args.model)
    except UnknownModel as e:
        fail(str(e))
    if args.n < 0:
        fail("-n must not be negative")
    if args.out and args.out != "-":
        try:
            out: IO[str] = open(args.out, "w")  # noqa: SIM115
        except OSError as e:
            fail(f"cannot write {args.out}: {e.strerror}")
    else:
        out = sys.stdout
    states = 0
    try:
        with Progress(args.n, "synth", enabled=not args.quiet, unit="exits") as prog:
            made = 0
            for rec in synth(model, args.n, args.seed):
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                if rec["type"] == "exit":
                    made += 1
                    if not made & 1023:
                        prog.update(made)
                else:
                    states += 1
            prog.update(made)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.json:  # the summary object last (check-trace skips it)
        print(json.dumps({"type": "summary", "command": "trace synth", "model": args.model, "seed": args.seed,
                          "exit_records": made, "state_records": states, "out": args.out or "-"},
                         separators=(",", ":")))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail

    if args.file == "-":
        src: IO[str] = sys.stdin
    else:
        try:
            src = open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115
        except OSError as e:
            fail(f"cannot read {args.file}: {e.strerror}")
    bad = 0

    def problem(n: int, msg: str) -> None:
        nonlocal bad
        bad += 1
        print(f"line {n}: {msg}", file=sys.stderr)

    count = 0
    out = sys.stdout
    try:
        for rec in import_ftrace(src, problem):
            out.write(json.dumps(rec, separators=(",", ":")) + "\n")
            count += 1
    finally:
        if src is not sys.stdin:
            src.close()
    if args.json:  # the summary object last (check-trace skips it)
        out.write(json.dumps({"type": "summary", "command": "trace import", "source": args.source,
                              "exit_records": count, "lines_not_understood": bad}, separators=(",", ":")) + "\n")
    if not args.quiet:
        print(f"imported {count} exits of VMX-family instructions" + (f"; {bad} lines not understood" if bad else ""),
              file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    from vmxaddr.cli import Parser, no_command

    p = sub.add_parser("check-trace", help="check a trace of VM exits: processor report, hypervisor answer, fingerprint",
                       description="Check a JSON Lines trace of VM exits caused by VMX-family instructions, record by "
                       "record: did the processor report what the instruction bytes imply, did the hypervisor "
                       "compute the reference model's address or fault, and which known implementations give the "
                       "answer it recorded. Streams: memory stays flat on multi-gigabyte traces.",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the trace (JSON Lines, docs/trace-format.md); - reads standard input")
    p.add_argument("--against", default="sdm", metavar="MODEL",
                   help="reference model for the hypervisor verdict (default sdm; `vmxaddr models` lists them)")
    p.add_argument("--fingerprint", choices=("wrong", "all", "none"), default="wrong",
                   help="run every registered model on: the records the hypervisor got wrong (default), all "
                   "checkable records (slower; the summary then names the models consistent with the whole trace), "
                   "or none")
    p.add_argument("--max-states", type=int, default=DEFAULT_MAX_STATES, metavar="N",
                   help=f"state records kept for state_ref (default {DEFAULT_MAX_STATES}, least recently used dropped)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines: one verdict object per exit record, one per malformed line, then a summary "
                   "object (type \"summary\") — a stream rather than one object, so memory stays flat")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    p.set_defaults(func=cmd_check)

    t = sub.add_parser("trace", help="make traces: import a kvm_exit log, or synthesise one from a model",
                       description="Make traces for check-trace.")
    tsub = t.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", parser_class=Parser)
    s = tsub.add_parser("synth", help="a trace as a model would have handled random cases",
                        description="Write a trace (JSON Lines) as MODEL would have handled N random cases from "
                        "vmxaddr's generator: instruction bytes, the exit information a processor reports (SDM "
                        "encoder, random policy), the CPU state (shared state records and inline changes) and the "
                        "model's answer. Same seed, same trace.",
                        epilog="example:\n  vmxaddr trace synth --model kvm-f9eb4af6 -n 1000 --seed 7 | vmxaddr check-trace -",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="the hypervisor model whose answers are recorded")
    s.add_argument("-n", type=int, default=1000, help="number of exit records (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    s.add_argument("--json", action="store_true", help=JSON_LINES_HELP + " (with --out, standard output gets only it)")
    s.set_defaults(func=cmd_synth)
    i = tsub.add_parser("import", help="convert kvm_exit / kvm_nested_vmexit lines of an ftrace log",
                        description="Convert the kvm_exit and kvm_nested_vmexit events of a trace-cmd report or "
                        "tracefs `trace` text into trace records: exit reason, RIP and exit qualification (info1). "
                        "Exits of other reasons are skipped. The records carry no instruction bytes, "
                        "instruction-information field or CPU state, so check-trace can say little about them.",
                        epilog="example:\n  trace-cmd record -e kvm:kvm_exit ...; trace-cmd report > log.txt\n"
                        "  vmxaddr trace import --from ftrace log.txt > trace.jsonl",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--from", dest="source", choices=("ftrace",), required=True, help="the log's format")
    i.add_argument("file", metavar="FILE", help="the log; - reads standard input")
    i.add_argument("-q", "--quiet", action="store_true", help="no count on standard error")
    i.add_argument("--json", action="store_true", help=JSON_LINES_HELP)
    i.set_defaults(func=cmd_import)
    for modname in TRACE_SUBCOMMANDS:
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:
            if e.name != modname:
                raise
            continue
        mod.register_trace(tsub)
    t.set_defaults(func=lambda a: no_command(t))


