"""Decoder oracle: iced-x86 (https://github.com/icedland/iced) reads the same bytes in the same
code size; we compare validity, mnemonic, length and every part of the memory operand.

iced-x86's view is mapped onto ours before comparing:
  * mnemonic: iced's Mnemonic enum, lower-cased; XSAVES64/XRSTORS64 (REX.W) are XSAVES/XRSTORS.
  * segment: iced reports the default segment, and in 64-bit mode the *prefix's* segment for an
    ignored CS/DS/ES/SS override. That is our `Policy(ignored_segment="prefix")` reading of the
    segment field (`exitinfo.reported_segment`): a difference explained by that policy.
  * displacement: iced gives the displacement zero-extended from the address size, and for a
    RIP-relative operand the target (next RIP + displacement); that is exactly our exit
    qualification under the "zero-extend" policy, so that is what is compared. The
    displacement's position and width in the bytes come from iced's constant offsets.
  * access size: iced's MemorySize (UInt64, UInt128, Fword6/Fword10, UInt16/32/64) in bytes;
    XSAVES/XRSTORS have iced's size 0 ("Xsave": variable), not comparable with our 576-byte
    minimum — skipped.
  * scale: compared only with an index register (the SDM leaves scaling undefined without one).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from functools import cache
from typing import Any

from vmxaddr.decode import DecodeError, Instruction, decode
from vmxaddr.exitinfo import Policy, exit_qualification, reported_segment
from vmxaddr.isa import SPECS, reg_number
from vmxaddr.oracles import CaseReport, Disagreement, Summary
from vmxaddr.oracles.case_stream import encodings
from vmxaddr.progress import Progress

IP = 0x7FFF_FFFF_F000  # where iced is told the instruction sits (RIP-relative targets)
PREFIX_POLICY = Policy(exit_qual="zero-extend", ignored_segment="prefix")

# Differences that are explained (and documented in docs/oracles.md / known-decoder-issues.md).
EXPLAINED_SEGMENT = "ignored-segment-prefix: iced reports the ignored 64-bit CS/DS/ES/SS override (policy ignored_segment=prefix)"


@cache
def _iced() -> Any:
    import iced_x86

    return iced_x86


@cache
def _enum_names(enum_name: str) -> dict[int, str]:
    mod = getattr(_iced(), enum_name)
    return {getattr(mod, k): k for k in dir(mod) if k.isupper() and isinstance(getattr(mod, k), int)}


@cache
def _factory() -> Any:
    return _iced().InstructionInfoFactory()


# iced-x86 1.21 has no MSR_IMM: its "rdmsr"/"wrmsrns" are the forms without an immediate (0F 32,
# 0F 01 C6), which exit without instruction information — not the family's immediate forms.
FAMILY = frozenset(SPECS) - {"rdmsr", "wrmsrns"}
_MNEMONIC_ALIASES = {"xsaves64": "xsaves", "xrstors64": "xrstors"}
_ASZ = {1: 16, 2: 32, 3: 64}  # iced CodeSize


def iced_view(raw: bytes, code_size: int, ip: int = IP) -> dict[str, Any]:
    """What iced-x86 makes of the bytes, in our vocabulary."""
    I = _iced()  # noqa: N806
    dec = I.Decoder(code_size, raw, ip=ip)
    ins = dec.decode()
    regs = _enum_names("Register")
    mnem = _enum_names("Mnemonic").get(ins.mnemonic, "?").lower()
    mnem = _MNEMONIC_ALIASES.get(mnem, mnem)
    view: dict[str, Any] = {"valid": ins.code != I.Code.INVALID, "mnemonic": mnem, "length": ins.len,
                            "code": _enum_names("Code").get(ins.code, "?"), "memory": None, "registers": []}
    if not view["valid"]:
        return view
    info = _factory().info(ins)
    for i in range(ins.op_count):
        if ins.op_kind(i) == I.OpKind.REGISTER:
            view["registers"].append(regs[ins.op_register(i)].lower())
    used = info.used_memory()
    if ins.op_count and any(ins.op_kind(i) == I.OpKind.MEMORY for i in range(ins.op_count)):
        um = used[0] if used else None
        offs = dec.get_constant_offsets(ins)
        base = regs[ins.memory_base].lower() if ins.memory_base != I.Register.NONE else None
        index = regs[ins.memory_index].lower() if ins.memory_index != I.Register.NONE else None
        view["memory"] = {
            "segment": regs[ins.memory_segment].lower(),
            "base": base,
            "index": index,
            "scale": ins.memory_index_scale,
            "displacement": ins.memory_displacement,
            "disp_offset": offs.displacement_offset if offs.has_displacement else None,
            "disp_size": offs.displacement_size if offs.has_displacement else 0,
            "address_size": _ASZ.get(um.address_size) if um is not None else None,
            "access_size": I.MemorySizeExt.size(ins.memory_size),
            "memory_size": _enum_names("MemorySize").get(ins.memory_size, "?"),
            "access": {I.OpAccess.READ: "read", I.OpAccess.WRITE: "write"}.get(um.access, "other") if um else None,
        }
    return view


def _decode(raw: bytes, code_size: int) -> Instruction | DecodeError:
    try:
        return decode(raw, code_size)
    except DecodeError as e:
        return e


def compare(raw: bytes, code_size: int, ip: int = IP) -> list[Disagreement]:
    """Every field where our decoder and iced-x86 differ for these bytes (empty: agreement)."""
    ours = _decode(raw, code_size)
    theirs = iced_view(raw, code_size, ip)
    t_ours = not isinstance(ours, DecodeError)
    t_theirs = theirs["valid"] and theirs["mnemonic"] in FAMILY
    if isinstance(ours, DecodeError) and ours.kind == "decoder-disagreement":
        return [Disagreement("capstone", str(ours), "capstone and our decoder disagree")]
    if t_ours != t_theirs:
        what_ours = ours.mnemonic if isinstance(ours, Instruction) else f"invalid ({ours.kind}: {ours})"
        what_theirs = theirs["mnemonic"] if theirs["valid"] else "invalid"
        return [Disagreement("validity", what_ours, what_theirs, _explain_validity(raw, code_size, ours, theirs))]
    if not t_ours:
        return []
    assert isinstance(ours, Instruction)
    out: list[Disagreement] = []

    def check(name: str, a: Any, b: Any, why: str | None = None) -> None:
        if a != b:
            out.append(Disagreement(name, a, b, why))

    check("mnemonic", ours.mnemonic, theirs["mnemonic"])
    check("length", ours.length, theirs["length"])
    op, tm = ours.operand, theirs["memory"]
    if (op is None) != (tm is None):
        check("operand", "memory" if op else "register", "memory" if tm else "register")
        return out
    if op is None:
        # register form: the r/m register (reg1), compared by number
        if ours.reg1 is not None and theirs["registers"]:
            want = _reg_of(theirs, ours, "reg1")
            check("reg1", ours.reg1, want)
    else:
        assert tm is not None
        if op.segment != tm["segment"]:
            why = EXPLAINED_SEGMENT if reported_segment(ours, PREFIX_POLICY) == tm["segment"] else None
            check("segment", op.segment, tm["segment"], why)
        check("base", op.base_name, tm["base"])
        check("index", op.index_name, tm["index"])
        if op.index is not None:
            check("scale", op.scale, tm["scale"])
        check("displacement", exit_qualification(ours, ip, PREFIX_POLICY), tm["displacement"])
        check("disp_size", op.disp_size, tm["disp_size"])
        if op.disp_size:
            check("disp_offset", op.disp_offset, tm["disp_offset"])
        check("address_size", op.address_size, tm["address_size"])
        if tm["access_size"]:  # 0: iced's variable-sized XSAVE area (XSAVES/XRSTORS)
            check("access_size", op.access_size, tm["access_size"])
        check("access", op.access, tm["access"])
    if ours.reg2 is not None:
        check("reg2", ours.reg2, _reg_of(theirs, ours, "reg2"))
    iced_opsize = _iced_operand_size(theirs["code"])
    if iced_opsize != "n/a":
        check("operand_size", ours.operand_size, iced_opsize)
    return out


def _reg_of(theirs: dict[str, Any], ours: Instruction, which: str) -> int | None:
    """iced's register operand, as our register number: the r/m register of a register form
    (reg1) or the ModRM.reg register (reg2). iced lists operands in Intel order: VMREAD r/m, reg;
    VMWRITE reg, r/m; INVEPT & co. reg, m; SLDT & co. and RDRAND one register."""
    regs = theirs["registers"]
    if not regs:
        return None
    m = ours.mnemonic
    if which == "reg2":
        name = regs[-1] if m == "vmread" else regs[0]
    else:
        name = regs[0] if m != "vmwrite" else regs[-1]
    try:
        return reg_number(name)[0]
    except KeyError:
        return None


def _iced_operand_size(code: str) -> int | None | str:
    """Operand size implied by iced's Code for the LGDT and RDRAND groups; "n/a" elsewhere."""
    if code.startswith(("RDRAND_R", "RDSEED_R")):
        return int(code.split("_R")[1])
    if code.startswith(("LGDT_", "LIDT_", "SGDT_", "SIDT_")):
        if code.endswith("1664"):
            return None  # 64-bit mode: the operand-size bit is undefined
        return 16 if code.endswith("_16") else 32
    return "n/a"


