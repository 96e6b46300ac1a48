"""Find the VMX-family instructions in ELF files, fast, at the boundaries objdump -d sees.

How it stays exact without disassembling everything in Python:

1. A regular expression finds the opcode bytes that can start a VMX-family instruction
   (0F 78, 0F 79, 0F C7 /3 /5 /6 /7, 0F 00 /0-/3, 0F 01 /0-/3 with a memory operand,
   0F 38 80-82) in each executable section. Most sections have none and cost only that search.
2. For a section with candidates, the instruction boundaries are those of a linear sweep that
   restarts at every symbol, as `objdump -d` does (it disassembles each symbol's bytes
   separately, from the symbol's address to the next symbol's; an instruction cut by the next
   symbol comes out as single bytes). The sweep runs over one symbol's bytes only (the whole
   section when there is no symbol), up to the last candidate in it (far from the last known
   start it resynchronises instead, exactly: see `Boundaries`), with iced-x86's decoder
   (written in Rust: about 0.5 us an instruction from Python). Valid code is decoded alike by
   iced and objdump. Where the bytes are not an instruction (data in code, padding), objdump's
   "(bad)" takes a number of bytes that depends on how far its table lookup got, and objdump
   accepts some encodings a processor rejects (LOCK on anything, a REX or 66 before VEX);
   `_objdump_length` and `_bad_length` follow binutils 2.40 there. Checked: every module of a
   Debian kernel package, Xen in 32- and 64-bit mode, system libraries, and random bytes in the
   tests.
3. An instruction whose bytes contain a candidate is handed to the core's `decode`, which
   decides whether it is a VMX-family instruction and reads its operand; `encode` gives the
   instruction-information field and exit qualification.

ELF headers, section headers and symbols are read by vmxaddr/elf.py; the boundaries of step 2
come from vmxaddr/sweep.py.
"""

from __future__ import annotations

import bisect
import heapq
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vmxaddr.elf import ET_NAMES, STT_FUNC, STT_NOTYPE, X86_MACHINES, Elf, Section
from vmxaddr.scanio import MAX_IMAGE, ScanError, expand_paths, looks_like_elf, read_image
from vmxaddr.sweep import _PREFIXES, Boundaries, sweep

__all__ = ["CANDIDATE", "Boundaries", "Elf", "FileResult", "ScanError", "expand_paths", "looks_like_elf", "read_image",
           "scan_file", "scan_image", "sweep"]

# -- candidates ---------------------------------------------------------------------------------

# ModRM bytes with reg field r, all mod values; and with mod != 11.
def _modrm_class(regs: Iterable[int], memory_only: bool) -> bytes:
    out = bytearray()
    for m in range(256):
        if (m >> 3) & 7 in regs and not (memory_only and m >= 0xC0):
            out.append(m)
    return bytes(out)


def _byte_class(values: bytes) -> bytes:
    return b"[" + b"".join(re.escape(bytes([v])) for v in values) + b"]"


_MAP1 = (b"[\x78\x79]"
         + b"|\xc7" + _byte_class(_modrm_class((3, 5, 6, 7), False))
         + b"|\x00" + _byte_class(_modrm_class((0, 1, 2, 3), False))
         + b"|\x01" + _byte_class(_modrm_class((0, 1, 2, 3), True)))
_LEGACY = (b"\x0f(?=" + _MAP1
           + b"|\x38[\x80-\x82]"
           + b"|\x38\xdc" + _byte_class(bytes(range(0xC0, 0x100)))  # LOADIWKEY (mod = 11)
           + b"|\xae[\xf0-\xf7])")  # TPAUSE / UMWAIT (0F AE /6, mod = 11)
