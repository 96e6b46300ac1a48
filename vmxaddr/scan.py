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

ELF headers, section headers and symbols are read with `struct` (the layouts of the ELF gABI):
pyelftools costs about 2.5 ms per file to open, more than objdump needs to disassemble a typical
kernel module, so the scanner only uses it in the tests, as the reference its reader is checked
against.
"""

from __future__ import annotations

import bisect
import heapq
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from vmxaddr.scanio import MAX_IMAGE, ScanError, expand_paths, looks_like_elf, read_image

__all__ = ["CANDIDATE", "Elf", "FileResult", "ScanError", "expand_paths", "looks_like_elf", "read_image", "scan_file",
           "scan_image", "sweep"]

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

# -- a small ELF reader -------------------------------------------------------------------------

SHT_SYMTAB, SHT_NOBITS, SHT_DYNSYM = 2, 8, 11
SHF_EXECINSTR = 0x4
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
SHN_LORESERVE = 0xFF00
ET_NAMES = {1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
X86_MACHINES = {3: "i386", 6: "i486", 62: "x86-64"}


@dataclass(frozen=True, slots=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    value: int
    size: int
    type: int
    shndx: int


class Elf:
    """ELF header, section headers and symbols of an x86 ELF image held in memory."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        if len(data) < 16 or data[:4] != b"\x7fELF":
            raise ScanError("not an ELF file" + (" (empty)" if not data else ""))
        ei_class, ei_data = data[4], data[5]
        if ei_class not in (1, 2):
            raise ScanError(f"bad ELF class byte {ei_class}")
        if ei_data != 1:
            raise ScanError("not a little-endian ELF file, so not x86" if ei_data == 2
                            else f"bad ELF data-encoding byte {ei_data}")
        self.bits = 32 if ei_class == 1 else 64
        ehdr = "<HHIIIIIHHHHHH" if self.bits == 32 else "<HHIQQQIHHHHHH"
        if len(data) < 16 + struct.calcsize(ehdr):
            raise ScanError("truncated ELF header")
        (self.e_type, self.machine, _version, self.entry, _phoff, shoff, _flags, _ehsize,
         _phentsize, _phnum, shentsize, shnum, shstrndx) = struct.unpack_from(ehdr, data, 16)
        if self.machine not in X86_MACHINES:
            raise ScanError(f"not an x86 ELF file (e_machine {self.machine})")
        shdr = "<IIIIIIIIII" if self.bits == 32 else "<IIQQQQIIQQ"
        need = struct.calcsize(shdr)
        if shoff == 0:
            raise ScanError("no section header table")
        if shentsize < need:
            raise ScanError(f"bad section header size {shentsize}")
        if shnum == 0 and shoff + need <= len(data):  # more than 0xff00 sections: count in [0]
            shnum = struct.unpack_from(shdr, data, shoff)[5]
        if shoff + shnum * shentsize > len(data):
            raise ScanError(f"truncated: the section headers end at {shoff + shnum * shentsize:#x},"
                            f" the file at {len(data):#x}")
        raw = [struct.unpack_from(shdr, data, shoff + i * shentsize) for i in range(shnum)]
        if shstrndx == 0xFFFF and raw:  # SHN_XINDEX
            shstrndx = raw[0][6]
        names = b""
        if 0 < shstrndx < shnum:
            names = self._bytes_of(raw[shstrndx], "the section-name table")
        self.sections: list[Section] = []
        for i, (name, typ, flags, addr, off, size, link, _info, _align, entsize) in enumerate(raw):
            if typ != SHT_NOBITS and i and off + size > len(data):
                raise ScanError(f"truncated: section {i} ends at {off + size:#x}, "
                                f"the file at {len(data):#x}")
            self.sections.append(Section(i, _cstr(names, name) if names else f"#{i}", typ, flags,
                                         addr, off, size, link, entsize))
        self._entries: list[tuple[int, int, int, int, int]] | None = None
        self._strtab = b""
        self._starts: dict[int, set[int]] | None = None

    def _bytes_of(self, raw: tuple[int, ...], what: str) -> bytes:
        off, size = raw[4], raw[5]
        if off + size > len(self.data):
            raise ScanError(f"truncated: {what} ends at {off + size:#x}, the file at {len(self.data):#x}")
        return bytes(self.data[off:off + size])

    @property
    def relocatable(self) -> bool:
        return self.e_type == 1

    def section_bytes(self, s: Section) -> bytes:
        return bytes(self.data[s.offset:s.offset + s.size])

    def executable_sections(self) -> list[Section]:
        return [s for s in self.sections
                if s.flags & SHF_EXECINSTR and s.type != SHT_NOBITS and s.size and s.index]

    def _symbol_entries(self) -> list[tuple[int, int, int, int, int]]:
        """(name offset, value, size, type, section index) of the named symbols defined in a
        section, from the static symbol table, else the dynamic one (what objdump -d labels
        code with); section and file symbols left out, as objdump does."""
        if self._entries is None:
            self._entries = []
            for want in (SHT_SYMTAB, SHT_DYNSYM):
                tabs = [s for s in self.sections if s.type == want]
                if tabs:
                    tab = tabs[0]
                    self._entries = self._read_symbols(tab)
                    self._strtab = self.section_bytes(self.sections[tab.link])
                    break
        return self._entries

    def _read_symbols(self, tab: Section) -> list[tuple[int, int, int, int, int]]:
        fmt = "<IIIBBH" if self.bits == 32 else "<IBBHQQ"
        size = struct.calcsize(fmt)
        if tab.entsize not in (0, size) or not 0 < tab.link < len(self.sections):
            raise ScanError(f"bad symbol table {tab.name}")
        body = self.section_bytes(tab)
        body = body[:len(body) - len(body) % size]
        if self.bits == 32:
            ents = [(n, v, sz, i & 0xF, x) for n, v, sz, i, _o, x in struct.iter_unpack(fmt, body)]
        else:
            ents = [(n, v, sz, i & 0xF, x) for n, i, _o, x, v, sz in struct.iter_unpack(fmt, body)]
        return [e for e in ents if e[0] and e[3] != STT_SECTION and e[3] != STT_FILE
                and 0 < e[4] < SHN_LORESERVE]

    def symbol_starts(self, sec: Section) -> list[int]:
        """Section offsets where objdump -d restarts its sweep: 0 and every symbol."""
        if self._starts is None:
            self._starts = {}
            rel = self.relocatable
            addr = {s.index: (0 if rel else s.addr, s.size) for s in self.sections}
            for _n, value, _sz, _t, shndx in self._symbol_entries():
                base, size = addr.get(shndx, (0, 0))
                if 0 <= value - base < size:
                    self._starts.setdefault(shndx, set()).add(value - base)
        return sorted(self._starts.get(sec.index, set()) | {0})

    def symbols(self, sec: Section) -> list[Symbol]:
        """The symbols defined in a section, with their values as section offsets."""
        base = 0 if self.relocatable else sec.addr
        return [Symbol(_cstr(self._strtab, n), v - base, sz, t, x)
                for n, v, sz, t, x in self._symbol_entries()
                if x == sec.index and 0 <= v - base < sec.size]


