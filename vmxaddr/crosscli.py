"""`vmxaddr cross`: one case through an encoder and a consumer, against the SDM on real hardware.

    vmxaddr cross --encoder vbox-iem --model sdm --mode 32 --reg ebx=0x1000 --reg esi=0x10 '0f c7 34 b3'

The consumer (--model) gets the exit information --encoder writes; the reference (--against,
default sdm) gets the SDM encoder's. Prints both answers and, when they disagree, which side caused
it (vmxaddr.encoder_consumer): the encoder (a defined field differs), the consumer reading undefined bits,
or the consumer itself.
"""

from __future__ import annotations

import argparse
from typing import Any

from vmxaddr import cli
from vmxaddr.encoder_consumer import cross
from vmxaddr.encoders import ENCODERS
from vmxaddr.models import UnknownModel, covers, get, not_covered
from vmxaddr.models.base import InvalidExitInfo, Result

EPILOG = """examples:
  vmxaddr cross --encoder vbox-iem --model sdm --mode 32 --reg ebx=0x1000 --reg esi=0x10 --reg eax=0x5000 '0f c7 34 b3'
      VMPTRLD [EBX+ESI*4] reported by VirtualBox's IEM: the index field says EAX
  vmxaddr cross --model xen-c447b730 --mode 32 --reg ebp=0x1000 '0f 78 45 d8'
      Xen on a processor that zero-extends the exit qualification: VMREAD [EBP-0x28] faults
"""


def _answer(r: Result) -> str:
    la = "" if r.linear_address is None else f", linear {r.linear_address:#x}"
    return f"{r.outcome.short()}{la}"


def cmd_cross(args: argparse.Namespace) -> int:
    """`vmxaddr cross`: run the consumer on the encoder's exit information and the reference on the SDM's, and say which side diverged."""
    case = cli.case_from(args)
    if args.encoder not in ENCODERS:
        cli.fail(f"unknown encoder {args.encoder!r} (encoders: {', '.join(ENCODERS)})")
    try:
        model, against = get(args.model), get(args.against)
    except UnknownModel as e:
        cli.fail(str(e))
    for name, m in ((args.model, model), (args.against, against)):
        if not covers(m, case.instruction.mnemonic):
            cli.fail(not_covered(name, m, case.instruction.mnemonic))
    try:
        x = cross(case, args.encoder, model, against, getattr(model, "classify", None))
    except InvalidExitInfo as e:
        cli.fail(str(e))
    if args.json:
        obj: dict[str, Any] = {
            "instruction": case.instruction.to_json(), "encoder": args.encoder, "model": args.model,
            "against": args.against, "agree": x.side is None, "side": x.side, "class": x.klass,
            "fields": list(x.fields),
            "exit": x.exit.to_json(), "sdm_exit": x.sdm_exit.to_json(),
            "model_result": x.got.to_json(), "against_result": x.ref.to_json(),
        }
        cli.print_json(obj)
        return 0
    print(case.instruction.text())
    print(f"  {args.encoder:>10} encoder: info {x.exit.instruction_info:#010x}, qualification {x.exit.exit_qualification:#x}")
    print(f"  {'sdm':>10} encoder: info {x.sdm_exit.instruction_info:#010x}, qualification {x.sdm_exit.exit_qualification:#x}")
    print(f"  {args.model} on {args.encoder}: {_answer(x.got)}")
    print(f"  {args.against} on sdm: {_answer(x.ref)}")
    if x.side is None:
        print("agree")
    else:
        print(f"diverge — {x.side} side: {x.klass}")
        if x.fields:
            print(f"  defined fields the encoder gets wrong: {', '.join(x.fields)}")
    return 0


def register(sub: Any) -> None:
    """Register `vmxaddr cross` (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("cross", help="one case through an encoder and a consumer, against the SDM",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_case_options(p)
    p.add_argument("--encoder", default="sdm", help="what writes the exit information for --model "
                   f"(default sdm; one of {', '.join(ENCODERS)})")
    p.add_argument("--model", required=True, help="the consumer under test (`vmxaddr models` lists them)")
    p.add_argument("--against", default="sdm", help="the reference consumer, run on the SDM encoder's information (default sdm)")
    cli.add_call_timeout(p)
    p.set_defaults(func=cmd_cross)
