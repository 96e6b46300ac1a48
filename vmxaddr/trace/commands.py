"""The trace commands: `check-trace`, `trace synth`, `trace import` (and the subcommands of
`trace` that other modules add: see TRACE_SUBCOMMANDS)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

from vmxaddr.cli import Parser, add_call_timeout, no_command
from vmxaddr.errors import fail
from vmxaddr.models import UnknownModel, get
from vmxaddr.progress import Progress
from vmxaddr.trace.checker import Checker
from vmxaddr.trace.chunks import Merger, Options, check_chunk, plan, trace_files
from vmxaddr.trace.format import DEFAULT_MAX_STATES
from vmxaddr.trace.ftrace import import_ftrace
from vmxaddr.trace.jsonline import dumps
from vmxaddr.trace.reader import InputError, open_bytes, text_lines
from vmxaddr.trace.schedule import Runner, TaskFailed
from vmxaddr.trace.synth import SHAPES, synth
from vmxaddr.trace.text import summary_text

# Modules adding a subcommand to `vmxaddr trace` (each has `register_trace(tsub)`, called with
# the `trace` subparsers); a module not installed is skipped. `trace record` lives in
# vmxaddr/trace/record_bochs.py.
TRACE_SUBCOMMANDS = ("vmxaddr.trace.record_cli",)

CHECK_EPILOG = """examples:
  vmxaddr trace synth --model kvm-f9eb4af6 -n 10000 | vmxaddr check-trace -
      a trace as KVM of 2015 would have handled 10000 random cases: the records where it differs
      from the SDM are flagged, and their answers fingerprinted to the model
  vmxaddr check-trace --against kvm-current --json trace.jsonl | jq 'select(.status == "wrong")'
      check a trace against today's KVM instead of the SDM, as a JSON Lines stream
  vmxaddr trace import --from ftrace trace.txt | vmxaddr check-trace -
      what a kvm_exit log allows (little: it carries no instruction bytes or CPU state)

verdicts per exit record:
  hardware    consistent | explained | inconsistent | not-checkable (the recorded instruction-information
              field, exit qualification and length against what the bytes imply; undefined
              bits and exit-qualification bits above the address size are ignored; "explained":
              only documented quirks of the processor named in source.processor, e.g. bochs-2.7)
  hypervisor  correct | wrong | not-checkable (the recorded result against the reference model)
  fingerprint the registered models whose answer equals the recorded one
