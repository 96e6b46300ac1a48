"""Encodings for the cross-checks: a seeded stream that walks every instruction × code size ×
prefix combination in turn (so any run of a few thousand cases covers them all), with the
ModRM, SIB, displacement, REX bits and prefix order chosen at random.

Two interleaved streams:
  * "family": each VMX-family instruction with its own mandatory prefix, × code size × segment
    prefix (none, each of the six, or two) × 67 (address size) × REX (64-bit mode: none or one)
    × an extra 66 where it is an operand-size prefix (LGDT group, LLDT group, RDRAND/RDSEED).
  * "prefixes" (decoder oracle only): each opcode and ModRM.reg of the family's opcode space
    (0F C7 /0…/7, 0F 78, 0F 79, 0F 38 80…82, 0F 01 /0…/7, 0F 00 /0…/7) × memory/register form
    × prefix set (none, 66, F2, F3, F0, 66+F3, F3+66, F2+66) × code size: what must be rejected,
    and what is valid by another prefix reading.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from vmxaddr.gen import OPCODES, SEG_PREFIXES

CODE_SIZES = (16, 32, 64)
SEG_CHOICES = (None, *SEG_PREFIXES, "two")
# operand-size 66 is meaningful (and legal) only for these; on the others it changes the instruction
OPSIZE_66 = frozenset(("sgdt", "sidt", "lgdt", "lidt", "sldt", "str", "lldt", "ltr", "rdrand", "rdseed"))
PREFIX_SETS: tuple[tuple[int, ...], ...] = ((), (0x66,), (0xF2,), (0xF3,), (0xF0,), (0x66, 0xF3), (0xF3, 0x66), (0xF2, 0x66))
OPCODE_SPACE: tuple[tuple[bytes, int | None], ...] = (
    *((b"\x0f\xc7", r) for r in range(8)),
    (b"\x0f\x78", None), (b"\x0f\x79", None),
    (b"\x0f\x38\x80", None), (b"\x0f\x38\x81", None), (b"\x0f\x38\x82", None),
    *((b"\x0f\x01", r) for r in range(8)),
    *((b"\x0f\x00", r) for r in range(8)),
)


@dataclass(frozen=True, slots=True)
class Encoding:
    """One encoding of the cross-check stream: the bytes (with trailing bytes a decoder must not
    take), code size, combination."""
    raw: bytes  # the instruction, followed by a few unrelated bytes a decoder must not consume
    code_size: int
    combo: str  # which combination of the walk this is, e.g. "family:vmclear/64/fs/67/rex/-"


def _family_combos(memory_only: bool) -> list[tuple[str, int, object, bool, bool, bool]]:
    out = []
    for m, (_mp, _op, _reg, forms) in OPCODES.items():
        if memory_only and forms == "reg":
            continue
        for cs in CODE_SIZES:
            for seg, a67, rex, o66 in itertools.product(SEG_CHOICES, (False, True), (False, True), (False, True)):
                if (rex and cs != 64) or (o66 and m not in OPSIZE_66):
                    continue
                if forms == "reg" and (seg is not None or a67):
                    continue  # no memory operand: segment and address size do not apply
                out.append((m, cs, seg, a67, rex, o66))
    return out


def _prefix_combos() -> list[tuple[bytes, int | None, bool, tuple[int, ...], int]]:
    return [(op, reg, mem, ps, cs) for (op, reg), mem, ps, cs in
            itertools.product(OPCODE_SPACE, (True, False), PREFIX_SETS, CODE_SIZES)]


def _memory_body(rng: random.Random, reg: int, asz: int) -> bytes:
    mod = rng.choice((0, 0, 1, 2))
    rm = rng.randrange(8)
    body = bytes([mod << 6 | reg << 3 | rm])
    if asz == 16:
        dsize = 2 if (mod == 0 and rm == 6) else (0, 1, 2)[mod]
    else:
        dsize = (0, 1, 4)[mod]
        if rm == 4:
            sib = rng.randrange(256)
            body += bytes([sib])
            if mod == 0 and sib & 7 == 5:
                dsize = 4
        elif rm == 5 and mod == 0:
            dsize = 4
    if dsize:
        edge = rng.random() < 0.3
        bits = 8 * dsize
        v = rng.choice((0, 1, -1, (1 << (bits - 1)) - 1, -(1 << (bits - 1)), -0x28)) if edge else \
            rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1))
        body += v.to_bytes(dsize, "little", signed=True)
    return body


def _seg_prefixes(rng: random.Random, seg: object) -> list[int]:
    if seg is None:
        return []
    if seg == "two":
        return [rng.choice(SEG_PREFIXES), rng.choice(SEG_PREFIXES)]
    assert isinstance(seg, int)
    return [seg]


def encodings(seed: int, memory_only: bool = False, prefix_share: float = 0.25) -> Iterator[Encoding]:
    """Endless stream. `memory_only`: only memory forms of valid instructions (the unicorn
    oracle); otherwise a `prefix_share` of the stream walks the opcode × prefix-set space."""
    rng = random.Random(seed)
    fam = _family_combos(memory_only)
    pre = [] if memory_only else _prefix_combos()
    rng.shuffle(fam)
    rng.shuffle(pre)
    fi = pi = 0
    acc = 0.0
    while True:
        acc += prefix_share if pre else 0.0
        if acc >= 1.0:
            acc -= 1.0
            op, reg, mem, ps, cs = pre[pi % len(pre)]
            pi += 1
            prefixes = list(ps)
            if rng.random() < 0.3:
                prefixes.insert(rng.randrange(len(prefixes) + 1), rng.choice(SEG_PREFIXES))
            rex = bytes([0x40 | rng.randrange(16)]) if cs == 64 and rng.random() < 0.3 else b""
            if cs == 64 and prefixes and rng.random() < 0.1:
                # a REX followed by a legacy prefix is ignored (SDM Vol. 2 §2.2.1)
                prefixes.insert(rng.randrange(len(prefixes)), 0x40 | rng.randrange(16))
            if rng.random() < 0.05:
                # pile up redundant prefixes: around the 15-byte limit (#GP beyond it)
                prefixes[:0] = [rng.choice((0x3E, 0x26, 0x67, 0x66) if ps == (0x66,) else (0x3E, 0x26, 0x67))
                                for _ in range(rng.randrange(6, 12))]
            r = reg if reg is not None else rng.randrange(8)
            if mem:
                asz = cs
                body = _memory_body(rng, r, asz)
            else:
                body = bytes([0xC0 | r << 3 | rng.randrange(8)])
            combo = f"prefixes:{op.hex()}/{'-' if reg is None else reg}/{'mem' if mem else 'reg'}/{bytes(ps).hex() or 'np'}/{cs}"
            raw = bytes(prefixes) + rex + op + body
        else:
            m, cs, seg, a67, with_rex, o66 = fam[fi % len(fam)]
            fi += 1
            mp, op, regfield, forms = OPCODES[m]
            prefixes = _seg_prefixes(rng, seg)
            if a67:
                prefixes.append(0x67)
            if o66:
                prefixes.append(0x66)
            rng.shuffle(prefixes)
            if mp is not None:
                prefixes.insert(rng.randrange(len(prefixes) + 1) if rng.random() < 0.2 else len(prefixes), mp)
            rex = bytes([0x40 | rng.randrange(16)]) if with_rex else b""
            r = regfield if regfield is not None else rng.randrange(8)
            register_form = forms == "reg" or (forms == "both" and not memory_only and rng.random() < 0.1)
            if register_form:
                body = bytes([0xC0 | r << 3 | rng.randrange(8)])
            else:
                asz = {16: 32, 32: 16, 64: 32}[cs] if a67 else cs
                body = _memory_body(rng, r, asz)
            segname = seg if seg in (None, "two") else f"{seg:02x}"
            combo = f"family:{m}/{cs}/{segname or '-'}/{'67' if a67 else '-'}/{'rex' if with_rex else '-'}/{'66' if o66 else '-'}"
            raw = bytes(prefixes) + rex + op + body
        yield Encoding(raw + bytes(rng.randrange(256) for _ in range(2)), cs, combo)


def combo_count(memory_only: bool = False) -> int:
    """How many combinations one full walk has (a run this long covers each at least once
    in the family stream; the prefix stream needs 1/prefix_share times as many)."""
    return len(_family_combos(memory_only)) + (0 if memory_only else len(_prefix_combos()))


def family_combo_count(memory_only: bool = False) -> int:
    """How many instruction × code size × prefix combinations the "family" stream walks."""
    return len(_family_combos(memory_only))


def prefix_combo_count() -> int:
    """How many opcode × prefix-set combinations the "prefixes" stream walks."""
    return len(_prefix_combos())
