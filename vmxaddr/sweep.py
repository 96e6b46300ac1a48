"""Instruction boundaries as `objdump -d` draws them, for the scanner (vmxaddr.scan): a linear
sweep that restarts at every symbol, with iced-x86's decoder, where the bytes that are not an
instruction take as many bytes as binutils 2.40's "(bad)" does (`_objdump_length`,
`_bad_length`), and `Boundaries`, which resynchronises far from the last known start instead of
sweeping from it, exactly.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from vmxaddr.scanio import ScanError

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