CANDIDATE = re.compile(_LEGACY, re.DOTALL)
# APX (64-bit code): REX2 = D5 + payload with M0 = 1 (map 1, the 0F written no more) + the same
# opcodes; map 2 (INVEPT & co., LOADIWKEY) cannot be reached with REX2 (vmxaddr/rex2.py).
# A pattern of its own: one alternation of the two would cost the search its fast first-byte scan
# (measured: 6x slower on 0.6 GB of code).
CANDIDATE_REX2 = re.compile(b"\xd5(?=[\x80-\xff](?:" + _MAP1 + b"|\xae[\xf0-\xf7]))", re.DOTALL)
# What APX-compiled code is full of: REX2 MOV/LEA/ALU (map 0) and MOVZX/MOVSX/IMUL/CMOVcc/SETcc
# (map 1). In code built without APX, D5 (#UD in 64-bit mode) turns up in data and immediates only.
APX_EVIDENCE = re.compile(b"\xd5(?:[\x00-\x7f][\x01\x03\x09\x0b\x21\x23\x29\x2b\x31\x33\x39\x3b\x85\x89\x8b\x8d]"
                          b"|[\x80-\xff][\x40-\x4f\x90-\x9f\xaf\xb6\xb7\xbe\xbf])", re.DOTALL)
STRING_CANDIDATE = re.compile(b"[\x6c-\x6f]")
"""INS/OUTS (6C-6F), looked for only with `scan --string-io`: these bytes are common inside other
instructions, so every section holding one must be swept — a slower scan."""
"""Where the opcode of a VMX-family instruction may start (the 0F byte, or a REX2 prefix's D5 in
64-bit code); a superset. The match is that byte alone (the rest is a lookahead) so that
overlapping candidates, as in 0F 00 0F C7, are all found."""

# -- reading files: vmxaddr/scanio.py (bounded) ------------------------------------------------

# -- the ELF reader: vmxaddr/elf.py; instruction boundaries: vmxaddr/sweep.py ----------------

# -- scanning -----------------------------------------------------------------------------------


MAX_KEPT = 100  # rejected encodings and warnings kept per file (all are counted)


@dataclass
class FileResult:
    """What scanning one file found. `findings` holds the findings only when no `on_finding`
    sink was given to scan_image; `counts` always counts them by (mnemonic, operand form)."""

    path: str
    findings: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected_total: int = 0
    warnings_total: int = 0

    @property
    def total(self) -> int:
        """The number of findings (counted, whether kept or not)."""
        return sum(self.counts.values())

    def warn(self, text: str) -> None:
        """Count a warning, keeping its text among the first MAX_KEPT."""
        self.warnings_total += 1
        if len(self.warnings) < MAX_KEPT:
            self.warnings.append(text)

    def reject(self, item: dict[str, Any]) -> None:
        """Count a rejected encoding, keeping it among the first MAX_KEPT."""
        self.rejected_total += 1
        if len(self.rejected) < MAX_KEPT:
            self.rejected.append(item)


def _core() -> tuple[Any, Any, Any]:
    from vmxaddr.decode import DecodeError, decode
    from vmxaddr.exitinfo import encode
    return decode, DecodeError, encode


def _long_mode_evidence(code: bytes) -> float:
    """REX.W + MOV/LEA/ADD-group pairs per KiB: frequent in 64-bit code, rare in 32-bit code
    (where 48 is DEC EAX)."""
    if not code:
        return 0.0
    n = sum(code.count(p) for p in (b"\x48\x89", b"\x48\x8b", b"\x48\x8d", b"\x48\x83", b"\x48\x85"))
    return n * 1024 / len(code)


def operand_form(raw: bytes, bits: int) -> str:
    """'register', or 'memory' with its addressing: modrm|sib, disp0/8/16/32, rip."""
    i = 0
    addr = bits
    while i < len(raw) and (raw[i] in _PREFIXES or (bits == 64 and 0x40 <= raw[i] <= 0x4F)):
        if raw[i] == 0x67:
            addr = {16: 32, 32: 16, 64: 32}[bits]
        i += 1
    rex2 = bits == 64 and raw[i:i + 1] == b"\xd5"
    if rex2:
        i += 2  # D5 and its payload; M0 = 1 stands for the 0F escape
    if i < len(raw) and 0x6C <= raw[i] <= 0x6F:
        return "string (implicit ES:rDI / seg:rSI)"
    i += 1 if rex2 else 3 if raw[i:i + 2] == b"\x0f\x38" else 2
    if i >= len(raw):
        return "?"
    mod, rm = raw[i] >> 6, raw[i] & 7
    if mod == 3:
        return "register"
    if addr == 16:
        disp = 16 if mod == 2 or (mod == 0 and rm == 6) else 8 * mod
        return f"memory modrm16 disp{disp}"
    sib = rm == 4
    if mod == 0 and rm == 5:
        return "memory rip-relative disp32" if bits == 64 else "memory modrm disp32"
    disp = {0: 0, 1: 8, 2: 32}[mod]
    if sib and mod == 0 and i + 1 < len(raw) and raw[i + 1] & 7 == 5:
        disp = 32
    return f"memory {'sib' if sib else 'modrm'} disp{disp}"