def _explain_validity(raw: bytes, code_size: int, ours: Instruction | DecodeError, theirs: dict[str, Any]) -> str | None:
    return None


def explain_command(raw: bytes, code_size: int, prefix_policy: bool = False) -> str:
    """`vmxaddr explain` for the bytes; with `prefix_policy` under --ignored-segment prefix, the
    reading of the segment field iced's decoding matches."""
    policy = " --ignored-segment prefix" if prefix_policy else ""
    return f"vmxaddr explain --mode {code_size}{policy} {shlex.quote(raw.hex(' '))}"


def crosscheck_iced(n: int, seed: int, progress: Progress | None = None,
                    on_case: Callable[[int], None] | None = None) -> Summary:
    """Compare our decoder with iced-x86 on `n` encodings of the seeded walk (case_stream.py)."""
    summary = Summary("iced")
    stream = encodings(seed)
    try:
        for k in range(n):
            enc = next(stream)
            ds = compare(enc.raw, enc.code_size)
            if ds:
                ours = _decode(enc.raw, enc.code_size)
                length = ours.length if isinstance(ours, Instruction) else iced_view(enc.raw, enc.code_size)["length"]
                raw = enc.raw[:length] if length else enc.raw
                seg_only = all(d.explained == EXPLAINED_SEGMENT for d in ds)
                summary.add(CaseReport(raw, enc.code_size, ds, explain_command(raw, enc.code_size, seg_only), enc.combo))
            else:
                summary.add(None)
            if progress is not None and (k & 1023) == 0:
                progress.update(k, f"{summary.unexplained_cases} unexplained")
    except KeyboardInterrupt:  # ^C: the counts so far, marked (vmxaddr/oracles/crosscheck.py prints them)
        summary.interrupted = True
        return summary
    if progress is not None:
        progress.update(n, f"{summary.unexplained_cases} unexplained")
    return summary
