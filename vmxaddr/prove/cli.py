"""`vmxaddr prove`: every divergence class between two models, form by form, with a proof that
there is no other (vmxaddr.prove.engine; docs/proofs.md)."""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import multiprocessing as mp
import sys
import time
from typing import TYPE_CHECKING, Any

from vmxaddr.cli import fail, print_json
from vmxaddr.exitinfo import EXIT_QUAL_POLICIES, Policy
from vmxaddr.models import get
from vmxaddr.models.base import Model

if TYPE_CHECKING:  # z3 is imported when a proof runs, not when the parser is built
    from vmxaddr.prove.engine import FormResult
    from vmxaddr.prove.forms import Form

PROVED, ERROR = "proved", "error"  # = vmxaddr.prove.engine's

REAL_CODE = ("kvm-linux-", "xen-4.", "c:", "kvm-tree:")


class ProveUsageError(Exception):
    """A model that cannot be proved (unknown, not a function, compiled C) or a bad --mode: reported
    as one line, exit status 2."""
    pass


def symbolic_model(name: str) -> Model:
    """The pure-Python function behind a model name: the rule-language source itself, never the
    mypyc-compiled copy (compiled functions take only ints) nor the guard (it would swallow the
    explorer's control flow)."""
    kvm = importlib.import_module("vmxaddr.models.kvm")
    xen = importlib.import_module("vmxaddr.models.xen_port")
    if name == "sdm":
        return importlib.import_module("vmxaddr.models.sdm").sdm  # type: ignore[no-any-return]
    target = kvm.ALIASES.get(name, (name, ""))[0]
    if target in kvm.REGISTERED:
        return kvm.REGISTERED[target][0]  # type: ignore[no-any-return]
    if name == "xen-c447b730":
        return xen.xen_c447b730
    if name.startswith(REAL_CODE):
        raise ProveUsageError(f"{name} is compiled C: it runs on numbers only. Prove its port instead "
                              "(kvm-linux-6.1 -> kvm-82277eee, kvm-linux-6.12 -> kvm-703d794c, xen-4.17 -> xen-c447b730), "
                              "which equals it by execution (docs/proofs.md)")
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            f = getattr(importlib.import_module(mod.strip()), fn.strip())
        except Exception as e:  # noqa: BLE001 - a user's module: one line
            raise ProveUsageError(f"cannot load model {name!r}: {type(e).__name__}: {e}") from None
        if not callable(f):
            raise ProveUsageError(f"model {name!r} is not a function")
        return f  # type: ignore[no-any-return]
    raise ProveUsageError(f"unknown model {name!r}; `vmxaddr models` lists them, or give module.path:function")


def select_forms(model: Model, against: Model, form_patterns: list[str], mode: str | None, policy: Policy) -> list[Form]:
    """The instruction forms both models cover that --form and --mode select."""
    from vmxaddr.fuzz.campaign import model_mnemonics
    from vmxaddr.prove.forms import MODES_BY_CODE_SIZE, forms

    mnemonics = model_mnemonics(model, against)
    sizes: tuple[int, ...] = (16, 32, 64)
    modes: tuple[str, ...] | None = None
    if mode in ("16", "32", "64"):
        sizes = (int(mode),)
    elif mode is not None:
        allm = {m for ms in MODES_BY_CODE_SIZE.values() for m in ms}
        if mode not in allm:
            raise ProveUsageError(f"--mode {mode!r}: give 16, 32, 64 or a processor mode ({', '.join(sorted(allm))})")
        modes = (mode,)
    out = []
    for f in forms(mnemonics, sizes, modes, policy):
        if form_patterns and not any(p in f.key or fnmatch.fnmatchcase(f.key, p) for p in form_patterns):
            continue
        out.append(f)
    return out


def _task(args: tuple[list[Form], str, str, float, Policy]) -> list[FormResult]:
    """Prove one group of forms (vmxaddr.prove.groups): the first in full, the others sharing its proof where they may."""
    group, a, b, timeout, policy = args
    from vmxaddr.prove.groups import prove_group

    return prove_group(group, (a, symbolic_model(a)), (b, symbolic_model(b)), timeout, policy, confirm=(get(a), get(b)))


