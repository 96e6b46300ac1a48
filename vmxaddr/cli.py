"""The `vmxaddr` command line. Each subcommand's module registers itself through `register`."""

from __future__ import annotations

import argparse
import codecs
import errno
import importlib
import io
import json
import os
import stat
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from vmxaddr.case import Case, case_json
from vmxaddr.decode import DecodeError, parse_hex
from vmxaddr.errors import ModelError, UsageError, fail
from vmxaddr.exitinfo import EXIT_QUAL_POLICIES, IGNORED_SEGMENT_POLICIES, SI_DI_POLICIES, UNDEFINED_BITS_POLICIES, Policy
from vmxaddr.models.base import InvalidExitInfo
from vmxaddr.realcode.info import DEFAULT_CALL_TIMEOUT, ENV_CALL_TIMEOUT
from vmxaddr.state import CPL_RANGE, MODES, CpuState, StateError, check_int, read_state_file

EPILOG = """examples:
  vmxaddr explain --mode 32 --reg ebp=0x1000 0f7845d8
      VMREAD [EBP-0x28], EAX in 32-bit code: every step, with the SDM rule it applies
  vmxaddr explain --mode 64 --seg fs.base=0x100000000 '64 67 0f c7 30'
      VMPTRLD FS:[EAX] in 64-bit mode: a 32-bit address size, a 64-bit FS base
  vmxaddr decode --mode 16 --json '66 0f c7 76 f0'
      VMCLEAR [BP-0x10] in 16-bit code, as JSON
"""