class _Enclosing:
    """The FUNC or NOTYPE symbol whose range holds an offset (objdump's <name+off> label)."""

    def __init__(self, elf: Elf, sec: Section) -> None:
        syms = sorted((s.value, s.type != STT_FUNC, s.name, s.size) for s in elf.symbols(sec)
                      if s.type in (STT_FUNC, STT_NOTYPE))
        self.syms = syms
        self.keys = [t[0] for t in syms]

    def find(self, off: int) -> tuple[str | None, int | None]:
        i = bisect.bisect_right(self.keys, off) - 1
        while i >= 0:
            start, _, name, size = self.syms[i]
            if size == 0 or off < start + size:
                # prefer the FUNC among symbols at the same address
                j = i
                while j > 0 and self.syms[j - 1][0] == start:
                    j -= 1
                start, _, name, _ = self.syms[j]
                return name, off - start
            i -= 1
        return None, None


def scan_image(path: str, data: bytes | bytearray, mode: int | None = None, compression: str | None = None,
               on_finding: Callable[[dict[str, Any]], None] | None = None, string_io: bool = False,
               apx: bool | None = None) -> FileResult:
    """Scan an ELF image. Each finding goes to `on_finding` when given (and is not kept: memory
    does not grow with the findings), else into the result's `findings`; both ways it is counted.
    `apx` (64-bit code): True reads D5 as the APX REX2 prefix, as llvm-objdump-19 does; False as
    binutils 2.40's objdump shows it, "(bad)" (a processor without APX raises #UD); None (the
    default) reads REX2 in a section that holds REX2 VMX candidates and looks like APX code
    (`_looks_like_apx`), so that code built without APX costs one more search and nothing else."""
    decode, DecodeError, encode = _core()
    res = FileResult(path)
    keep = res.findings.append if on_finding is None else on_finding
    elf = Elf(data)
    bits = mode or elf.bits
    res.info = {"path": path, "elf_class": elf.bits, "type": ET_NAMES.get(elf.e_type, str(elf.e_type)),
                "machine": X86_MACHINES[elf.machine], "mode": bits, "mode_from": "option" if mode else "elf-class",
                "compression": compression, "size": len(data), "sections_scanned": 0, "bytes_scanned": 0}
    execs = elf.executable_sections()
    res.info["apx"] = "no" if bits != 64 or apx is False else "yes" if apx else "auto"
    if mode is None and elf.bits == 32:
        ev = sum(_long_mode_evidence(elf.section_bytes(s)) * s.size for s in execs) / max(1, sum(s.size for s in execs))
        if ev > 2.0:
            res.warn(f"the ELF class says 32-bit but the code looks like 64-bit "
                     f"({ev:.0f} REX.W instruction pairs per KiB); scan it with --mode 64")
    for sec in execs:
        body = elf.section_bytes(sec)
        res.info["sections_scanned"] += 1
        res.info["bytes_scanned"] += len(body)
        starts: list[int] | None = None
        enclosing: _Enclosing | None = None
        base = 0 if elf.relocatable else sec.addr
        region = -1
        bounds: Boundaries | None = None
        rend = last_at = -1
        # candidates come in increasing order (streamed, never listed), so do the regions
        # between symbols and the instructions holding them
        rex2 = [m.start() for m in CANDIDATE_REX2.finditer(body)] if bits == 64 and apx is not False else []
        sec_apx = bool(rex2) and (apx is True or _looks_like_apx(body))
        if not sec_apx:
            rex2 = []
        for c in _candidates(body, string_io, rex2):
            if starts is None:
                starts = elf.symbol_starts(sec)
            r = bisect.bisect_right(starts, c) - 1
            if r != region or bounds is None:
                region = r
                rend = starts[r + 1] if r + 1 < len(starts) else len(body)
                bounds = Boundaries(body, starts[r], rend, bits, sec_apx)
                last_at = -1
            insns = bounds.upto(c)
            k = bisect.bisect_right(insns, c) - 1
            at = insns[k]
            if k > 4096:
                del insns[:k]  # starts before this instruction are never asked for again
            if at == last_at:
                continue
            last_at = at
            window = body[at:min(at + 16, rend)]
            try:
                instr = decode(window, bits)
            except DecodeError as exc:
                if exc.kind not in ("not-vmx", "empty") and c == at + _pfx_len(window, bits):
                    res.reject({"section": sec.name, "offset": at, "address": base + at, "bytes": window[:16].hex(),
                                "kind": exc.kind, "message": str(exc)})
                continue
            after = sweep(body, at, rend, at + instr.length, bits, sec_apx)
            if (after[1] if len(after) > 1 else rend) != at + instr.length:
                res.warn(f"{sec.name}+{at:#x}: the decoder and the sweep disagree on the "
                         f"length of {instr.raw.hex()} ({instr.length} bytes)")
            if at + instr.length <= c:
                continue  # the candidate is past what the decoder reads as this instruction
            ei = encode(instr, rip=base + at)
            if enclosing is None:
                enclosing = _Enclosing(elf, sec)
            sym, symoff = enclosing.find(at)
            form = operand_form(instr.raw, bits)
            res.counts[(instr.mnemonic, form)] += 1
            keep({
                "file": path, "section": sec.name, "offset": at,
                "file_offset": sec.offset + at, "address": base + at,
                "symbol": sym, "symbol_offset": symoff,
                "bytes": instr.raw.hex(), "mnemonic": instr.mnemonic,
                "form": form,
                "instruction": instr.to_json(),
                "instruction_info": ei.instruction_info,
                "exit_qualification": ei.exit_qualification,
            })
    return res


