"""Decoder oracle: LLVM 19's x86 disassembler (libLLVM-19 through its C API, `llvm_lib`), the one
decoder on this machine that reads APX's REX2. Same bytes, same code size; compared field by field:
validity, mnemonic, length, operand size, the memory operand's segment, base, index, scale,
displacement, address size and access size, and the register operands.

LLVM's view is mapped onto ours before comparing (docs/oracles.md):
  * segment: LLVM prints the *last segment-override prefix* present, effective or not (and
    nothing without one); that is our `MemoryOperand.segment_prefix`. INS always prints ES (its
    operand cannot be overridden). The effective segment is iced-x86's and unicorn's to check.
  * displacement: LLVM prints it signed; compared modulo 2^address size with our raw field.
  * registers: compared by name, so number and width both (R16–R31 included).
  * access size where LLVM prints one (`qword ptr`, …; LGDT group and XSAVES print none); the
    direction of the access is not in LLVM's text and is not compared.

Known LLVM differences are explained only on their exact form (docs/known-oracle-issues.md §LLVM);
RDMSR/WRMSRNS with an immediate are out of LLVM 19's scope and counted apart (`skipped`).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from typing import Any

from vmxaddr.decode import DecodeError, Instruction, decode
from vmxaddr.gen import SEG_PREFIXES
from vmxaddr.isa import SPECS, XMM, reg_name
from vmxaddr.oracles import CaseReport, Disagreement, Summary
from vmxaddr.oracles.llvm_cases import exhaustive_rex2, llvm_encodings
from vmxaddr.oracles.llvm_lib import _reg_width, disasm, parse
from vmxaddr.oracles.report import report_text
from vmxaddr.progress import Progress

# LLVM 19's rdmsr/wrmsrns are the forms without an immediate (0F 32, 0F 01 C6), which exit
# without instruction information: not the family's.
FAMILY = frozenset(SPECS) - {"rdmsr", "wrmsrns"}
OUT_OF_SCOPE = "out of LLVM 19's scope: RDMSR/WRMSRNS imm32 (VEX map 7), which it does not decode"

# The explained differences (docs/known-oracle-issues.md, "LLVM 19"), each matched on its exact form.
REX2_NO_BASE = ("llvm-rex2-b4-sib-no-base: REX2.B4 with SIB base 101 and mod 00 is 'no base, disp32' "
                "(SDM Vol. 2 Table 2-3 note 1, Table 2-5); LLVM 19 reads base R21/R29 and no displacement")
VMCLEAR_AS_VMPTRLD = ("llvm-66-vmclear: 66 0F C7 /6 is VMCLEAR; LLVM 19 prints VMPTRLD in 16-bit code and with "
                      "REX2.W, or REX.W and 67, taking 66 as an operand-size prefix")
TPAUSE_AS_MFENCE = ("llvm-66-tpause: 66 0F AE /6 (mod 11) is TPAUSE; with REX2.W LLVM 19 drops the 66 and prints "
                    "MFENCE (NP 0F AE F0-F7)")
F3_THEN_66 = ("llvm-f3-66-order: with F3 and 66 the F3 selects the instruction (VMXON); LLVM 19 lets a 66 that "
              "follows the F3 after another prefix win (VMCLEAR; VMPTRLD in 16-bit code)")
IGNORED_PREFIX = ("llvm-ignores-prefix: LOCK, or a 66/F2/F3 the instruction does not take (NP/NFx in the SDM's "
                  "opcode column), makes the bytes #UD (vmxaddr and iced-x86 agree); LLVM 19 ignores the prefix")
REX2_ESCAPE = ("llvm-rex2-m0-0f: REX2 with M0 = 0 followed by the 0F escape is #UD (APX: map 1 is selected by "
               "M0 = 1); LLVM 19 decodes the escape")
REX_THEN_PREFIX = ("llvm-rex-before-prefix: a REX followed by a legacy prefix is ignored (SDM Vol. 2 §2.2.1); "
                   "LLVM 19 ends the instruction at that prefix")
REX_THEN_REX2 = "llvm-rex-before-rex2: REX before REX2 is #UD (APX); LLVM 19 decodes the REX2 instruction"
NOT_IN_16BIT = ("llvm-16bit-gap: INVEPT/INVVPID/INVPCID and UMWAIT are valid in 16-bit protected mode (SDM Vol. 2, "
                "their pages); LLVM 19 does not decode them in 16-bit code")
OVER_15 = "llvm-no-15-byte-limit: an instruction over 15 bytes is #GP (SDM Vol. 2 §2.3.11); LLVM 19 decodes it"
PREFIX_POSITION = ("llvm-prefix-position: LLVM 19 takes a 66/F2/F3 as the mandatory prefix only right before 0F, "
                   "a REX/REX2 or (F2/F3) 66; one further away it ignores, or it rejects the bytes; the SDM "
                   "places no such condition (Vol. 2 §2.1.1: prefixes in any order)")
DT_REP_OPSIZE = ("llvm-dt-rep-opsize: LGDT/LIDT/SGDT/SIDT with an F2/F3 prefix outside 64-bit mode: the operand "
                 "size is set by 66 and the code size; LLVM 19 always prints the 32-bit form")


def llvm_view(raw: bytes, code_size: int) -> dict[str, Any]:
    """What LLVM's disassembler makes of `raw` in `code_size` code, in the fields the comparison
    reads."""
    n, text = disasm().text(raw, code_size)
    return parse(n, text)


def _decode(raw: bytes, code_size: int) -> Instruction | DecodeError:
    try:
        return decode(raw, code_size)
    except DecodeError as e:
        return e


def _after_prefixes(raw: bytes, code_size: int) -> int:
    i = 0
    while i < len(raw) and (raw[i] in (0x66, 0x67, 0xF0, 0xF2, 0xF3, *SEG_PREFIXES)
                            or (code_size == 64 and 0x40 <= raw[i] <= 0x4F)):
        i += 1
    return i


def _explain_validity(raw: bytes, code_size: int, ours: Instruction | DecodeError, theirs: dict[str, Any]) -> str | None:
    i = _after_prefixes(raw, code_size)
    legacy = raw[:i]
    n = theirs["length"]
    if isinstance(ours, DecodeError):
        if ours.kind in ("too-long", "lock", "prefix") and n > 15 and theirs["mnemonic"] in FAMILY:
            return OVER_15
        if ours.kind == "rex2" and raw[i:i + 1] == b"\xd5" and i + 2 < len(raw):
            if code_size == 64 and legacy and 0x40 <= legacy[-1] <= 0x4F:
                return REX_THEN_REX2
            if raw[i + 1] >> 7 == 0 and raw[i + 2] == 0x0F:
                return REX2_ESCAPE
        if ours.kind in ("prefix", "register-form", "not-vmx", "lock") and _ignoring_prefix_agrees(raw, code_size, i, theirs):
            return IGNORED_PREFIX
        return None
    if ours.mnemonic == "tpause" and theirs["mnemonic"] == "mfence" and ours.rex2 & 0x108 == 0x108:
        return TPAUSE_AS_MFENCE
    if code_size == 16 and n == 0 and ours.mnemonic in ("invept", "invvpid", "invpcid", "umwait"):
        return NOT_IN_16BIT
    # a REX byte then a legacy prefix, where LLVM stopped and printed the prefix alone
    if theirs["prefix_only"] and code_size == 64 and 2 <= n <= i and 0x40 <= raw[n - 2] <= 0x4F:
        return REX_THEN_PREFIX
    return None


_DROPS = (frozenset((0xF0,)), frozenset((0xF2, 0xF3)), frozenset((0x66,)), frozenset((0x66, 0xF2, 0xF3)))


def _ignoring_prefix_agrees(raw: bytes, code_size: int, i: int, theirs: dict[str, Any]) -> bool:
    """Our decode of the bytes without their LOCK, or without their 66/F2/F3 prefixes, is LLVM's
    decode of the bytes with them, field for field (the length less the bytes dropped)."""
    if theirs["mnemonic"] not in FAMILY:
        return False
    for drop in _DROPS:
        kept = bytes(b for b in raw[:i] if b not in drop)
        dropped = i - len(kept)
        alt = _decode(kept + raw[i:], code_size)
        if dropped and isinstance(alt, Instruction) and alt.mnemonic == theirs["mnemonic"] \
                and not _fields(alt, {**theirs, "length": theirs["length"] - dropped}):
            return True
    return False


def compare(raw: bytes, code_size: int) -> list[Disagreement] | None:
    """Every field where our decoder and LLVM 19 differ (empty: agreement); None: out of scope."""
    ours = _decode(raw, code_size)
    if isinstance(ours, Instruction) and ours.immediate is not None:
        return None
    theirs = llvm_view(raw, code_size)
    if isinstance(ours, DecodeError) and ours.kind == "decoder-disagreement":
        return [Disagreement("capstone", str(ours), "capstone and our decoder disagree")]
    t_ours = isinstance(ours, Instruction)
    t_theirs = theirs["mnemonic"] in FAMILY
    if t_ours != t_theirs:
        what_ours = ours.mnemonic if isinstance(ours, Instruction) else f"invalid ({ours.kind}: {ours})"
        what_theirs = theirs["text"] or "invalid"
        out = [Disagreement("validity", what_ours, what_theirs, _explain_validity(raw, code_size, ours, theirs))]
    elif not isinstance(ours, Instruction):
        return []
    else:
        out = _fields(ours, theirs)
    if any(d.explained is None for d in out) and _prefix_position(raw, code_size, theirs):
        return [Disagreement(d.field, d.ours, d.theirs, d.explained or PREFIX_POSITION) for d in out]
    return out


def _prefix_position(raw: bytes, code_size: int, theirs: dict[str, Any]) -> bool:
    """The bytes have a 66/F2/F3 away from where LLVM looks for a mandatory prefix, and LLVM's
    decode is ours of the bytes without it (or LLVM cannot decode them at all)."""
    i = _after_prefixes(raw, code_size)
    far = [k for k in range(i) if raw[k] in (0x66, 0xF2, 0xF3) and not (
        raw[k + 1] == 0x0F or raw[k + 1] == 0xD5 or (code_size == 64 and 0x40 <= raw[k + 1] <= 0x4F)
        or (raw[k] != 0x66 and raw[k + 1] == 0x66))]
    if not far:
        return False
    if theirs["length"] == 0:
        return True
    alt = _decode(bytes(b for k, b in enumerate(raw) if k not in far), code_size)
    if not isinstance(alt, Instruction):
        return theirs["mnemonic"] not in FAMILY
    return theirs["mnemonic"] in FAMILY and not _fields(alt, {**theirs, "length": theirs["length"] - len(far)})


def _fields(ours: Instruction, theirs: dict[str, Any]) -> list[Disagreement]:
    out: list[Disagreement] = []

    def check(name: str, a: Any, b: Any) -> None:
        if a != b:
            out.append(Disagreement(name, a, b))

    check("mnemonic", ours.mnemonic, theirs["mnemonic"])
    check("length", ours.length, theirs["length"])
    op, tm = ours.operand, theirs["memory"]
    if (op is None) != (tm is None):
        check("operand", "memory" if op else "register", "memory" if tm else "register")
        return _explain(ours, theirs, out)
    ours_regs = _our_registers(ours)
    check("registers", ours_regs, theirs["registers"])
    if ours.mnemonic in ("sgdt", "sidt", "lgdt", "lidt", "ins", "outs"):
        check("operand_size", ours.operand_size, theirs["operand_size"])
    elif ours.mnemonic in ("rdrand", "rdseed") and theirs["registers"]:
        width = {64: 64, 32: 32, 16: 16}.get(_width(theirs["registers"][0]) or 0)
        check("operand_size", ours.operand_size, width)
    if op is not None:
        assert tm is not None
        want_seg = "es" if ours.mnemonic == "ins" else op.segment_prefix
        check("segment", want_seg, tm["segment"])
        check("base", op.base_name, tm["base"])
        check("index", op.index_name, tm["index"])
        if op.index is not None:
            check("scale", op.scale, tm["scale"])
        mask = (1 << op.address_size) - 1
        if (op.displacement - tm["displacement"]) & mask:
            out.append(Disagreement("displacement", op.displacement, tm["displacement"]))
        if tm["address_size"] is not None:
            check("address_size", op.address_size, tm["address_size"])
        if tm["access_size"] is not None:
            check("access_size", op.access_size, tm["access_size"])
    return _explain(ours, theirs, out)


def _width(name: str) -> int | None:
    return _reg_width(name)


def _our_registers(ours: Instruction) -> list[str]:
    """Our register operands, named as LLVM lists them (Intel order)."""
    m, size = ours.mnemonic, ours.reg_size
    if m == "loadiwkey":
        return [XMM[ours.reg1 or 0], XMM[ours.reg2 or 0]]
    r1 = [reg_name(ours.reg1, size)] if ours.reg1 is not None else []
    r2 = [reg_name(ours.reg2, size)] if ours.reg2 is not None else []
    if m == "vmread":
        return r1 + r2
    return r2 + r1  # VMWRITE reg, r/m; INVEPT & co. reg, m; one register elsewhere


def _explain(ours: Instruction, theirs: dict[str, Any], out: list[Disagreement]) -> list[Disagreement]:
    """Mark each difference that a pinned LLVM issue accounts for, on its exact form only."""
    if not out:
        return out
    rules: list[tuple[str, frozenset[str]]] = []
    w = (ours.rex2 & 0x108 == 0x108) or (ours.rex & 8 and 0x67 in ours.prefixes)
    if ours.mnemonic == "vmclear" and theirs["mnemonic"] == "vmptrld" and (ours.code_size == 16 or w):
        rules.append((VMCLEAR_AS_VMPTRLD, frozenset(("mnemonic",))))
    if ours.mnemonic == "vmxon" and theirs["mnemonic"] in ("vmclear", "vmptrld") and _f3_gap_66(ours.prefixes):
        rules.append((F3_THEN_66, frozenset(("mnemonic",))))
    if _is_rex2_no_base(ours, theirs):
        rules.append((REX2_NO_BASE, frozenset(("length", "base", "displacement", "address_size"))))
    if (ours.spec.layout.value == "dt" and ours.code_size != 64 and {0xF2, 0xF3} & set(ours.prefixes)
            and theirs["operand_size"] == 32):
        rules.append((DT_REP_OPSIZE, frozenset(("operand_size",))))
    result = []
    for d in out:
        why = next((name for name, fields in rules if d.field in fields), None)
        result.append(Disagreement(d.field, d.ours, d.theirs, why))
    return result


def _f3_gap_66(prefixes: tuple[int, ...]) -> bool:
    """A 66 after the last F3 with some other prefix between them."""
    last_f3 = max(k for k, p in enumerate(prefixes) if p == 0xF3)
    tail = prefixes[last_f3 + 1:]
    return 0x66 in tail and tail.index(0x66) > 0 and any(p != 0x66 for p in tail[:tail.index(0x66)])


def _is_rex2_no_base(ours: Instruction, theirs: dict[str, Any]) -> bool:
    """REX2 (M0 = 1) with B4 = 1, ModRM mod 00 rm 100, SIB base 101 — and LLVM's reading of it
    exactly: base R21 (B3 = 0) or R29 (B3 = 1), no displacement, 4 bytes short."""
    payload = ours.rex2 & 0xFF
    op, tm = ours.operand, theirs["memory"]
    if not ours.rex2 or not payload & 0x80 or not payload & 0x10 or op is None or tm is None:
        return False
    at = op.disp_offset - 2  # ModRM, SIB, then the displacement
    if at < 0 or ours.raw[at] & 0xC7 != 0x04 or ours.raw[at + 1] & 7 != 5:
        return False
    want = reg_name(16 + 5 + (payload & 1) * 8, op.address_size)
    return (op.base is None and op.disp_size == 4 and tm["base"] == want and tm["displacement"] == 0
            and theirs["length"] == ours.length - 4)


def explain_command(raw: bytes, code_size: int) -> str:
    """The `vmxaddr explain` command that shows the case."""
    return f"vmxaddr explain --mode {code_size} {shlex.quote(raw.hex(' '))}"


def crosscheck_cases(cases: Iterable[Any], n: int | None, summary: Summary, progress: Progress | None = None,
                     on_case: Callable[[int], None] | None = None) -> Summary:
    """Compare each case (an `Encoding`) until `n` (None: all); ^C gives the counts so far."""
    out_of_scope = summary.details.get("out_of_scope_rdmsr_wrmsrns_imm", 0)
    try:
        for k, enc in enumerate(cases):
            if n is not None and k >= n:
                break
            ds = compare(enc.raw, enc.code_size)
            if ds is None:
                out_of_scope += 1
                summary.add(None, skipped=True)
            elif ds:
                ours = _decode(enc.raw, enc.code_size)
                length = ours.length if isinstance(ours, Instruction) else llvm_view(enc.raw, enc.code_size)["length"]
                raw = enc.raw[:length] if length else enc.raw
                summary.add(CaseReport(raw, enc.code_size, ds, explain_command(raw, enc.code_size), enc.combo))
            else:
                summary.add(None)
            if progress is not None and (k & 1023) == 0:
                progress.update(k, f"{summary.unexplained_cases} unexplained")
    except KeyboardInterrupt:  # ^C: the counts so far, marked (vmxaddr/oracles/crosscheck.py prints them)
        summary.interrupted = True
    summary.details["out_of_scope_rdmsr_wrmsrns_imm"] = out_of_scope
    summary.details["llvm"] = disasm().version
    return summary


def crosscheck_llvm(n: int, seed: int, progress: Progress | None = None,
                    on_case: Callable[[int], None] | None = None) -> Summary:
    """Compare our decoder with LLVM 19 on `n` encodings of the seeded walk (llvm_cases.py)."""
    summary = crosscheck_cases(llvm_encodings(seed), n, Summary("llvm"), progress)
    if progress is not None and not summary.interrupted:
        progress.update(n, f"{summary.unexplained_cases} unexplained")
    return summary


def _exhaustive_part(args: tuple[bool, tuple[int, ...]]) -> Summary:
    subset, payloads = args
    return crosscheck_cases(exhaustive_rex2(subset, payloads), None, Summary("llvm"))


def crosscheck_exhaustive(subset: bool = False, jobs: int = 1) -> Summary:
    """Every REX2 payload × ModRM × SIB of VMREAD/VMWRITE (llvm_cases.exhaustive_rex2), the
    payloads dealt over `jobs` processes."""
    import multiprocessing as mp
    import time

    start = time.monotonic()
    parts = [(subset, tuple(range(j, 256, jobs))) for j in range(jobs)]
    if jobs <= 1:
        results = [_exhaustive_part(parts[0])]
    else:
        with mp.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_exhaustive_part, parts)
    summary = Summary("llvm")
    for r in results:
        summary.merge(r)
    summary.details = {"out_of_scope_rdmsr_wrmsrns_imm": 0, "llvm": disasm().version, "exhaustive": True,
                       "subset": subset}
    summary.seconds = time.monotonic() - start
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m vmxaddr.oracles.llvm [--subset] [--jobs N]`: the exhaustive REX2 VMREAD/VMWRITE sweep."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vmxaddr.oracles.llvm", description=crosscheck_exhaustive.__doc__)
    ap.add_argument("--subset", action="store_true", help="ModRM.reg, SIB scale and index fixed per payload")
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args(argv)
    s = crosscheck_exhaustive(args.subset, max(1, args.jobs))
    print(report_text(s, 0, args.jobs))
    return 1 if s.unexplained_cases else 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
