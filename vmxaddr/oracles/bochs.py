"""Bochs as a hardware oracle for VM-exit instruction information (issue 8).

Bochs (Debian's 2.7 build has VMX) emulates what a processor writes into the VMCS
on a VM exit.  We boot a tiny VMM of our own in place of the BIOS (``romimage:``),
run a guest made of the instructions under test and read back, for every exit,
the exit reason, exit qualification, VM-exit instruction-information field, guest
RIP and instruction length.

The VMM is ``bochs_asm/vmm.s`` (hand-written, commented); the guest code and the
VMCS guest-state tables are generated here from the case list and a field table.
Everything is assembled and linked with binutils at run time into a ROM image.

The parts, one module each:
  bochs_guest    the cases, the VMCS tables, the generated guest code and the ROM image
  bochs_run      the tools, running Bochs on the image, reading its log (`boot`)
  bochs_cases    random and systematic cases the core decoder accepts
  bochs_compare  Bochs's records against vmxaddr's encoder, Bochs's documented departures
This module gathers their public names (`from vmxaddr.oracles import bochs; bochs.boot(...)`)
and is `python -m vmxaddr.oracles.bochs`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from vmxaddr.errors import BochsError, BochsUnavailable
from vmxaddr.oracles.bochs_cases import NOT_EXITING_IN_BOCHS, OPCODES, coverage_cases, random_cases, random_encoding
from vmxaddr.oracles.bochs_compare import (
    Comparison,
    _known_deviation,
    bochs_rdrand_opsize,
    bochs_summary,
    compare,
    crosscheck_bochs,
    sdm_rdrand_opsize,
)
from vmxaddr.oracles.bochs_guest import CPU_MODEL, REGISTER_NAMES, BochsRun, Case, Record, build_image, generate_cases_asm
from vmxaddr.oracles.bochs_run import boot, did_not_finish, missing_tools, parse_log, run_bochs, run_image
from vmxaddr.progress import Progress

__all__ = ["CPU_MODEL", "NOT_EXITING_IN_BOCHS", "OPCODES", "REGISTER_NAMES", "BochsError", "BochsRun",
           "BochsUnavailable", "Case", "Comparison", "Record", "_known_deviation", "bochs_rdrand_opsize",
           "bochs_summary", "boot", "build_image", "compare", "coverage_cases", "crosscheck_bochs",
           "did_not_finish", "generate_cases_asm", "main", "missing_tools", "parse_log", "random_cases",
           "random_encoding", "run_bochs", "run_image", "sdm_rdrand_opsize"]


def _print_summary(summary: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"bochs: {summary['cases']} cases, {summary['agree']} agree, "
              f"{summary['unexplained']} unexplained, explained {summary['explained']}, "
              f"{summary['boots']} boot(s), {summary['seconds']} s")
        for d in summary["disagreements"]:
            print(f"  {d['mode']}-bit CPL {d['cpl']} {d['bytes']} {d['instruction']}: "
                  f"{'; '.join(d['differences'])}")
    return 1 if summary["unexplained"] else 0


def _cmd_crosscheck(args: Any) -> int:
    with Progress(args.n, "bochs", enabled=not args.json) as prog:
        try:
            summary = crosscheck_bochs(args.n, args.seed, progress=lambda done, _total: prog.update(done))
        except BochsUnavailable as e:
            print(f"vmxaddr crosscheck: error: {e}", file=sys.stderr)
            return 2
    return _print_summary(summary, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vmxaddr.oracles.bochs [-n N] [--seed S] [--json]``"""
    ap = argparse.ArgumentParser(prog="python -m vmxaddr.oracles.bochs",
                                 description="Cross-check the exit-information encoder against Bochs.")
    ap.add_argument("-n", type=int, default=1000, help="number of random encodings (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return _cmd_crosscheck(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