class Parser(argparse.ArgumentParser):
    """argparse parser whose usage errors end with a pointer to --help and exit status 2."""
    def error(self, message: str) -> NoReturn:
        """Print one error line naming --help and exit with status 2 (argparse's own message otherwise)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- shared options --------------------------------------------------------------------------

def add_case_options(p: argparse.ArgumentParser, hex_arg: bool = True) -> None:
    """Add the options that describe one case (mode, state, registers, segments, policies, --json, the bytes) to `p`."""
    p.add_argument("--mode", choices=("16", "32", "64"),
                   help="code size of the guest code: 16 or 32 (protected mode) or 64 (64-bit mode)")
    p.add_argument("--state", metavar="FILE.json", help="CPU state as JSON (see docs/state-format.md); "
                   "the other options are applied on top of it")
    p.add_argument("--cpu-mode", choices=MODES, help="processor mode, for the #UD rules "
                   "(default: protected, or 64-bit with --mode 64)")
    p.add_argument("--cpl", metavar="0-3", help="current privilege level, 0…3 (default 0)")
    p.add_argument("--la57", action="store_true", help="CR4.LA57 = 1: 57-bit canonical addresses")
    p.add_argument("--rip", help="address of the instruction (for RIP-relative operands)")
    p.add_argument("--reg", action="append", default=[], metavar="NAME=VALUE",
                   help="set a register, e.g. --reg ebp=0x1000 (a 32/16-bit name sets the low bits)")
    p.add_argument("--seg", action="append", default=[], metavar="SEG.FIELD=VALUE",
                   help="set a segment field, e.g. --seg fs.base=0x100000000 --seg ss.limit=0xfff "
                   "(fields: base limit type s dpl p db g l unusable selector)")
    p.add_argument("--exit-qual", choices=EXIT_QUAL_POLICIES, default="zero-extend",
                   help="exit-qualification bits above the address size, which the SDM leaves undefined: "
                   "zero-extend (observed hardware, default), sign-extend, random-upper")
    p.add_argument("--undefined-bits", choices=UNDEFINED_BITS_POLICIES, default="zero",
                   help="undefined instruction-information bits: zero (default) or random")
    p.add_argument("--ignored-segment", choices=IGNORED_SEGMENT_POLICIES, default="default",
                   help="segment reported for a 64-bit-mode CS/DS/ES/SS override: default (as Bochs) or prefix")
    p.add_argument("--si-di", choices=SI_DI_POLICIES, default="base",
                   help="16-bit [SI]/[DI] reported as base (as Bochs, default) or index")
    p.add_argument("--seed", type=int, default=0, help="seed for the random policies")
    p.add_argument("--apx", action="store_true",
                   help="the processor enumerates APX, so it also writes the 64-bit extended instruction-information "
                   "field (VMCS 0x2406); implied by a REX2 (d5) prefix")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    if hex_arg:
        p.add_argument("hex", nargs="+", metavar="HEX", help="instruction bytes in hex; spaces allowed (e.g. 0f7845d8 or '0f 78 45 d8')")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0 (at most 86400)")
    return v


def add_call_timeout(p: argparse.ArgumentParser) -> None:
    """--call-timeout, for every command that runs a model (applied in main)."""
    p.add_argument("--call-timeout", type=_seconds, metavar="SECONDS",
                   help="time limit for one call of a compiled model (c:FILE.c:FUNCTION, c:LIB.so:FUNCTION, "
                   f"kvm-tree:PATH, kvm-linux-*, xen-*; default {DEFAULT_CALL_TIMEOUT:g}): such models run in a worker "
                   "process, and a call that takes longer, like a crash or an exit, is reported as what the model "
                   "did (\"model timed out\"), not waited for")


def policy_from(args: argparse.Namespace) -> Policy:
    """The encoder Policy the case options choose (exit qualification, undefined bits, segment, SI/DI, seed, APX)."""
    return Policy(args.exit_qual, args.undefined_bits, args.ignored_segment, args.si_di, args.seed,
                  getattr(args, "apx", False))


def state_from(args: argparse.Namespace) -> CpuState:
    """The CPU state the case options describe, every value checked by the validator in
    vmxaddr.state (ranges in docs/state-format.md); StateError becomes a one-line UsageError."""
    try:
        st = CpuState.for_code_size(int(args.mode)) if args.mode else None
        if args.state:
            st = CpuState.loads(read_state_file(args.state), st, what=f"state file {args.state}")
            if args.mode and st.code_size != int(args.mode):
                fail(f"--mode {args.mode} contradicts the state file, whose code is {st.code_size}-bit")
        if st is None:
            fail("give --mode 16, 32 or 64 (or a --state file)")
        if args.cpu_mode:
            st = CpuState.from_json({"mode": args.cpu_mode}, st)
            if args.mode and st.code_size != int(args.mode):
                # Refused, not reinterpreted: 64-bit code runs only in 64-bit mode, and
                # virtual-8086 mode runs only 16-bit code (SDM Vol. 3A §2.2 "Modes of Operation").
                fail(f"--mode {args.mode} contradicts --cpu-mode {args.cpu_mode}, which runs "
                     f"{_code_sizes(args.cpu_mode)} code")
        if args.cpl is not None:
            st = replace(st, cpl=check_int(args.cpl.strip(), "--cpl", *CPL_RANGE))
        if args.la57:
            st = CpuState.from_json({"cr4": {"la57": 1}}, st)
        if args.rip is not None:
            st = st.with_reg("rip", args.rip.strip(), "--rip")
        for item in args.reg:
            name, eq, value = item.partition("=")
            if not eq:
                fail(f"--reg {item!r}: expected NAME=VALUE, e.g. ebp=0x1000")
            st = st.with_reg(name.strip(), value.strip(), f"--reg {name.strip()}")
        for item in args.seg:
            lhs, eq, value = item.partition("=")
            seg, dot, fld = lhs.partition(".")
            if not eq or not dot:
                fail(f"--seg {item!r}: expected SEG.FIELD=VALUE, e.g. fs.base=0x100000000")
            st = st.with_segment(seg.strip().lower(), what=f"--seg {seg.strip().lower()}", **{fld.strip().lower(): value.strip()})
        if args.mode and st.code_size != int(args.mode):
            fail(f"--mode {args.mode} contradicts --seg cs.db, which makes the code {st.code_size}-bit")
    except StateError as e:
        fail(str(e))
    return st


def _code_sizes(cpu_mode: str) -> str:
    return {"64-bit": "64-bit", "virtual-8086": "16-bit", "compatibility": "16- or 32-bit",
            "protected": "16- or 32-bit", "real": "16- or 32-bit"}[cpu_mode]


def case_from(args: argparse.Namespace) -> Case:
    """The Case the command line describes: the state, the bytes decoded in its code size, the policy; UsageError otherwise."""
    st = state_from(args)
    try:
        raw = parse_hex(" ".join(args.hex))
    except ValueError as e:
        fail(str(e))
    try:
        return Case.from_bytes(raw, st, policy_from(args))
    except DecodeError as e:
        fail(f"cannot decode {raw.hex(' ')} as {st.code_size}-bit code: {e}")


def print_json(obj: Any) -> None:
    """Print `obj` as indented JSON on standard output (the --json form of the one-case commands)."""
    print(json.dumps(obj, indent=2))


def check_svg(args: argparse.Namespace) -> None:
    """--svg, before any work: a file name, or - for the picture alone on standard output."""
    if args.svg is None:
        return
    if not args.svg:
        fail("--svg '': give a file name, or - for the picture on standard output")
    if args.svg == "-" and args.json:
        fail("--svg - and --json both want standard output: give --svg a file name")


def write_svg(path: str, svg: object) -> None:
    """--svg FILE: write the picture (`-`: to stdout, instead of the text). A named pipe is
    written only if a reader has it open (never wait for one: the command would hang)."""
    if path == "-":
        sys.stdout.write(str(svg))
        return
    data = str(svg).encode()
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    fail(f"cannot write {path}: a named pipe with no reader (start the reader first)")
                raise
            os.set_blocking(fd, True)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
    except FileNotFoundError:
        pass
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror}")
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror}")


# -- commands --------------------------------------------------------------------------------

def cmd_decode(args: argparse.Namespace) -> int:
    """`vmxaddr decode`: the instruction, its bytes taken apart and the exit information a processor reports."""
    from vmxaddr.explain import describe_exit, describe_instruction
    from vmxaddr.models import sdm  # not the registry: decode needs the reference model only

    check_svg(args)
    case = case_from(args)
    exit = case.exit
    result = case.run(sdm, explain=True)
    from vmxaddr.bytemap import breakdown

    bm = breakdown(case.instruction)
    if args.svg:
        from vmxaddr.pictures import decode_picture

        write_svg(args.svg, decode_picture(case.instruction, exit, bm))
        if args.svg == "-":
            return 0
    if args.json:
        from vmxaddr.exitinfo import exit_fields_json

        print_json({**case_json(case, exit, result), **exit_fields_json(exit, case.instruction.code_size),
                    "bytes_breakdown": bm.to_json()})
    else:
        print("\n".join(describe_instruction(case) + [""] + bm.text() + [""]
                        + describe_exit(exit, code_size=case.instruction.code_size)))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """`vmxaddr explain`: every step a model takes from the exit information to the address or fault, with its SDM rule."""
    from vmxaddr.explain import explain_text
    from vmxaddr.models import UnknownModel, covers, get, not_covered

    check_svg(args)
    case = case_from(args)
    try:
        model = get(args.model)
    except UnknownModel as e:
        fail(str(e))
    if not covers(model, case.instruction.mnemonic):
        fail(not_covered(args.model, model, case.instruction.mnemonic))
    exit = case.exit
    try:
        result = case.run(model, explain=True)
    except InvalidExitInfo as e:
        fail(str(e))
    if args.svg:
        from vmxaddr.pictures import explain_picture

        write_svg(args.svg, explain_picture(case, exit, result, args.model))
        if args.svg == "-":
            return 0
    if args.json:
        from vmxaddr.exitinfo import exit_fields_json

        obj = {**case_json(case, exit, result), **exit_fields_json(exit, case.instruction.code_size)}
        obj["model"] = args.model
        print_json(obj)
    else:
        print(explain_text(case, exit, result, args.model))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """`vmxaddr models`: the registered encoders and consumers, and which run compiled."""
    from vmxaddr.models import NATIVE, REGISTRY

    if args.json:
        print_json({"models": [{"name": m.name, "kind": m.kind, "summary": m.summary}
                               | ({"real_code": m.real_code} if m.real_code else {}) for m in REGISTRY.values()],
                    "compiled": list(NATIVE)})
        return 0
    width = max(len(n) for n in REGISTRY)
    for kind in ("encoder", "consumer", "alias"):
        ms = [m for m in REGISTRY.values() if m.kind == kind]
        if ms:
            print("aliases (old names):" if kind == "alias" else f"{kind}s:")
            for m in ms:
                print(f"  {m.name:<{width}}  {m.summary}")
    print(f"compiled (setup.py, mypyc): {', '.join(NATIVE)}" if NATIVE else
          "all models run as pure Python (no native build: see setup.py)")
    if not any(m.real_code for m in REGISTRY.values()):
        print("real code: none cached (`vmxaddr sources fetch linux-6.1` adds kvm-linux-6.1; "
              "also c:FILE.c:FUNCTION and kvm-tree:PATH)")
    return 0


def register_core(sub: Any) -> None:
    """Register `decode`, `explain` and `models`, the commands this module runs itself."""
    p = sub.add_parser("decode", help="decode one instruction and show its VM-exit information",
                       description="Decode one VMX-family instruction and show the exit qualification and "
                       "instruction-information field a processor reports for it.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_options(p)
    p.add_argument("--svg", metavar="FILE", help="also draw the bytes taken apart (prefixes, REX/REX2, opcode, "
                   "ModRM, SIB, displacement, and where each field goes) and the instruction-information field, "
                   "values filled in, as an SVG picture into FILE (- : the picture alone to stdout, instead of the "
                   "text; not with --json; a named pipe only when its reader is already there)")
    p.set_defaults(func=cmd_decode)
    p = sub.add_parser("explain", help="every step from bytes to linear address or fault, with the SDM rules",
                       description="Decode one instruction, encode its VM-exit information as a processor "
                       "would, then compute the effective address, linear address and fault the way a "
                       "model (default: the SDM reference) does, step by step.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_options(p)
    p.add_argument("--model", default="sdm", help="model to run (default sdm; `vmxaddr models` lists them, "
                   "or module.path:function)")
    add_call_timeout(p)
    p.add_argument("--svg", metavar="FILE", help="also draw the field and the computation as a flow (bytes -> "
                   "fields -> displacement -> EA -> segment -> linear -> checks -> outcome) into FILE, an SVG "
                   "picture (- : the picture alone to stdout, instead of the text; not with --json; a named pipe only "
                   "when its reader is already there)")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("models", help="list the models", description="List every registered model: the encoders "
                       "(what writes the exit information) and the consumers (what rebuilds the address), and which "
                       "run compiled.")
    p.add_argument("--json", action="store_true", help="print one JSON object: {\"models\": [{name, kind, summary}, …], "
                   "\"compiled\": [module, …]}")
    p.set_defaults(func=cmd_models)


# The one place where subcommands register: name -> (module whose `register(sub)` adds it, one-line
# help). Only the module of the command being run is imported, so `vmxaddr decode` does not pay
# for the fuzzer, the trace checker or the oracles; the help lines let `vmxaddr --help` list every
# command without importing any (tests/test_cli.py holds them equal to the modules' own).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("vmxaddr.cli", "decode one instruction and show its VM-exit information"),
    "explain": ("vmxaddr.cli", "every step from bytes to linear address or fault, with the SDM rules"),
    "models": ("vmxaddr.cli", "list the models"),
    "diff": ("vmxaddr.diffcli", "run several models on one case, side by side, first difference marked"),
    "cross": ("vmxaddr.crosscli", "one case through an encoder and a consumer, against the SDM"),
    "fuzz": ("vmxaddr.fuzz.cli", "find, minimise and classify where two models disagree"),
    "crosscheck": ("vmxaddr.oracles.crosscheck",
                   "check the decoder and address computation against iced-x86, LLVM, unicorn or Bochs"),
    "scan": ("vmxaddr.scancli", "find VMX-family instructions in ELF files"),
    "check-trace": ("vmxaddr.trace.commands",
                    "check a trace of VM exits: processor report, hypervisor answer, fingerprint"),
    "trace": ("vmxaddr.trace.commands", "make traces: import a kvm_exit log, or synthesise one from a model"),
    "sources": ("vmxaddr.realcode.cli", "fetch hypervisor sources from Debian's archive; list the cache"),
    "prove": ("vmxaddr.prove.cli",
              "every divergence class between two models, exactly, with a proof there is no other"),
    "live": ("vmxaddr.live.cli", "Debian's real KVM, nested under Bochs 2.7: build, save, run cases"),
}


def _register_function(module: str) -> Callable[[Any], None]:
    if module == __name__ or module == "vmxaddr.cli":
        return register_core
    mod = importlib.import_module(module)
    return mod.register  # type: ignore[no-any-return]


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand argv names: its first word that is not an option (the top level has no
    option taking a value)."""
    for a in argv:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with argv, only the module of the command it names is imported (the others
    appear by name and help line, so listing and "invalid choice" errors stay the same)."""
    parser = Parser(prog="vmxaddr", description="How the memory operand of a VMX instruction is reported on a "
                    "VM exit and turned into an effective address, a linear address or a fault — by the "
                    "Intel SDM, and by hypervisors that got it wrong.", epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback "
                        "(e.g. of a --model package.module:function that raised); may be given anywhere")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    word = _command_word(argv) if argv is not None else None
    wanted = [SUBCOMMANDS[word][0]] if word in SUBCOMMANDS else (
        [] if argv is not None else list(dict.fromkeys(m for m, _ in SUBCOMMANDS.values())))
    for module in wanted:
        _register_function(module)(sub)
    for name, (_, help_line) in SUBCOMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_line, add_help=False)
    # keep `vmxaddr --help` in the table's order whichever module registered first
    order = {n: i for i, n in enumerate(SUBCOMMANDS)}
    sub._choices_actions.sort(key=lambda a: order.get(a.dest, len(order)))
    return parser


def no_command(parser: argparse.ArgumentParser) -> int:
    """`vmxaddr` or `vmxaddr trace` without a subcommand: one error line naming the commands, exit 2."""
    names = [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]
    sys.stderr.write(f"{parser.prog}: error: give a command: {', '.join(names)} (see {parser.prog} --help)\n")
    return 2


# Characters the text output uses, for a terminal or pipe whose encoding lacks them
# (PYTHONIOENCODING=ascii, LANG=C on an old system): a readable ASCII stand-in, else \uXXXX.
_ASCII = {"—": "--", "–": "-", "…": "...", "×": "x", "≤": "<=", "≥": ">=", "≠": "!=", "→": "->", "←": "<-",
          "‘": "'", "’": "'", "“": '"', "”": '"', "·": ".", "§": "S", "²": "^2", "−": "-"}


def _stand_in(err: UnicodeError) -> tuple[str, int]:
    assert isinstance(err, UnicodeEncodeError)
    chunk = err.object[err.start:err.end]
    return "".join(_ASCII.get(c, c.encode("ascii", "backslashreplace").decode()) for c in chunk), err.end


codecs.register_error("vmxaddr-ascii", _stand_in)


def _robust_streams() -> None:
    """Text that the output encoding cannot hold is replaced, never a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors in ("strict", "backslashreplace"):
            try:
                stream.reconfigure(errors="vmxaddr-ascii")
            except (ValueError, OSError):  # pragma: no cover - a detached or closed stream
                pass


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EPIPE}


