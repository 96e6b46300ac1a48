"""What the page of one instruction says, computed from vmxaddr's own tables and models at site
build time (docs/tools/instruction_pages.py renders it). Nothing here is written per instruction
except its encoding forms (ENCODINGS), and those are decoded by vmxaddr's decoder on every build:
an encoding the decoder does not read as that instruction fails the build.

* encodings: opcode, prefixes, operand forms; APX (REX2) allowed when the decoder accepts a
  REX2-prefixed form in 64-bit mode (legacy maps 0 and 1 only).
* faults in each processor mode and at each CPL: the SDM model (vmxaddr.models.sdm, through
  vmxaddr.web.answer, the Try page's own entry point) on the instruction's plain form.
* three worked examples: `vmxaddr explain` command lines run in-process, with Try links.
* KVM's history and the peers: every registered KVM/Xen consumer model, and the Bochs and
  VirtualBox encoders, run on the same examples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vmxaddr.isa import SPECS, InstrSpec

# mnemonic -> [(opcode as the SDM writes it, operand form, the bytes of a plain form)]. In the
# bytes, "M" is a memory ModRM for [EBX + 0x10] / [RBX + 0x10] (mod 01, rm 011, disp8 0x10),
# "R" a register ModRM (mod 11, rm 000): each with the /digit or /r register in ModRM.reg.
ENCODINGS: dict[str, list[tuple[str, str, str]]] = {
    "vmclear": [("66 0F C7 /6", "VMCLEAR m64", "66 0f c7 M6")],
    "vmptrld": [("NP 0F C7 /6", "VMPTRLD m64", "0f c7 M6")],
    "vmptrst": [("NP 0F C7 /7", "VMPTRST m64", "0f c7 M7")],
    "vmxon": [("F3 0F C7 /6", "VMXON m64", "f3 0f c7 M6")],
    "vmread": [("NP 0F 78 /r", "VMREAD r/m32, r32 (outside 64-bit mode); VMREAD r/m64, r64 (64-bit mode)", "0f 78 M0"),
               ("NP 0F 78 /r", "VMREAD with a register destination (mod = 11)", "0f 78 R0")],
    "vmwrite": [("NP 0F 79 /r", "VMWRITE r32, r/m32 (outside 64-bit mode); VMWRITE r64, r/m64 (64-bit mode)",
                 "0f 79 M0"),
                ("NP 0F 79 /r", "VMWRITE with a register source (mod = 11)", "0f 79 R0")],
    "invept": [("66 0F 38 80 /r", "INVEPT r32, m128 (outside 64-bit mode); INVEPT r64, m128 (64-bit mode)",
                "66 0f 38 80 M0")],
    "invvpid": [("66 0F 38 81 /r", "INVVPID r32, m128; INVVPID r64, m128 (64-bit mode)", "66 0f 38 81 M0")],
    "invpcid": [("66 0F 38 82 /r", "INVPCID r32, m128; INVPCID r64, m128 (64-bit mode)", "66 0f 38 82 M0")],
    "sgdt": [("0F 01 /0", "SGDT m", "0f 01 M0")],
    "sidt": [("0F 01 /1", "SIDT m", "0f 01 M1")],
    "lgdt": [("0F 01 /2", "LGDT m16&32; LGDT m16&64 (64-bit mode)", "0f 01 M2")],
    "lidt": [("0F 01 /3", "LIDT m16&32; LIDT m16&64 (64-bit mode)", "0f 01 M3")],
    "sldt": [("0F 00 /0", "SLDT r/m16", "0f 00 M0"), ("0F 00 /0", "SLDT r16/r32/r64 (mod = 11)", "0f 00 R0")],
    "str": [("0F 00 /1", "STR r/m16", "0f 00 M1"), ("0F 00 /1", "STR r16/r32/r64 (mod = 11)", "0f 00 R1")],
    "lldt": [("0F 00 /2", "LLDT r/m16", "0f 00 M2"), ("0F 00 /2", "LLDT r16 (mod = 11)", "0f 00 R2")],
    "ltr": [("0F 00 /3", "LTR r/m16", "0f 00 M3"), ("0F 00 /3", "LTR r16 (mod = 11)", "0f 00 R3")],
    "xsaves": [("NP 0F C7 /5", "XSAVES mem", "0f c7 M5")],
    "xrstors": [("NP 0F C7 /3", "XRSTORS mem", "0f c7 M3")],
    "rdrand": [("NP 0F C7 /6", "RDRAND r16/r32/r64 (mod = 11)", "0f c7 R6")],
    "rdseed": [("NP 0F C7 /7", "RDSEED r16/r32/r64 (mod = 11)", "0f c7 R7")],
    "ins": [("6C", "INS m8, DX (INSB)", "6c"), ("6D", "INS m16/m32, DX (INSW/INSD by operand size)", "6d")],
    "outs": [("6E", "OUTS DX, m8 (OUTSB)", "6e"), ("6F", "OUTS DX, m16/m32 (OUTSW/OUTSD)", "6f")],
    "umwait": [("F2 0F AE /6", "UMWAIT r32 (mod = 11)", "f2 0f ae R6")],
    "tpause": [("66 0F AE /6", "TPAUSE r32 (mod = 11)", "66 0f ae R6")],
    "loadiwkey": [("F3 0F 38 DC /r", "LOADIWKEY xmm1, xmm2 (mod = 11; implicit EAX)", "f3 0f 38 dc R0")],
    "rdmsr": [("VEX.128.F2.M7.W0 F6 /0 id", "RDMSR r64, imm32 (64-bit mode only)", "c4 e7 7b f6 R0 78 56 34 12")],
    "wrmsrns": [("VEX.128.F3.M7.W0 F6 /0 id", "WRMSRNS imm32, r64 (64-bit mode only)", "c4 e7 7a f6 R0 78 56 34 12")],
}

# (processor mode, code size, the CPLs it can run at): the rows of the fault table.
MODES: list[tuple[str, int, tuple[int, ...]]] = [
    ("real", 16, (0,)), ("virtual-8086", 16, (3,)), ("protected", 32, (0, 1, 2, 3)),
    ("compatibility", 32, (0, 3)), ("64-bit", 64, (0, 3))]


def plain_bytes(mnemonic: str, form: int = 0, disp: int = 0x10) -> str:
    """The hex bytes of an encoding form, the memory operand [rBX + disp8] (32-/64-bit code)."""
    text = ENCODINGS[mnemonic][form][2]
    out = []
    for tok in text.split():
        if tok[0] == "M":  # mod 01, reg, rm 011 (EBX/RBX), disp8
            out += [f"{0x43 | int(tok[1]) << 3:02x}", f"{disp & 0xFF:02x}"]
        elif tok[0] == "R":  # mod 11, reg, rm 000
            out.append(f"{0xC0 | int(tok[1]) << 3:02x}")
        else:
            out.append(tok)
    return "".join(out)


def plain_bytes_16(mnemonic: str, form: int = 0) -> str:
    """The same form for 16-bit code, its memory operand [BX] (mod 00, rm 111)."""
    text = ENCODINGS[mnemonic][form][2]
    out = []
    for tok in text.split():
        if tok[0] == "M":
            out.append(f"{0x07 | int(tok[1]) << 3:02x}")
        elif tok[0] == "R":
            out.append(f"{0xC0 | int(tok[1]) << 3:02x}")
        else:
            out.append(tok)
    return "".join(out)


def ask(**form: str) -> dict[str, Any]:
    """The Try page's answer (vmxaddr.web.answer) for one case: the SDM model unless model= says."""
    from vmxaddr.web import answer

    return dict(json.loads(answer(json.dumps({"cpl": "0", "model": "sdm", "exit_qual": "zero-extend", **form}))))