def run(forms_: list[Form], a: str, b: str, timeout: float, policy: Policy, jobs: int, quiet: bool = False) -> list[FormResult]:
    """Prove each group of forms (in `jobs` processes), printing each result as it comes unless `quiet`."""
    from vmxaddr.prove.groups import group

    # the largest groups first, so that two workers finish together
    tasks = sorted(((g, a, b, timeout, policy) for g in group(forms_)), key=lambda t: -len(t[0]))
    results: list[FormResult] = []
    t0 = time.time()

    def progress(rs: list[FormResult]) -> None:
        for r in rs:
            results.append(r)
            if not quiet:
                shared = f", shares {r.shared_with}'s proof" if r.shared_with else ""
                print(f"[{len(results)}/{len(forms_)} {time.time() - t0:.0f}s] {r.form.key}: {r.status} ({r.cpu_seconds:.1f}s CPU, "
                      f"{len(r.classes)} classes{shared})", file=sys.stderr, flush=True)

    if jobs <= 1:
        for t in tasks:
            progress(_task(t))
    else:
        with mp.get_context("fork").Pool(jobs) as pool:
            for rs in pool.imap_unordered(_task, tasks):
                progress(rs)
    order = {f.key: i for i, f in enumerate(forms_)}
    return sorted(results, key=lambda r: order[r.form.key])


def summary(results: list[FormResult]) -> dict[str, Any]:
    """The classes over all forms (with a witness and the number of forms), the statuses counted,
    the times."""
    classes: dict[str, dict[str, Any]] = {}
    for r in results:
        for c in r.classes:
            e = classes.setdefault(c.name, {"class": c.name, "forms": 0, "witness": c.command, "condition": c.condition})
            e["forms"] += 1
    counts = {s: sum(r.status == s for r in results) for s in {r.status for r in results}}
    secs = [r.seconds for r in results]
    cpu = [r.cpu_seconds for r in results]
    return {"forms": len(results), "status": counts, "shared": sum(bool(r.shared_with) for r in results),
            "classes": list(classes.values()),
            "seconds": {"total": round(sum(secs), 1), "max": round(max(secs, default=0), 1),
                        "mean": round(sum(secs) / max(len(secs), 1), 1)},
            "cpu_seconds": {"total": round(sum(cpu), 1), "max": round(max(cpu, default=0), 2),
                            "mean": round(sum(cpu) / max(len(cpu), 1), 2)}}


def cmd_prove(args: argparse.Namespace) -> int:
    """`vmxaddr prove`: every divergence class between two models per form, with a proof there is no
    other."""
    try:
        import z3  # noqa: F401
    except ImportError:
        fail("vmxaddr prove needs z3-solver: pip install 'vmxaddr[prove]'")
    try:
        model, against = symbolic_model(args.model), symbolic_model(args.against)
        policy = Policy(exit_qual=args.exit_qual, apx=args.apx)
        fs = select_forms(model, against, args.form, args.mode, policy)
    except ProveUsageError as e:
        fail(str(e))
    if not fs:
        fail("no form matches (see --list)")
    if args.list:
        if args.json:
            print(json.dumps({"command": "prove", "model": args.model, "against": args.against,
                              "forms": [f.key for f in fs]}))
            return 0
        for f in fs:
            print(f.key)
        return 0
    if args.timeout <= 0 or args.jobs < 1:
        fail("--timeout must be > 0 and --jobs >= 1")
    try:
        results = run(fs, args.model, args.against, args.timeout, policy, args.jobs, quiet=args.json and not args.progress)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summ = summary(results)
    if args.json:
        print_json({"model": args.model, "against": args.against, "policy": {"exit_qual": policy.exit_qual, "apx": policy.apx},
                    "summary": summ, "forms": [r.to_json() for r in results]})
    else:
        print(text(results, summ, args.model, args.against))
    return 0 if all(r.status == PROVED for r in results) else 1