def _silence_stdout() -> None:
    """After a failed write, point stdout at /dev/null so the interpreter's final flush of what
    is still buffered does not fail a second time (and print a traceback at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (a test's capture)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit statuses are listed in docs/state-format.md."""
    top = argv is None  # the program itself (not a test calling main): may end at once after ^C
    before = os.environ.get(ENV_CALL_TIMEOUT)  # --call-timeout is for this command only
    try:
        code = _run(argv)
    finally:
        if os.environ.get(ENV_CALL_TIMEOUT) != before:
            if before is None:
                os.environ.pop(ENV_CALL_TIMEOUT, None)
            else:
                os.environ[ENV_CALL_TIMEOUT] = before
    if code == 130 and top:
        _end_now(code)
    return code


def _end_now(code: int) -> None:
    """After ^C, with the results written: end without the interpreter's teardown, which takes a
    second or more on a loaded machine (hypothesis, which fuzz imports, and the memos). The
    compiled models' worker processes end with us (their lifeline, vmxaddr.realcode.worker)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut]
    if debug:
        argv = [a for i, a in enumerate(argv) if a != "--debug" or i >= cut]
    _robust_streams()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        return no_command(parser)
    name = f"vmxaddr {args.command}"
    if getattr(args, "call_timeout", None) is not None:
        from vmxaddr.realcode.worker import set_call_timeout

        set_call_timeout(args.call_timeout)  # (in the environment: fuzz --jobs workers inherit it)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a full disk must be reported here, not at interpreter exit
        return code
    except UsageError as e:
        cause = e.__context__.__cause__ if e.__context__ is not None else None
        if debug and cause is not None:  # e.g. what a --model module raised on import
            traceback.print_exception(cause)
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except ModelError as e:
        if debug and e.details:
            sys.stderr.write(e.details)
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as e:
        if e.errno not in _WRITE_ERRORS or e.filename is not None:
            raise
        _silence_stdout()
        if debug:
            traceback.print_exc()
        print(f"{name}: error: cannot write the output: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m vmxaddr.cli`: run the imported module's main, whose UsageError is the one the
    # subcommands raise (this file, run as __main__, has a class of its own by that name).
    from vmxaddr.cli import main as _main

    sys.exit(_main())