def quick(text: bool = False, **form: str) -> dict[str, Any]:
    """ask() without the pictures (most of its cost): the outcome and addresses only, for the
    fault tables and the model comparisons. The case goes through the same command-line parsing
    (vmxaddr.web.argv_of, vmxaddr.cli.case_from); a refused case is asked in full for its error."""
    import contextlib
    import io

    from vmxaddr.cli import Parser, UsageError, add_case_options, case_from
    from vmxaddr.models import UnknownModel, get
    from vmxaddr.models.base import InvalidExitInfo
    from vmxaddr.web import argv_of

    full = {"cpl": "0", "model": "sdm", "exit_qual": "zero-extend", **form}
    parser = Parser(prog="vmxaddr explain")
    add_case_options(parser)
    parser.add_argument("--model", default="sdm")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = parser.parse_args(argv_of(full))
        case = case_from(args)
        result = case.run(get(args.model), explain=text)
    except (SystemExit, UsageError, UnknownModel, InvalidExitInfo):
        return ask(**form)
    o = result.outcome
    out = {"ok": True, "outcome": {"kind": o.kind, "verdict": {"ok": "no fault"}.get(o.kind, o.short()), "rule": o.rule},
           "effective_address": None if result.effective_address is None else f"{result.effective_address:#x}",
           "linear_address": None if result.linear_address is None else f"{result.linear_address:#x}",
           "instruction_info": f"{case.exit.instruction_info:#010x}",
           "exit_qualification": f"{case.exit.exit_qualification:#x}"}
    if text:  # what `vmxaddr explain` prints (vmxaddr.web.answer's "text")
        from vmxaddr.explain import explain_text

        out["text"] = explain_text(case, case.exit, result, args.model)
    return out