def text(results: list[FormResult], summ: dict[str, Any], a: str, b: str) -> str:
    """The text report: one line per form with its status and classes, then the summary."""
    out = []
    for r in results:
        note = f" — {r.note}" if r.note else ""
        out.append(f"{r.form.key}: {r.status} in {r.seconds:.1f}s ({r.cpu_seconds:.1f}s CPU, {r.paths} paths){note}")
        for c in r.classes:
            mark = "" if c.confirmed else "  NOT CONFIRMED by the concrete models"
            out.append(f"    {c.name}{mark}\n        {c.command}")
            if not c.condition.startswith("("):
                out.append(f"        when {c.condition}")
        if r.undecided:
            out.append(f"    undecided (timeout): {', '.join(r.undecided)}")
    out.append("")
    out.append(f"{a} against {b}: {summ['forms']} forms, " + ", ".join(f"{n} {s}" for s, n in sorted(summ["status"].items()))
               + f" ({summ['shared']} sharing another form's proof); {summ['cpu_seconds']['total']}s CPU in all "
               f"({summ['seconds']['total']}s wall), at most {summ['cpu_seconds']['max']}s CPU for one form")
    for c in summ["classes"]:
        out.append(f"  {c['class']}: in {c['forms']} form(s), e.g. {c['witness']}")
    if not summ["classes"] and all(r.status == PROVED for r in results):
        out.append("  no divergence: the two models agree on every input of these forms")
    if any(r.status == ERROR for r in results):
        out.append("  errors: see the forms marked 'error' above")
    return "\n".join(out)


EPILOG = """examples:
  vmxaddr prove --model kvm-f9eb4af6 --against sdm --form 'vmread/protected32/a32/[base+index*4+disp32]/ds'
      the feasibility study's form: five classes, each with a replayable `vmxaddr diff` command, then "proved"
  vmxaddr prove --model kvm-703d794c --mode 64 --form vmptrld --jobs 2 --json
      every VMPTRLD form in 64-bit mode (LAM and LA57 symbolic)
  vmxaddr prove --model mypkg.port:get_address --list
      the forms a user's port (written in the rule language, docs/proofs.md) would be proved on
exit status: 0 when every form is proved, 1 when some form is unknown or an error, 2 on a usage error.
"""


def register(sub: Any) -> None:
    """Register `vmxaddr prove` (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("prove", help="every divergence class between two models, exactly, with a proof there is no other",
                       description="For each instruction form (instruction, processor mode, address size, operand kind, "
                       "segment), run both models symbolically over every register value, displacement, segment "
                       "base/limit/attributes, CPL, LA57 and LAM bit; list every divergence class (named by the "
                       "classifier `fuzz` uses) with a minimal witness as a `vmxaddr diff` command confirmed by the "
                       "concrete models, then prove no other divergence exists. A form ends 'proved', "
                       "'classes found, rest unknown (timeout)' or 'error'.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model under test (a name from `vmxaddr models`, or module.path:function)")
    p.add_argument("--against", default="sdm", help="the reference (default sdm)")
    p.add_argument("--form", action="append", default=[], metavar="F",
                   help="only forms whose key contains F (or matches it as a glob), e.g. vmread/protected32; repeatable; "
                   "--list shows the keys")
    p.add_argument("--mode", metavar="M", help="16, 32 or 64 (code size), or a processor mode (protected, real, "
                   "virtual-8086, compatibility, 64-bit)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="CPU seconds per form (default 60; CPU time, so that a busy machine does not cut a proof short)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="forms proved in parallel (default 1)")
    p.add_argument("--exit-qual", choices=EXIT_QUAL_POLICIES[:2], default="zero-extend",
                   help="what the processor writes above the address size in the exit qualification (default zero-extend, "
                   "as `vmxaddr diff`)")
    p.add_argument("--apx", action="store_true",
                   help="the processor enumerates APX: it writes the extended instruction-information field, and the "
                   "64-bit forms include REX2 encodings naming R16-R31 (kvm-apx-v2 differs there)")
    p.add_argument("--list", action="store_true", help="list the selected forms and stop")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--progress", action="store_true", help="with --json: a line per form on stderr all the same")
    p.set_defaults(func=cmd_prove)

