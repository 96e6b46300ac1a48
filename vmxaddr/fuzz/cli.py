"""`vmxaddr fuzz`: options, report text and JSON, the corpus file."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from vmxaddr.cli import add_call_timeout, print_json
from vmxaddr.encoders import ENCODERS
from vmxaddr.errors import fail
from vmxaddr.exitinfo import EXIT_QUAL_POLICIES, Policy
from vmxaddr.fuzz.campaign import BLOCK_SIZE, fuzz, model_mnemonics
from vmxaddr.fuzz.classes import FuzzReport
from vmxaddr.fuzz.failures import resolve
from vmxaddr.fuzz.witness import command, witness_json
from vmxaddr.gen import ALL_MNEMONICS
from vmxaddr.models import UnknownModel
from vmxaddr.models.base import Model
from vmxaddr.parallel import ParallelError, dask_address, dask_client, resolve_jobs
from vmxaddr.progress import Progress


def report_json(rep: FuzzReport, a: Model, b: Model) -> dict[str, Any]:
    """The campaign report as the JSON object `vmxaddr fuzz --json` prints, with each witness replayed on both models."""
    names = [rep.against, rep.model]
    classes = []
    for c in rep.classes.values():
        w = c.witness
        item: dict[str, Any] = {"name": c.name, "count": c.count, "first_case": c.first_case, "first_seed": c.first_seed,
                                "first_seconds": round(c.first_seconds, 4)}
        if w is not None:
            item["witness"] = witness_json(w, names, (b, a), c.name, rep.encoder)
            item["command"] = command(w, names, rep.encoder)
            item["shrunk_by"] = c.shrunk_by
        classes.append(item)
    return {"model": rep.model, "against": rep.against, "encoder": rep.encoder, "seed": rep.seed, "cases": rep.cases,
            "seconds": round(rep.seconds, 3), "generating_seconds": round(rep.generating or rep.seconds, 3),
            "cases_per_second": round(rep.rate),
            "interrupted": rep.interrupted, "workers": rep.workers, "where": rep.where, "block_size": rep.block_size,
            "classes": classes}


def report_text(rep: FuzzReport) -> str:
    """The campaign report as text: the totals, then one paragraph per class with its witness command."""
    rate = rep.rate
    on = f" on {rep.encoder}'s exit information" if rep.encoder != "sdm" else ""
    par = "" if rep.workers == 1 and rep.where == "local" else \
        f", {rep.workers} worker(s){'' if rep.where == 'local' else ' on ' + rep.where}"
    out = [f"fuzz {rep.model}{on} against {rep.against} (seed {rep.seed}{par}): {rep.cases} cases in {rep.seconds:.1f} s "
           f"({rate:,.0f}/s while generating), {len(rep.classes)} divergence class(es)"]
    if rep.interrupted:
        out.append("  INTERRUPTED: the classes found so far")
    if not rep.classes:
        out.append("  no divergence")
    for c in sorted(rep.classes.values(), key=lambda c: c.first_case):
        out.append(f"\n  {c.name}: {c.count} case(s); first at case {c.first_case} after {c.first_seconds:.3f} s")
        if c.witness is not None:
            what = f"minimal witness ({c.shrunk_by})" if c.shrunk_by in ("replay", "hypothesis") else \
                f"first witness ({c.shrunk_by or 'not shrunk'})"
            out.append(f"    {what}: {command(c.witness, [rep.against, rep.model], rep.encoder)}")
    return "\n".join(out)


def _get(name: str) -> Model:
    try:
        return resolve(name)
    except UnknownModel as e:
        fail(str(e))
    except (Exception, SystemExit) as e:  # a user's module that fails on import
        fail(f"cannot load model {name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))


def check_options(args: argparse.Namespace) -> None:
    """Every number refused before anything runs (one line each)."""
    if args.max_examples is not None and args.max_examples < 1:
        fail("--max-examples must be at least 1")
    if args.time is not None and not (math.isfinite(args.time) and args.time > 0):
        fail(f"--time must be a positive number of seconds, not {args.time}")
    if args.hypothesis_examples < 0:
        fail(f"--hypothesis-examples must be 0 or more, not {args.hypothesis_examples}")
    if not (math.isfinite(args.hypothesis_seconds) and args.hypothesis_seconds >= 0):
        fail(f"--hypothesis-seconds must be 0 or a positive number, not {args.hypothesis_seconds}")


def check_out(path: str) -> None:
    """Fail now, not after the run, if `path` cannot be written: try it (a new file is removed again)."""
    p = Path(path)
    if p.is_dir():
        fail(f"--out {path}: is a directory; give a file name")
    existed = p.exists()
    try:  # non-blocking: a FIFO nobody reads is refused now rather than blocking here
        os.close(os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666))
    except OSError as e:
        fail(f"--out {path}: cannot write it: {e.strerror}")
    if not existed:
        p.unlink(missing_ok=True)


def cmd_fuzz(args: argparse.Namespace) -> int:
    """`vmxaddr fuzz`: run a campaign (local workers or Dask) and print the classes and witnesses."""
    check_options(args)
    if args.model.startswith("kvm-live:"):  # the running KVM: batches of Bochs runs (vmxaddr/live)
        from vmxaddr.live.fuzzlive import cmd_fuzz_live
        return cmd_fuzz_live(args)
    try:
        workers, note = resolve_jobs(args.jobs)
        dask_address(args.dask)
    except ParallelError as e:
        fail(str(e))
    if args.encoder not in ENCODERS:
        fail(f"unknown encoder {args.encoder!r} (encoders: {', '.join(ENCODERS)})")
    a, b = _get(args.model), _get(args.against)
    if args.out:
        check_out(args.out)
    if note and not args.quiet:
        print(f"vmxaddr fuzz: {note}", file=sys.stderr)
    apx = args.forms == "all"
    if apx and args.encoder != "sdm":
        fail(f"--forms all needs the sdm encoder: {args.encoder} predates APX (REX2) and covers only some of "
             "the other forms")
    policy = Policy(exit_qual=args.exit_qual, apx=apx)
    mnemonics = model_mnemonics(a, b, forms=ALL_MNEMONICS) if apx else model_mnemonics(a, b)
    if not mnemonics:
        fail(f"{args.model} and {args.against} share no instruction to fuzz")
    if args.hypothesis_examples > 0:
        import hypothesis  # noqa: F401 - imported now (about a second), not inside the time --time bounds
    start = time.time()  # --time counts from here: connecting to a cluster is part of the run
    with Progress(args.max_examples, f"fuzz {args.model} vs {args.against}", enabled=not args.quiet) as prog:
        if args.dask or workers > 1:
            from vmxaddr.fuzz.runner import DaskExecutor, LocalExecutor, Spec, WorkerError, fuzz_parallel

            try:
                ex = DaskExecutor(dask_client(args.dask), args.dask) if args.dask else LocalExecutor(workers)
            except ParallelError as e:
                fail(str(e))
            spec = Spec(args.model, args.against, args.encoder, policy, mnemonics, args.seed, BLOCK_SIZE)
            try:
                rep = fuzz_parallel(spec, ex, max_examples=args.max_examples if args.time is None else None,
                                    seconds=args.time, hypothesis_examples=args.hypothesis_examples,
                                    hypothesis_seconds=args.hypothesis_seconds, progress=prog, start=start)
            except WorkerError as e:
                fail(str(e))
        else:
            rep = fuzz(a, b, seed=args.seed, max_examples=args.max_examples, seconds=args.time, policy=policy,
                       hypothesis_examples=args.hypothesis_examples, hypothesis_seconds=args.hypothesis_seconds,
                       progress=prog, names=(args.model, args.against), encoder=args.encoder, block_size=BLOCK_SIZE,
                       mnemonics=mnemonics)
    obj = report_json(rep, a, b)
    # The report first: whatever happens to --out, it is not lost.
    if args.json:
        print_json(obj)
    else:
        print(report_text(rep))
    status = 130 if rep.interrupted else 0
    if args.out:
        corpus = {"about": f"Minimal witnesses from `vmxaddr fuzz --model {args.model} --against {args.against} "
                  f"--seed {args.seed}` (format: corpus/README.md, plus models and each model's answer)."
                  + (" INTERRUPTED: the classes found so far, not shrunk." if rep.interrupted else ""),
                  "models": [args.against, args.model],
                  "cases": [c["witness"] for c in obj["classes"] if "witness" in c]}
        try:
            with open(args.out, "w") as f:
                f.write(json.dumps(corpus, indent=2) + "\n")
        except OSError as e:
            sys.stdout.flush()
            print(f"vmxaddr fuzz: error: cannot write {args.out}: {e.strerror} (the report above has every witness)",
                  file=sys.stderr)
            return status or 1
    return status


EPILOG = """examples:
  vmxaddr fuzz --model kvm-f9eb4af6 --against sdm --seed 1 --time 60
      every class of bug KVM 2015 had, each with a minimal reproducible witness
  vmxaddr fuzz --model kvm-34333cc6 --against kvm-c1a9acbc --max-examples 20000 --json
      the one thing c1a9acbc changed (the limit check's off-by-one)
  vmxaddr fuzz --encoder vbox-iem --model kvm-current --against sdm --seed 1 --time 60
      today's KVM as L1 on VirtualBox's nested VMX (IEM), compared with real hardware
  vmxaddr fuzz --model mypkg.port:get_address --against sdm --time 30 --out witnesses.json
      your own port; witnesses written as a corpus file
  vmxaddr fuzz --model kvm-f9eb4af6 --against sdm --max-examples 1000000 --jobs 0
      every CPU; the same report as --jobs 1
  vmxaddr fuzz --model kvm-f9eb4af6 --against sdm --time 3600 --dask tcp://scheduler:8786
      on a Dask cluster (docs/differential.md: starting one)

A model that raises (RecursionError, SystemExit, ...) or answers something that is not a Result
is a finding: its own class ("model under test raised ..."), counted and shrunk like a divergence.
^C prints the classes found so far, marked as interrupted (and writes them to --out).

exit status: 0 done (divergences or not), 1 --out could not be written at the end (the report is
printed anyway), 2 bad usage, 130 interrupted
"""


def register(sub: Any) -> None:
    """Register `vmxaddr fuzz` (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("fuzz", help="find, minimise and classify where two models disagree",
                       description="Generate cases (instructions over every VMX form and code size, CPU states "
                       "leaning on edges), run model A and model B on each, group the divergences by class, and "
                       "shrink each class's first witness to a minimal case printed as a `vmxaddr diff` command.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model under test: a name (`vmxaddr models`) or module.path:function")
    p.add_argument("--against", default="sdm", help="reference model (default sdm)")
    add_call_timeout(p)
    p.add_argument("--encoder", default="sdm", metavar="NAME",
                   help="what writes the exit information --model gets (default sdm; bochs-2.7, vbox-iem: an "
                   "emulator acting as the processor); --against always gets the SDM's. Classes then say which side "
                   "caused them: encoder, consumer reading undefined bits, or consumer")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same run (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--max-examples", type=int, help="stop after this many cases (default 10000 unless --time)")
    g.add_argument("--time", type=float, metavar="SECONDS",
                   help="bound on the whole run, shrinking included: cases are generated until 3/4 of SECONDS once a "
                   "divergence is known (until the end otherwise), the rest shrinks; a class whose shrinking has "
                   "not started by then keeps its first witness (\"not shrunk: out of time\")")
    p.add_argument("--exit-qual", choices=EXIT_QUAL_POLICIES, default="zero-extend",
                   help="exit-qualification bits above the address size (default zero-extend, as hardware)")
    p.add_argument("--forms", choices=("vmx", "all"), default="vmx",
                   help="vmx (default): the VMX-family memory forms; all: also INS/OUTS, TPAUSE, UMWAIT, LOADIWKEY "
                   "and, in 64-bit code, APX REX2 encodings naming R16-R31, with the extended instruction-"
                   "information field in every exit")
    p.add_argument("--hypothesis-examples", type=int, default=200, metavar="N",
                   help="examples hypothesis may try per class when minimising (0: replay shrinking only)")
    p.add_argument("--hypothesis-seconds", type=float, default=2.0, metavar="S",
                   help="time hypothesis may spend per class (default 2; its shrinking has no bound of its own)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes (default 1; 0: one per CPU; capped at the CPU count). The cases come in "
                   f"seed blocks of {BLOCK_SIZE:,}, so the report is the same whatever N")
    w.add_argument("--dask", metavar="ADDRESS",
                   help="run the seed blocks and the shrinking on a Dask cluster (e.g. tcp://host:8786; needs "
                   "pip install 'vmxaddr[dask]', and vmxaddr, plus any module.path:function model, on every worker)")
    p.add_argument("--out", metavar="FILE", help="write the witnesses as a corpus JSON file (checked before the run)")
    p.add_argument("--quiet", action="store_true", help="nothing on stderr but errors")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_fuzz)