def check_encodings(mnemonic: str) -> list[str]:
    """Problems: an encoding form the decoder does not read as `mnemonic` (build-time drift check)."""
    from vmxaddr.decode import DecodeError, decode

    problems = []
    sizes = (64,) if SPECS[mnemonic].real_mode is False and SPECS[mnemonic].v8086 is False and \
        mnemonic in ("rdmsr", "wrmsrns") else (32, 64)
    for i in range(len(ENCODINGS[mnemonic])):
        for size in sizes:
            try:
                got = decode(bytes.fromhex(plain_bytes(mnemonic, i)), size).mnemonic
            except DecodeError as e:
                got = f"refused ({e})"
            if got != mnemonic:
                problems.append(f"{mnemonic}: encoding {ENCODINGS[mnemonic][i][0]} in {size}-bit code decodes as {got}")
    return problems


def apx_allowed(mnemonic: str) -> bool:
    """Whether vmxaddr's decoder accepts the plain form with a REX2 prefix (d5 xx) in 64-bit mode:
    REX2 reaches legacy maps 0 and 1 only (APX spec; vmxaddr.rex2)."""
    from vmxaddr.decode import DecodeError, decode

    raw = bytes.fromhex(plain_bytes(mnemonic))
    if raw[0] in (0x66, 0xF2, 0xF3):
        pfx, rest = raw[:1], raw[1:]
    else:
        pfx, rest = b"", raw
    if rest[:1] == b"\x0f":
        if rest[1:2] == b"\x38":
            return False  # map 2: no REX2
        candidate = pfx + bytes([0xD5, 0x80]) + rest[1:]  # M0 = 1: map 1, the 0F not written
    else:
        candidate = pfx + bytes([0xD5, 0x00]) + rest
    try:
        return decode(candidate, 64).mnemonic == mnemonic
    except DecodeError:
        return False


@dataclass
class Example:
    title: str
    argv: list[str]
    answer: dict[str, Any] = field(default_factory=dict)