def _cstr(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")


# -- instruction boundaries as objdump -d draws them -------------------------------------------

_PREFIXES = frozenset(b"\x66\x67\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65")


def _modrm_length(d: bytes, q: int, end: int, addr16: bool) -> int:
    """Bytes of the ModRM at q with its SIB and displacement."""
    if q >= end:
        return 0
    mod, rm = d[q] >> 6, d[q] & 7
    if mod == 3:
        return 1
    if addr16:
        return 1 + (2 if mod == 2 or (mod == 0 and rm == 6) else mod)
    n = 1
    if rm == 4:
        n += 1
        if mod == 0 and q + 1 < end and d[q + 1] & 7 == 5:
            n += 4
    if mod == 0 and rm == 5:
        n += 4
    return n + (1 if mod == 1 else 4 if mod == 2 else 0)


def _bad_length(d: bytes, p: int, end: int, bits: int, iced_len: int) -> int:
    """How many bytes objdump's "(bad)" takes at p (binutils 2.40, observed), at least 1.

    objdump stops at the byte where its table lookup fails: the prefixes and that byte, or the
    whole ModRM for the x87 escapes, or the VEX/EVEX/XOP prefix bytes read so far; an instruction
    cut off by the end of the symbol is printed byte by byte."""
    if iced_len == 0 or p + iced_len > end:
        return 1
    q = p
    addr16 = bits == 16
    rep = 0  # the last F2/F3: it selects the opcode's prefix table before 66 does
    while q < end and (d[q] in _PREFIXES or (bits == 64 and 0x40 <= d[q] <= 0x4F)):
        if d[q] == 0x67:
            addr16 = bits == 32
        elif d[q] in (0xF2, 0xF3):
            rep = d[q]
        q += 1
    if q + 1 >= end:
        return 1
    npfx, b, b1 = q - p, d[q], d[q + 1]
    modrm = d[q + 2] if q + 2 < end else 0
    if b == 0x0F:
        if b1 in (0x38, 0x3A):
            return npfx + 3
        if b1 == 0xC7:  # CMPXCHG8B's register form fails at once; the others after the opcode
            return npfx + (1 if (modrm >> 3) & 7 == 1 and modrm >= 0xC0 else 2)
        if b1 in (0x78, 0x79) and modrm < 0xC0:  # EXTRQ/INSERTQ with a memory ModRM, F3 0F 78/79
            return npfx + (2 if rep == 0xF3 else 3 if b1 == 0x78 else 1)
        if 0x20 <= b1 <= 0x23:  # MOV to/from CRn/DRn: the ModRM is always read as registers
            return npfx + 3
        if b1 in (0x0F, 0xA6, 0xA7, 0xE7, 0xC3, 0xF7):
            return npfx + 1
        return npfx + 2
    if bits == 64 or b1 >= 0xC0:
        if b == 0xC5:
            return npfx + 3
        if b == 0xC4:  # a valid opcode map: prefix, two payload bytes and the opcode
            return npfx + (4 if b1 & 0x1F in (1, 2, 3) else 1)
        if b == 0x62:  # EVEX: maps 1, 2, 3, 5 and 6 exist
            if b1 & 0x08 or b1 & 7 in (0, 4, 7):
                return npfx + 1
            if q + 2 < end and not d[q + 2] & 0x04:
                return npfx + 2
            return npfx + 5
    if b == 0x8F and b1 & 0x1F >= 8:
        return npfx + (4 if b1 & 0x1F <= 10 else 1)
    if 0xD8 <= b <= 0xDF or b in (0x8C, 0x8E):
        return min(npfx + 1 + _modrm_length(d, q + 1, end, addr16), end - p)
    return npfx + 1


@lru_cache(maxsize=1)
def _iced() -> Any:
    """iced-x86, imported on first use so that `vmxaddr` starts without it."""
    try:
        import iced_x86
    except ImportError:
        raise ScanError("the scanner needs the iced-x86 module (pip install iced-x86)") from None
    return iced_x86


@lru_cache(maxsize=4)
def _options(bits: int) -> tuple[int, int]:
    """iced options: strict (objdump rejects VEX/EVEX reserved-bit violations too), plus the
    386 test-register moves (0F 24/26), which objdump decodes outside 64-bit mode."""
    iced = _iced()
    strict = iced.DecoderOptions.MOV_TR if bits != 64 else iced.DecoderOptions.NONE
    return strict, strict | iced.DecoderOptions.NO_INVALID_CHECK


@lru_cache(maxsize=1)
def _sse4a_codes() -> frozenset[int]:
    c = _iced().Code
    return frozenset((c.EXTRQ_XMM_IMM8_IMM8, c.EXTRQ_XMM_XMM, c.INSERTQ_XMM_XMM, c.INSERTQ_XMM_XMM_IMM8_IMM8))


@lru_cache(maxsize=1)
def _special_codes() -> frozenset[int]:
    """iced's codes after which objdump may not step as iced does: INVALID, WAIT, EXTRQ/INSERTQ."""
    iced = _iced()
    return frozenset((iced.Code.INVALID, iced.Code.WAIT)) | _sse4a_codes()


def _rex_then_prefix(b: int) -> bool:
    return b in _PREFIXES or 0x40 <= b <= 0x4F


_REX_PREFIX = re.compile(rb"[\x40-\x4f](?=[\x40-\x4f\x66\x67\xf0\xf2\xf3\x2e\x36\x3e\x26\x64\x65])")
"""A REX byte followed by another prefix: objdump ends the instruction after the REX
("rex.W" alone), the processor (and iced) ignores the REX and goes on."""


def _objdump_length(data: bytes, p: int, end: int, bits: int, iced_len: int) -> int:
    """Length objdump gives the bytes at p that iced's strict decoder rejects."""
    iced = _iced()
    q = p
    while q < end and data[q] in _PREFIXES or (bits == 64 and q < end and 0x40 <= data[q] <= 0x4F):
        if bits == 64 and 0x40 <= data[q] <= 0x4F and q + 1 < end and _rex_then_prefix(data[q + 1]):
            return q + 1 - p
        if data[q] == 0xF0:  # objdump prints LOCK on anything ("lock nop", "lock vmread")
            lax = iced.Decoder(bits, data[p:end], _options(bits)[1], p).decode()
            if lax.code != iced.Code.INVALID and lax.code not in _sse4a_codes():
                return lax.len
            break
        q += 1
    if q < end and data[q] in (0xC4, 0xC5, 0x62) and q > p and (bits == 64 or (q + 1 < end and data[q + 1] >= 0xC0)):
        # objdump decodes VEX/EVEX after prefixes that make it #UD (66, F2, F3, REX)
        vex = iced.Decoder(bits, data[q:end], _options(bits)[0], q).decode()
        if vex.code != iced.Code.INVALID:
            return q - p + vex.len
    return _bad_length(data, p, end, bits, iced_len)


class Sweeper:
    """objdump's linear sweep over data[lo:hi] of a symbol's bytes that end at `end` (hi <= end):
    `run(pos, upto)` gives the instruction starts from pos to upto. Bytes past upto + 15 cannot
    change the instructions that start at or before upto, so hi = min(end, upto + 16) is enough."""

    def __init__(self, data: bytes, lo: int, hi: int, end: int, bits: int, apx: bool = False) -> None:
        iced = _iced()
        self.data, self.lo, self.end, self.bits = data, lo, end, bits
        self.apx = apx and bits == 64
        window = data[lo:hi]
        self.dec = iced.Decoder(bits, window, _options(bits)[0], lo)
        self.size = len(window)  # the decoder can decode while its position is below this
        self.ins = iced.Instruction()
        self.rex = {m.start() for m in _REX_PREFIX.finditer(data, lo, hi)} if bits == 64 else set()
        self.memo: dict[int, int] = {}  # window offset -> the next instruction's
        self.special = _special_codes()

    def run(self, start: int, upto: int) -> list[int]:
        """The instruction starts from `start` to `upto`. Each step is a function of the position
        alone, so it is remembered: sweeps started at nearby offsets (Boundaries' resynchronising
        runs 17 of them) meet after a few instructions and share the rest instead of decoding it
        again."""
        starts: list[int] = []
        add = starts.append
        memo, lo, data, rex, dec, ins = self.memo, self.lo, self.data, self.rex, self.dec, self.ins
        decode_out, special = dec.decode_out, self.special
        limit, size = upto - lo, self.size
        p = start - lo
        while p <= limit and p < size:
            add(p + lo)
            nxt = memo.get(p)
            if nxt is None:
                dec.position = p
                decode_out(ins)
                if ins.code in special or (rex and (p + lo in rex or data[p + lo] in _PREFIXES)):
                    nxt = self._objdump_step(p)
                else:
                    nxt = p + ins.len  # a valid instruction: objdump steps over it as iced does
                memo[p] = nxt
            p = nxt
        return starts

    def _objdump_step(self, pos: int) -> int:
        """Where objdump's next instruction starts after the one at window offset `pos`, which the
        decoder has just read into self.ins: the cases where objdump does not step as iced does."""
        iced = _iced()
        data, lo, end, bits, dec, ins, rex = self.data, self.lo, self.end, self.bits, self.dec, self.ins, self.rex
        invalid = iced.Code.INVALID
        code = ins.code
        if rex and (pos + lo in rex or data[pos + lo] in _PREFIXES):
            q = pos + lo
            while q < end and data[q] in _PREFIXES and q not in rex:
                q += 1
            if q in rex:  # a REX byte followed by a prefix, within this instruction's prefixes
                return q + 1 - lo
        if code == invalid:
            n = _rex2_length(data, pos + lo, end) if self.apx else 0
            dec.position = pos + (n or min(15, _objdump_length(data, pos + lo, end, bits, ins.len)))
        elif code == iced.Code.WAIT and dec.can_decode:
            # objdump reads FWAIT as a prefix: with an x87 instruction after it (and any prefixes
            # between) it prints one instruction; prefixes then another FWAIT belong to the first
            j = r = pos + lo + 1
            while j < end and (data[j] in _PREFIXES or (bits == 64 and 0x40 <= data[j] <= 0x4F)):
                j += 1
            if j < end and 0xD8 <= data[j] <= 0xDF:
                dec.decode_out(ins)
                if ins.code == invalid:
                    dec.position = r - lo + _objdump_length(data, r, end, bits, ins.len)
            elif j < end and data[j] == 0x9B and j > r:
                dec.position = j - lo
        elif code in _sse4a_codes() and ins.op1_kind == iced.OpKind.MEMORY:
            # EXTRQ/INSERTQ take registers only; objdump stops early on a memory ModRM
            dec.position = pos + _bad_length(data, pos + lo, end, bits, ins.len)
        return int(dec.position)


def sweep(data: bytes, start: int, end: int, upto: int, bits: int, apx: bool = False) -> list[int]:
    """Offsets of the instructions objdump -d shows in data[start:end] that start at or before
    `upto` (a linear sweep from `start` that never reads past `end`); `apx`: REX2 read as APX
    does (llvm-objdump-19), in 64-bit code."""
    return Sweeper(data, start, min(end, upto + 16), end, bits, apx).run(start, upto)


def _rex2_length(data: bytes, p: int, end: int) -> int:
    """Length of the REX2 (APX) instruction at p (64-bit code: legacy prefixes, D5, payload,
    opcode …), 0 if there is none. REX2 changes no field's width: the instruction is as long as
    the legacy one with a REX holding W/R3/X3/B3 and, for M0 = 1, the 0F escape, less one byte
    (2 bytes of REX2 for REX + 0F) or plus one (M0 = 0: REX2 for REX). The rows REX2 makes #UD
    (vmxaddr/rex2.py) give 0, and so does a REX before D5."""
    q = p
    while q < end and data[q] in _PREFIXES:
        q += 1
    if q + 2 >= end or data[q] != 0xD5:
        return 0
    payload, op = data[q + 1], data[q + 2]
    m0 = payload >> 7
    if (op >> 4) in ((0x3, 0x8) if m0 else (0x4, 0x7, 0xA, 0xE)) or (not m0 and op == 0x0F):
        return 0
    iced = _iced()
    legacy = data[p:q] + bytes([0x40 | payload & 0xF]) + (b"\x0f" if m0 else b"") + data[q + 2:min(end, q + 17)]
    ins = iced.Decoder(64, legacy, _options(64)[0]).decode()
    if ins.code == iced.Code.INVALID:
        return 0
    return ins.len + 1 - m0


class Boundaries:
    """The instruction starts of one symbol's bytes, found as the scan moves forward through its
    candidates (in increasing order).

    Near the last known start, the sweep just goes on from there. Far from it (more than `FAR`
    bytes), it resynchronises instead of sweeping the gap: objdump's sweep, whatever it did
    before, starts an instruction somewhere in any 16 consecutive bytes, because no step is
    longer; so sweeps started at each of the 17 offsets c-W-16 … c-W include the true one, and
    once they all share a start b, every start from b on is the true sweep's (each step depends
    on the position only). If they do not meet before the candidate, the gap is swept."""

    FAR = 512
    W = 32

    def __init__(self, data: bytes, start: int, end: int, bits: int, apx: bool = False) -> None:
        self.data, self.start, self.end, self.bits, self.apx = data, start, end, bits, apx
        self.known = [start]  # true starts, contiguous from known[0]
        self.resyncs = self.swept = 0

    def upto(self, c: int) -> list[int]:
        """Known starts, the last of them at or before c (the instruction holding c)."""
        last = self.known[-1]
        if c <= last:
            return self.known
        if c - last > self.FAR and c - self.W - 16 > last:
            lo = c - self.W - 16
            sw = Sweeper(self.data, lo, min(self.end, c + 16), self.end, self.bits, self.apx)
            lists = [sw.run(s, c) for s in range(lo, c - self.W + 1)]
            common = set(lists[0]).intersection(*lists[1:])
            if common:
                b = min(common)
                self.known = [x for x in lists[0] if x >= b]
                self.resyncs += 1
                return self.known
        more = sweep(self.data, last, self.end, c, self.bits, self.apx)
        self.swept += more[-1] - last
        self.known.extend(more[1:])
        return self.known


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
        return sum(self.counts.values())

    def warn(self, text: str) -> None:
        self.warnings_total += 1
        if len(self.warnings) < MAX_KEPT:
            self.warnings.append(text)

    def reject(self, item: dict[str, Any]) -> None:
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