def _looks_like_apx(body: bytes) -> bool:
    """At least 2 REX2 forms of APX_EVIDENCE, and one per 2 KiB."""
    return sum(1 for _ in APX_EVIDENCE.finditer(body)) >= max(2, len(body) >> 11)


def _candidates(body: bytes, string_io: bool, rex2: list[int] | None = None) -> Iterator[int]:
    """Offsets of the candidates in increasing order, each once, streamed; `rex2`: the REX2 ones
    (CANDIDATE_REX2), found beforehand."""
    found: Iterator[int] = (m.start() for m in CANDIDATE.finditer(body))
    if rex2:
        found = heapq.merge(found, rex2)
    if not string_io:
        yield from found
        return
    last = -1
    for c in heapq.merge(found, (m.start() for m in STRING_CANDIDATE.finditer(body))):
        if c != last:
            yield c
            last = c


def _pfx_len(b: bytes, bits: int) -> int:
    i = 0
    while i < len(b) and (b[i] in _PREFIXES or (bits == 64 and 0x40 <= b[i] <= 0x4F)):
        i += 1
    return i


def scan_file(path: str, mode: int | None = None, on_finding: Callable[[dict[str, Any]], None] | None = None,
              limit: int = MAX_IMAGE, string_io: bool = False, apx: bool | None = None) -> FileResult:
    """Scan one file (at most `limit` bytes after decompression); a damaged or oversized file
    gives a FileResult with `error` set, never an exception."""
    try:
        data, compression = read_image(path, limit)
        return scan_image(path, data, mode, compression, on_finding, string_io, apx)
    except ScanError as exc:
        return FileResult(path, error=str(exc))
    except (struct.error, IndexError, ValueError, UnicodeError, OverflowError, MemoryError) as exc:
        return FileResult(path, error=f"malformed ELF ({type(exc).__name__}: {exc})")


# The command line (`vmxaddr scan`, `python -m vmxaddr.scancli`) is vmxaddr/scancli.py, above this module.