def examples(mnemonic: str) -> list[Example]:
    """Three cases for the page: the instruction's plain form where it runs without fault, a
    64-bit case, and a fault (a limit, a mode or a CPL)."""
    spec = SPECS[mnemonic]
    out: list[Example] = []
    if spec.layout.value == "io":
        reg = "edi" if mnemonic == "ins" else "esi"
        seg = "es" if mnemonic == "ins" else "ds"
        byte = ENCODINGS[mnemonic][1][2]
        out += [
            Example(f"{mnemonic.upper()} in 32-bit code, {reg.upper()} = 0x1000",
                    ["explain", "--mode", "32", "--reg", f"{reg}=0x1000", byte]),
            Example(f"{mnemonic.upper()} in 64-bit code, R{reg[1:].upper()} = 0x7fff0000",
                    ["explain", "--mode", "64", "--reg", f"r{reg[1:]}=0x7fff0000", byte]),
            Example(f"{mnemonic.upper()} past the {seg.upper()} limit (limit 0xfff, {reg.upper()} = 0xffe, 4 bytes)",
                    ["explain", "--mode", "32", "--seg", f"{seg}.limit=0xfff", "--reg", f"{reg}=0xffe", byte]),
        ]
    elif spec.memory == "none":
        mode = "64" if mnemonic in ("rdmsr", "wrmsrns") else "32"
        raw = plain_bytes(mnemonic)
        out.append(Example(f"{mnemonic.upper()} with a register operand in {mode}-bit code", ["explain", "--mode", mode, raw]))
        if mode == "32":
            out.append(Example(f"{mnemonic.upper()} in 64-bit code", ["explain", "--mode", "64", raw]))
            out.append(Example(f"{mnemonic.upper()} in real-address mode",
                               ["explain", "--mode", "16", "--cpu-mode", "real", plain_bytes_16(mnemonic)]))
        else:
            out.append(Example(f"{mnemonic.upper()} at CPL 3", ["explain", "--mode", "64", "--cpl", "3", raw]))
            other = raw[:8] + "c1" + raw[10:]  # ModRM rm = 001: RCX
            out.append(Example(f"{mnemonic.upper()} with RCX, MSR index 0x12345678",
                               ["explain", "--mode", "64", other]))
    else:
        # [BX] one byte short of room: the access's last byte is 0x1000, one past the DS limit
        # 0xfff (an aligned start for XSAVES/XRSTORS, whose alignment is checked too).
        bx = (0x1000 - spec.size + spec.align) & -spec.align  # the lowest aligned start past the room
        out += [
            Example(f"{mnemonic.upper()} [EBX + 0x40] in 32-bit code, EBX = 0x1000",
                    ["explain", "--mode", "32", "--reg", "ebx=0x1000", plain_bytes(mnemonic, disp=0x40)]),
            Example(f"{mnemonic.upper()} [RBX + 0x40] in 64-bit code, RBX = 0x7fffffff0000",
                    ["explain", "--mode", "64", "--reg", "rbx=0x7fffffff0000", plain_bytes(mnemonic, disp=0x40)]),
            Example(f"{mnemonic.upper()} [BX] in 16-bit protected-mode code, DS limit 0xfff, BX = {bx:#x} "
                    f"({spec.size} bytes: the last at {bx + spec.size - 1:#x})",
                    ["explain", "--mode", "16", "--seg", "ds.limit=0xfff", "--reg", f"bx={bx:#x}", plain_bytes_16(mnemonic)]),
        ]
    for i, ex in enumerate(out):  # the first in full (its field picture is shown); the others without pictures
        ex.answer = ask(**form_of(ex.argv)) if i == 0 else quick(text=True, **form_of(ex.argv))
    return out


def form_of(argv: list[str]) -> dict[str, str]:
    """The Try page's form for an `explain` command line (the options examples() uses)."""
    keys = {"--mode": "mode", "--reg": "registers", "--seg": "segments", "--cpl": "cpl", "--cpu-mode": "cpu_mode",
            "--model": "model"}
    form: dict[str, list[str]] = {}
    i = 1
    while i < len(argv) - 1:
        form.setdefault(keys[argv[i]], []).append(argv[i + 1])
        i += 2
    return {**{k: "\n".join(v) for k, v in form.items()}, "bytes": argv[-1]}


