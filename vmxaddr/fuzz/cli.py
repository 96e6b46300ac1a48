"""`vmxaddr fuzz`: options, report text and JSON, the corpus file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vmxaddr.exitinfo import Policy
from vmxaddr.fuzz.campaign import fuzz, model_mnemonics
from vmxaddr.fuzz.classes import FuzzReport
from vmxaddr.fuzz.witness import command, witness_json
from vmxaddr.gen import ALL_MNEMONICS
from vmxaddr.models import UnknownModel, get
from vmxaddr.models.base import Model
from vmxaddr.progress import Progress


def report_json(rep: FuzzReport, a: Model, b: Model) -> dict[str, Any]:
    names = [rep.against, rep.model]
    classes = []
    for c in rep.classes.values():
        w = c.witness
        item: dict[str, Any] = {"name": c.name, "count": c.count, "first_case": c.first_case,
                                "first_seconds": round(c.first_seconds, 4)}
        if w is not None:
            item["witness"] = witness_json(w, names, (b, a), c.name, rep.encoder)
            item["command"] = command(w, names, rep.encoder)
            item["shrunk_by"] = c.shrunk_by
        classes.append(item)
    return {"model": rep.model, "against": rep.against, "encoder": rep.encoder, "seed": rep.seed, "cases": rep.cases,
            "seconds": round(rep.seconds, 3), "cases_per_second": round(rep.cases / max(rep.seconds, 1e-9)),
            "classes": classes}


def report_text(rep: FuzzReport) -> str:
    rate = rep.cases / max(rep.seconds, 1e-9)
    on = f" on {rep.encoder}'s exit information" if rep.encoder != "sdm" else ""
    out = [f"fuzz {rep.model}{on} against {rep.against} (seed {rep.seed}): {rep.cases} cases in {rep.seconds:.1f} s "
           f"({rate:,.0f}/s), {len(rep.classes)} divergence class(es)"]
    if not rep.classes:
        out.append("  no divergence")
    for c in sorted(rep.classes.values(), key=lambda c: c.first_case):
        out.append(f"\n  {c.name}: {c.count} case(s); first at case {c.first_case} after {c.first_seconds:.3f} s")
        if c.witness is not None:
            out.append(f"    minimal witness ({c.shrunk_by}): {command(c.witness, [rep.against, rep.model], rep.encoder)}")
    return "\n".join(out)


def _get(name: str) -> Model:
    from vmxaddr.cli import fail

    try:
        return get(name)
    except UnknownModel as e:
        fail(str(e))


def cmd_fuzz(args: argparse.Namespace) -> int:
    from vmxaddr.cli import fail, print_json

    a, b = _get(args.model), _get(args.against)
    if args.max_examples is not None and args.max_examples < 1:
        fail("--max-examples must be at least 1")
    if args.time is not None and args.time <= 0:
        fail("--time must be positive")
    from vmxaddr.encoders import ENCODERS

    if args.encoder not in ENCODERS:
        fail(f"unknown encoder {args.encoder!r} (encoders: {', '.join(ENCODERS)})")
    apx = args.forms == "all"
    if apx and args.encoder != "sdm":
        fail(f"--forms all needs the sdm encoder: {args.encoder} predates APX (REX2) and covers only some of "
             "the other forms")
    policy = Policy(exit_qual=args.exit_qual, apx=apx)
    mnemonics = model_mnemonics(a, b, forms=ALL_MNEMONICS) if apx else None
    if apx and not mnemonics:
        fail(f"{args.model} and {args.against} share no instruction to fuzz")
    total = args.max_examples
    with Progress(total, f"fuzz {args.model} vs {args.against}", enabled=not args.quiet) as prog:
        rep = fuzz(a, b, seed=args.seed, max_examples=args.max_examples, seconds=args.time, policy=policy,
                   hypothesis_examples=args.hypothesis_examples, hypothesis_seconds=args.hypothesis_seconds,
                   progress=prog, names=(args.model, args.against), encoder=args.encoder, mnemonics=mnemonics)
    obj = report_json(rep, a, b)
    if args.out:
        corpus = {"about": f"Minimal witnesses from `vmxaddr fuzz --model {args.model} --against {args.against} "
                  f"--seed {args.seed}` (format: corpus/README.md, plus models and each model's answer).",
                  "models": [args.against, args.model],
                  "cases": [c["witness"] for c in obj["classes"] if "witness" in c]}
        try:
            Path(args.out).write_text(json.dumps(corpus, indent=2) + "\n")
        except OSError as e:
            fail(f"cannot write {args.out}: {e.strerror}")
    if args.json:
        print_json(obj)
    else:
        print(report_text(rep))
    return 0


EPILOG = """examples:
  vmxaddr fuzz --model kvm-f9eb4af6 --against sdm --seed 1 --time 60
      every class of bug KVM 2015 had, each with a minimal reproducible witness
  vmxaddr fuzz --model kvm-34333cc6 --against kvm-c1a9acbc --max-examples 20000 --json
      the one thing c1a9acbc changed (the limit check's off-by-one)
  vmxaddr fuzz --encoder vbox-iem --model kvm-current --against sdm --seed 1 --time 60
      today's KVM as L1 on VirtualBox's nested VMX (IEM), compared with real hardware
  vmxaddr fuzz --model mypkg.port:get_address --against sdm --time 30 --out witnesses.json
      your own port; witnesses written as a corpus file
"""


def register(sub: Any) -> None:
    from vmxaddr.exitinfo import EXIT_QUAL_POLICIES

    p = sub.add_parser("fuzz", help="find, minimise and classify where two models disagree",
                       description="Generate cases (instructions over every VMX form and code size, CPU states "
                       "leaning on edges), run model A and model B on each, group the divergences by class, and "
                       "shrink each class's first witness to a minimal case printed as a `vmxaddr diff` command.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model under test: a name (`vmxaddr models`) or module.path:function")
    p.add_argument("--against", default="sdm", help="reference model (default sdm)")
    p.add_argument("--encoder", default="sdm", metavar="NAME",
                   help="what writes the exit information --model gets (default sdm; bochs-2.7, vbox-iem: an "
                   "emulator acting as the processor); --against always gets the SDM's. Classes then say which side "
                   "caused them: encoder, consumer reading undefined bits, or consumer")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same run (default 0)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--max-examples", type=int, help="stop after this many cases (default 10000 unless --time)")
    g.add_argument("--time", type=float, metavar="SECONDS", help="stop after this many seconds")
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
    p.add_argument("--out", metavar="FILE", help="write the witnesses as a corpus JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_fuzz)
