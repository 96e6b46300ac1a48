"""`vmxaddr diff`: several models on one case, side by side, the first difference marked.

The engine (running the models, agreement, the divergence classes, the text table) is
vmxaddr.diff; this module reads the options and prints.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vmxaddr.case import Case, case_json
from vmxaddr.cli import add_call_timeout, add_case_options, case_from, print_json
from vmxaddr.diff import diff_case, diff_text
from vmxaddr.encoders import ENCODERS
from vmxaddr.errors import fail
from vmxaddr.models import UnknownModel, covers, get, not_covered
from vmxaddr.models.base import InvalidExitInfo, Model
from vmxaddr.state import CpuState


def parse_models(text: str) -> list[tuple[str, Model]]:
    """The models --models names (at least two, the first the reference); UsageError for an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        fail("--models needs at least two models, e.g. --models sdm,kvm-f9eb4af6")
    out = []
    for n in names:
        try:
            out.append((n, get(n)))
        except UnknownModel as e:
            fail(str(e))
    return out


def apply_lam(state: CpuState, lam: Sequence[str]) -> CpuState:
    """`state` with the linear-address-masking controls --lam names turned on (CR4.LAM_SUP, CR3.LAM_U48/U57)."""
    for x in lam:
        state = replace(state, **{f"lam_{x}": True})
    return state


def cmd_diff(args: argparse.Namespace) -> int:
    """`vmxaddr diff`: run the models on one case and print their results side by side (or as JSON)."""
    models = parse_models(args.models)
    case = case_from(args)
    if not covers(models[0][1], case.instruction.mnemonic):
        fail(not_covered(models[0][0], models[0][1], case.instruction.mnemonic))
    if args.lam:
        case = Case(case.instruction, apply_lam(case.state, args.lam), case.policy)
    if args.encoder not in ENCODERS:
        fail(f"unknown encoder {args.encoder!r} (encoders: {', '.join(ENCODERS)})")
    try:
        d = diff_case(case, models, explain=True, encoder=args.encoder)
    except InvalidExitInfo as e:
        fail(str(e))
    if args.json:
        results = {}
        for name, r in d.results.items():
            obj = case_json(case, d.exit, r)
            obj["model"] = name
            results[name] = obj
        if d.encoder_exit is not None:
            for name in list(results)[1:]:
                results[name]["instruction_info"] = d.encoder_exit.instruction_info
                results[name]["exit_qualification"] = d.encoder_exit.exit_qualification
                results[name]["encoder"] = d.encoder
        print_json({"results": results, "agree": d.agree, "first_difference": d.first_difference,
                    "divergences": [x.to_json() for x in d.divergences], "not_covered": list(d.not_covered)})
    else:
        print(diff_text(d))
    return 0


EPILOG = """examples:
  vmxaddr diff --models sdm,kvm-f9eb4af6,kvm-current --mode 32 --reg ebp=0x1000 0f7845d8
      the seed bug: KVM before 946c522b used 0x100000fd8 as the offset and raised #SS(0)
  vmxaddr diff --models sdm,kvm-fdb28619 --mode 64 --seg ds.base=0x1000 '0f c7 30'
      KVM before 6694e480 added a DS base in 64-bit mode
  vmxaddr diff --encoder vbox-iem --models sdm,kvm-current --mode 32 --reg ebx=0x1000 --reg esi=0x10 '0f c7 34 b3'
      today's KVM on VirtualBox's nested VMX (IEM) against the SDM on real hardware
  vmxaddr diff --models sdm,mypkg.port:get_address --mode 32 ... HEX
      your own port (module.path:function with the signature in vmxaddr.models.base)
"""


def register(sub: Any) -> None:
    """Register `vmxaddr diff` (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("diff", help="run several models on one case, side by side, first difference marked",
                       description="Run several models on one instruction and CPU state and compare them with "
                       "the first: outcome (kind, vector, error code) and, when nothing faults, the linear "
                       "address. A divergence is named by the first step whose value differs "
                       "(displacement, effective address, segment base, linear address, checks).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, metavar="A,B,...",
                   help="comma-separated model names (`vmxaddr models`) or module.path:function; the first is the reference")
    add_call_timeout(p)
    p.add_argument("--lam", action="append", default=[], choices=("sup", "u48", "u57"),
                   help="enable linear-address masking: CR4.LAM_SUP (sup) or CR3.LAM_U48/LAM_U57")
    p.add_argument("--encoder", default="sdm", metavar="NAME",
                   help="what writes the exit information for every model after the first (default sdm; "
                   "bochs-2.7, vbox-iem: an emulator acting as the processor); the first model always gets the SDM's")
    add_case_options(p)
    p.set_defaults(func=cmd_diff)