def fault_table(mnemonic: str) -> list[tuple[str, int, dict[str, Any]]]:
    """(processor mode, CPL, the SDM model's outcome) for the plain form in every mode."""
    rows = []
    for mode, size, cpls in MODES:
        if mnemonic in ("rdmsr", "wrmsrns") and size != 64:
            raw = plain_bytes(mnemonic)  # VEX: C4 is LES outside 64-bit mode; decoded as 64-bit code
            form_mode = "64"
        else:
            raw = plain_bytes_16(mnemonic) if size == 16 else plain_bytes(mnemonic)
            form_mode = str(size)
        for cpl in cpls:
            a = quick(bytes=raw, mode=form_mode, cpu_mode=mode, cpl=str(cpl), registers="ebx=0x1000" if size != 16 else "")
            rows.append((mode, cpl, a))
    return rows


def before_exit(spec: InstrSpec, rule: str) -> str:
    """Whether a fault of `rule` comes before the VM exit (the processor raises it) or after it
    (the hypervisor must): SDM Vol. 3C 'Relative Priority of Faults and VM Exits'."""
    if rule == "mode":
        return "before the VM exit (no exit)"
    if rule == "cpl":
        return "after the VM exit: the hypervisor raises it" if spec.vmx else "before the VM exit (no exit)"
    return "after the VM exit: the hypervisor raises it"


def consumers_on(mnemonic: str, exs: list[Example], prefix: str) -> list[tuple[str, str, list[str]]]:
    """(model, summary, verdict per example) for every registered consumer model whose name
    starts with `prefix` and that covers the instruction (pure models only: the real-code ones
    need a compiler and Debian's sources, docs/real-code.md)."""
    from vmxaddr.models import REGISTRY, covers

    rows = []
    for info in REGISTRY.values():
        if info.kind != "consumer" or not info.name.startswith(prefix) or "real code" in info.summary:
            continue
        if not covers(info.function, mnemonic):
            continue
        cells = []
        for ex in exs:
            a = quick(**{**form_of(ex.argv), "model": info.name})
            cells.append(verdict(a))
        rows.append((info.name, info.summary, cells))
    return rows


def verdict(a: dict[str, Any]) -> str:
    if not a.get("ok"):
        return "refused: " + str(a.get("error", ""))
    o = a["outcome"]
    la = a.get("linear_address")
    return f"{o['verdict']}" + (f" (linear {la})" if la and o["kind"] == "ok" else "")


def encoders_on(exs: list[Example]) -> list[tuple[str, str, list[str]]]:
    """(encoder, summary, per example: its instruction information where it differs from the
    SDM encoder's in the bits the SDM defines for the case, or "same")."""
    from vmxaddr.decode import decode, parse_hex
    from vmxaddr.encoders import ENCODERS, EncoderScope, get_encoder
    from vmxaddr.exitinfo import defined_mask

    rows = []
    for name, info in ENCODERS.items():
        if name == "sdm":
            continue
        cells = []
        for ex in exs:
            mode = int(ex.argv[ex.argv.index("--mode") + 1])
            instr = decode(parse_hex(ex.argv[-1]), mode)
            try:
                got = get_encoder(name)(instr)
            except EncoderScope as e:
                cells.append(f"not modelled ({e})")
                continue
            ref = get_encoder("sdm")(instr)
            mask = defined_mask(instr)
            diff = (got.instruction_info ^ ref.instruction_info) & mask
            cells.append("same" if not diff else f"{got.instruction_info:#010x} (differs in bits {_bits(diff)})")
        rows.append((name, info.summary, cells))
    return rows


def _bits(mask: int) -> str:
    return ", ".join(str(b) for b in range(32) if mask >> b & 1)