exit status: 0 nothing wrong; 1 a wrong record, a malformed line, a reference model that raised,
or input that broke off (a corrupt or truncated .gz/.zst, no newline in 256 MB: the records before
it are checked and summarised, and standard error says where it broke); 2 bad usage; 130 ^C (the
summary of what was checked is printed, with "interrupted": true).
The trace format is in docs/trace-format.md.
"""



JSON_LINES_HELP = ("JSON Lines as always, then one summary object (type \"summary\": counts) as the last line; "
                   "check-trace skips it")


@contextlib.contextmanager
def _task_failures(hint: str) -> Iterator[None]:
    """A task that failed on a worker (schedule.TaskFailed) as one line, exit 2."""
    try:
        yield
    except TaskFailed as e:
        fail(f"{e} {hint}".strip())


def cmd_check(args: argparse.Namespace) -> int:
    """`vmxaddr check-trace`: check trace files (in pieces on every core or a Dask cluster) and
    print verdicts and the summary."""
    from vmxaddr.parallel import ParallelError, dask_address, dask_client, process_pool, resolve_jobs, stop_pool

    try:
        get(args.against)
    except UnknownModel as e:
        fail(str(e))
    if args.max_states < 1:
        fail("--max-states must be at least 1")
    paths = trace_files(args.files)
    if not paths:
        fail("no trace files (the directories given are empty)")
    for p in paths:
        if p != "-" and not os.access(p, os.R_OK):
            fail(f"cannot read {p}: {'no such file' if not os.path.exists(p) else 'permission denied'}")
    options = Options(args.against, args.fingerprint, args.max_states, args.json)
    models_compared = len(Checker(args.against, fingerprint=args.fingerprint).models)

    def note(msg: str) -> None:
        if not args.quiet:
            print(f"vmxaddr check-trace: {msg}", file=sys.stderr)

    try:
        workers, capped = resolve_jobs(args.jobs)
        dask_address(args.dask)
    except ParallelError as e:
        fail(str(e))
    if args.dask is not None and args.jobs != 1:
        fail("--jobs and --dask exclude each other: with --dask the cluster's workers do the checking")
    if capped:
        note(capped)
    if "-" in paths and (workers > 1 or args.dask):
        if args.dask:
            fail("--dask reads files its workers can open: standard input cannot be sent")
        note("standard input cannot be split: checking in one process")
        workers = 1
    out = sys.stdout
    merger = Merger(out.write, many=len(paths) > 1)
    interrupted = False
    with Progress(None, "check-trace", enabled=not args.quiet, unit="lines") as prog:
        try:
            if args.dask:
                try:
                    client = dask_client(args.dask)
                except ParallelError as e:
                    fail(str(e))
                with client, _task_failures("(do the workers have this vmxaddr installed, and the trace files at the "
                                            "same paths?)"):
                    threads = max(1, sum(client.nthreads().values()))

                    def submit(fn: Any, *a: Any) -> Any:  # not pure: Dask need not hash 4,096 states a task
                        return client.submit(fn, *a, pure=False)

                    for piece in Runner(plan(paths, True, workers=threads), options, submit, 2 * threads, note):
                        merger.add(piece)
                        prog.update(merger.lines())
            elif workers > 1:
                with process_pool(workers) as pool, _task_failures(""):
                    try:
                        for piece in Runner(plan(paths, True, workers=workers), options, pool.submit, 2 * workers,
                                            note):
                            merger.add(piece)
                            prog.update(merger.lines())
                    except KeyboardInterrupt:
                        stop_pool(pool)  # the pieces under way are not wanted: do not wait for them
                        raise
            else:
                for chunk in plan(paths, False):
                    piece = check_chunk(chunk, options, out.write, prog)
                    merger.add(piece)
                    if piece.interrupted:
                        interrupted = True
                        break
        except KeyboardInterrupt:
            interrupted = True
    summary = merger.summary(options, models_compared)
    summary["interrupted"] = interrupted
    if summary.get("input_error"):
        print(f"vmxaddr check-trace: error: {summary['input_error']}", file=sys.stderr)
    if args.json:
        out.write(dumps(summary) + "\n")
    else:
        out.write(summary_text(summary) + "\n")
    if interrupted:
        print("interrupted: the summary counts the lines checked before ^C", file=sys.stderr)
        return 130
    return int(summary["exit_status"])


def cmd_synth(args: argparse.Namespace) -> int:
    """`vmxaddr trace synth`: a trace as a model would have handled random cases."""
    try:
        model = get(args.model)
    except UnknownModel as e:
        fail(str(e))
    if args.n < 0:
        fail("-n must not be negative")
    if not 0 <= args.wrong <= 1:
        fail("--wrong must be a fraction from 0 to 1")
    if args.out and args.out != "-":
        try:
            out: IO[str] = open(args.out, "w")  # noqa: SIM115
        except OSError as e:
            fail(f"cannot write {args.out}: {e.strerror}")
    else:
        out = sys.stdout
    states = made = 0
    interrupted = False
    failures: list[str] = []  # what the model did instead of answering (vmxaddr.trace.synth)
    first_failure: str | None = None
    try:
        with Progress(args.n, "synth", enabled=not args.quiet, unit="exits") as prog:
            for rec in synth(model, args.n, args.seed, args.shape, args.wrong, failures):
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                if rec["type"] == "exit":
                    made += 1
                    if failures and first_failure is None:
                        first_failure = f"line {made + states}: {failures[0]}"
                    if not made & 1023:
                        prog.update(made)
                else:
                    states += 1
            prog.update(made)
    except KeyboardInterrupt:  # what was written stays written; the summary says how much
        interrupted = True
        print(f"vmxaddr trace synth: interrupted after {made} exit records", file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    if failures:
        print(f"vmxaddr trace synth: {args.model} gave no answer for {len(failures)} of {made} exit records, which "
              f"have no result (first: {first_failure})", file=sys.stderr)
    if args.json:  # the summary object last (check-trace skips it)
        print(json.dumps({"type": "summary", "command": "trace synth", "model": args.model, "seed": args.seed,
                          "exit_records": made, "state_records": states, "out": args.out or "-",
                          "model_errors": len(failures), "model_error_first": first_failure,
                          "interrupted": interrupted}, separators=(",", ":")))
    return 130 if interrupted else 1 if failures else 0


def cmd_import(args: argparse.Namespace) -> int:
    """`vmxaddr trace import --from ftrace`: exit records from a kvm_exit log."""
    try:
        src = open_bytes(args.file)
    except OSError as e:
        fail(f"cannot read {args.file}: {e.strerror}")
    bad = 0

    def problem(n: int, msg: str) -> None:
        nonlocal bad
        bad += 1
        print(f"line {n}: {msg}", file=sys.stderr)

    count = 0
    out = sys.stdout
    broke: str | None = None
    try:
        for rec in import_ftrace(text_lines(src), problem):
            out.write(dumps(rec) + "\n")
            count += 1
    except InputError as e:
        broke = f"after {count} exits: {e}"
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    if broke:
        print(f"vmxaddr trace import: error: {args.file}: {broke}", file=sys.stderr)
    if args.json:  # the summary object last (check-trace skips it)
        out.write(dumps({"type": "summary", "command": "trace import", "source": args.source,
                         "exit_records": count, "lines_not_understood": bad, "input_error": broke}) + "\n")
    if not args.quiet:
        print(f"imported {count} exits of VMX-family instructions" + (f"; {bad} lines not imported" if bad else ""),
              file=sys.stderr)
    return 1 if bad or broke else 0


def register(sub: Any) -> None:
    """Register `check-trace` and `trace` with its subcommands (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("check-trace", help="check a trace of VM exits: processor report, hypervisor answer, fingerprint",
                       description="Check a JSON Lines trace of VM exits caused by VMX-family instructions, record by "
                       "record: did the processor report what the instruction bytes imply, did the hypervisor "
                       "compute the reference model's address or fault, and which known implementations give the "
                       "answer it recorded. Streams: memory stays flat on multi-gigabyte traces.",
                       epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE|DIR",
                   help="the trace (JSON Lines, docs/trace-format.md; gzip or zstd compressed too); - reads standard "
                   "input. Several files, or a directory (its files, recursively, by name), are separate traces "
                   "with one summary: each verdict then names its file")
    p.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                   help="worker processes (default 1; 0: one per CPU). A large file is split at line boundaries, "
                   "several files are shared out; the output is the one a single process prints")
    p.add_argument("--dask", metavar="ADDRESS",
                   help="check on a Dask cluster (tcp://host:8786; pip install 'vmxaddr[dask]'): the workers must "
                   "see the files at the same paths. See docs/trace-format.md")
    p.add_argument("--against", default="sdm", metavar="MODEL",
                   help="reference model for the hypervisor verdict (default sdm; `vmxaddr models` lists them)")
    add_call_timeout(p)
    p.add_argument("--fingerprint", choices=("wrong", "all", "none"), default="wrong",
                   help="run every registered model on: the records the hypervisor got wrong (default), all "
                   "checkable records (slower; the summary then names the models consistent with the whole trace), "
                   "or none")
    p.add_argument("--max-states", type=int, default=DEFAULT_MAX_STATES, metavar="N",
                   help=f"state records kept for state_ref (default {DEFAULT_MAX_STATES}, least recently used dropped)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines: one verdict object per exit record, one per malformed line, then a summary "
                   "object (type \"summary\"; \"interrupted\": true after ^C) — a stream rather than one object, "
                   "so memory stays flat")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    p.set_defaults(func=cmd_check)

    t = sub.add_parser("trace", help="make traces: import a kvm_exit log, or synthesise one from a model",
                       description="Make traces for check-trace.")
    tsub = t.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", parser_class=Parser)
    s = tsub.add_parser("synth", help="a trace as a model would have handled random cases",
                        description="Write a trace (JSON Lines) as MODEL would have handled N random cases, of the instructions MODEL "
                        "handles (its `mnemonics`), from "
                        "vmxaddr's generator: instruction bytes, the exit information a processor reports (SDM "
                        "encoder, random policy), the CPU state (shared state records and inline changes) and the "
                        "model's answer. Same seed, same trace.",
                        epilog="example:\n  vmxaddr trace synth --model kvm-f9eb4af6 -n 1000 --seed 7 | vmxaddr check-trace -",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help="the hypervisor model whose answers are recorded")
    add_call_timeout(s)
    s.add_argument("-n", type=int, default=1000, help="number of exit records (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--shape", choices=SHAPES, default="random",
                   help="random: every case new, many states (default); realistic: what a guest hypervisor's exits "
                   "look like — six states, 48 instructions at fixed addresses that recur, four vCPUs")
    s.add_argument("--wrong", type=float, default=0.0, metavar="FRACTION",
                   help="replace this fraction of the recorded answers by answers no model gives (default 0; "
                   "0.01 makes the realistic trace of benchmarks/bench_trace.py)")
    s.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    s.add_argument("--json", action="store_true", help=JSON_LINES_HELP + " (with --out, standard output gets only it)")
    s.set_defaults(func=cmd_synth)
    i = tsub.add_parser("import", help="convert kvm_exit / kvm_nested_vmexit lines of an ftrace log",
                        description="Convert the kvm_exit and kvm_nested_vmexit events of a trace-cmd report or "
                        "tracefs `trace` text into trace records: exit reason, RIP and exit qualification (info1). "
                        "Exits of other reasons are skipped. The records carry no instruction bytes, "
                        "instruction-information field or CPU state, so check-trace can say little about them.",
                        epilog="exit status: 0 every kvm_exit line imported; 1 some could not be (each named on "
                        "standard error: a format not known, a field out of range, a line over 1 MB) or the input "
                        "broke off (no newline in 256 MB); 2 bad usage\n\n"
                        "example:\n  trace-cmd record -e kvm:kvm_exit ...; trace-cmd report > log.txt\n"
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


