"""Encodings for the LLVM oracle, which (unlike iced-x86) decodes APX's REX2.

The seeded stream interleaves, per six cases:
  * three from the legacy walk every decoder oracle shares (`encodings.encodings`: each
    instruction × code size × segment prefix × 67 × REX × operand-size 66, and the opcode ×
    prefix-set space), so LLVM checks every legacy form iced-x86 checks;
  * two from a REX2 walk: each instruction REX2 can encode (map 1: the 0F C7, 0F 78/79, 0F 01,
    0F 00 and 0F AE groups; map 0: INS/OUTS) × R4/X4/B4 (R16–R31 as register operand, index and
    base) × W × segment prefix (none, one, two) × 67, with R3/X3/B3, ModRM, SIB (half the memory
    forms, a quarter of those with SIB base 101) and displacement random, and now and then a form
    that must be #UD (REX before REX2, M0 = 0 before 0F, REX2 before the 0F 38 map);
  * one of the other instructions with an instruction-information field (INS/OUTS, TPAUSE,
    UMWAIT, LOADIWKEY, RDMSR/WRMSRNS imm32) from `vmxaddr.gen`, REX2 included.

`exhaustive_rex2()` yields every REX2 payload × ModRM × SIB of VMREAD and VMWRITE.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator

from vmxaddr.gen import NO_REX2, OPCODES, OTHER_OPCODES, SEG_PREFIXES, RandomChooser, gen_encoding
from vmxaddr.oracles.case_stream import Encoding, encodings

REX2_MNEMONICS = tuple(m for m in OPCODES if m not in NO_REX2) + ("ins", "outs", "tpause", "umwait")
OTHER = tuple(OTHER_OPCODES)
DISP_TAIL = bytes.fromhex("78 56 34 92 a5 5a c3 3c")  # displacement bytes, then padding a decoder must not take


def _rex2_combos() -> list[tuple[str, int, int, object, bool]]:
    return [(m, hi, w, seg, a67) for m, hi, w, seg, a67 in
            itertools.product(REX2_MNEMONICS, range(8), (0, 1), (None, "one", "two"), (False, True))]


def rex2_combo_count() -> int:
    """How many REX2 combinations the LLVM stream walks."""
    return len(_rex2_combos())


def _body(rng: random.Random, reg: int, asz: int, forms: str) -> bytes:
    if forms == "reg" or (forms == "both" and rng.random() < 0.15):
        return bytes([0xC0 | reg << 3 | rng.randrange(8)])
    mod = rng.choice((0, 0, 1, 2))
    rm = 4 if rng.random() < 0.5 else rng.randrange(8)
    if asz == 16:
        dsize = 2 if (mod == 0 and rm == 6) else (0, 1, 2)[mod]
        return bytes([mod << 6 | reg << 3 | rm]) + DISP_TAIL[:dsize]
    body = bytes([mod << 6 | reg << 3 | rm])
    dsize = (0, 1, 4)[mod]
    if rm == 4:
        sib = rng.randrange(256)
        if rng.random() < 0.25:
            sib = sib & 0xF8 | 5
        body += bytes([sib])
        if mod == 0 and sib & 7 == 5:
            dsize = 4
    elif rm == 5 and mod == 0:
        dsize = 4
    disp = rng.randrange(1 << 32).to_bytes(4, "little")
    return body + disp[:dsize]


def _rex2_case(rng: random.Random, combo: tuple[str, int, int, object, bool]) -> Encoding:
    m, hi, w, seg, a67 = combo
    prefixes = []
    if seg == "one":
        prefixes.append(rng.choice(SEG_PREFIXES))
    elif seg == "two":
        prefixes += [rng.choice(SEG_PREFIXES), rng.choice(SEG_PREFIXES)]
    if a67:
        prefixes.append(0x67)
    payload = hi << 4 | w << 3 | rng.randrange(8)  # R4 X4 B4 from the combination, R3 X3 B3 random
    odd = rng.random()
    if m in ("ins", "outs"):
        if rng.random() < 0.3:
            prefixes.append(rng.choice((0x66, 0xF3, 0xF2)))
        op = (0x6C if m == "ins" else 0x6E) | rng.randrange(2)
        raw = bytes(prefixes) + bytes([0xD5, payload, op])
        return Encoding(raw + DISP_TAIL[:2], 64, f"rex2:{m}/{hi:03b}/{w}/{seg or '-'}/{'67' if a67 else '-'}")
    if m in ("tpause", "umwait"):
        mp, opcode, regfield, forms = OTHER_OPCODES[m]
    else:
        mp, opcode, regfield, forms = OPCODES[m]
    if mp is not None:
        prefixes.append(mp)
    reg = regfield if regfield is not None else rng.randrange(8)
    asz = 32 if a67 else 64
    rex2 = bytes([0xD5, 0x80 | payload])
    body = opcode[1:] + _body(rng, reg, asz, forms)
    note = ""
    if odd < 0.02:  # REX before REX2: #UD
        rex2 = bytes([0x40 | rng.randrange(16)]) + rex2
        note = "/rex-then-rex2"
    elif odd < 0.04:  # M0 = 0 and the 0F escape written: #UD
        rex2 = bytes([0xD5, payload & 0x7F]) + b"\x0f"
        note = "/m0=0+0f"
    elif odd < 0.06:  # the 0F 38 map (INVEPT & co.) cannot be reached with REX2: #UD
        prefixes = [p for p in prefixes if p not in (0xF2, 0xF3)] + [0x66]
        body = bytes([0x38, 0x80 + rng.randrange(3)]) + _body(rng, rng.randrange(8), asz, "mem")
        note = "/map2"
    raw = bytes(prefixes) + rex2 + body
    return Encoding(raw + DISP_TAIL[:2], 64, f"rex2:{m}/{hi:03b}/{w}/{seg or '-'}/{'67' if a67 else '-'}{note}")


def llvm_encodings(seed: int) -> Iterator[Encoding]:
    """Endless seeded stream: legacy walk, REX2 walk and the other instructions, 3:2:1."""
    legacy = encodings(seed)
    rng = random.Random(seed * 7919 + 23)
    ch = RandomChooser(rng)
    combos = _rex2_combos()
    rng.shuffle(combos)
    k = 0
    while True:
        for _ in range(3):
            yield next(legacy)
        for _ in range(2):
            yield _rex2_case(rng, combos[k % len(combos)])
            k += 1
        raw, cs = gen_encoding(ch, mnemonics=OTHER, rex2=0.4)
        yield Encoding(raw + DISP_TAIL[:2], cs, f"other:{cs}")


def _memory_forms(opcode: int, payload: int, subset: bool) -> Iterator[bytes]:
    """Every ModRM (and SIB where there is one) after D5 payload opcode. `subset`: ModRM.reg, the
    SIB scale and the SIB index (besides 100, "none") fixed per payload, every base kept."""
    regs = (payload & 7,) if subset else range(8)
    scales = (payload >> 6,) if subset else range(4)
    indexes = sorted({4, payload >> 3 & 7}) if subset else range(8)
    for mod in range(4):
        for reg in regs:
            for rm in range(8):
                modrm = mod << 6 | reg << 3 | rm
                if mod != 3 and rm == 4:
                    for ss in scales:
                        for index in indexes:
                            for base in range(8):
                                yield bytes([0xD5, payload, opcode, modrm, ss << 6 | index << 3 | base])
                else:
                    yield bytes([0xD5, payload, opcode, modrm])


def exhaustive_rex2(subset: bool = False, payloads: Iterable[int] = range(256)) -> Iterator[Encoding]:
    """Every REX2 payload (M0 = 0 included: #UD) × ModRM × SIB of VMREAD (0F 78) and VMWRITE
    (0F 79), each followed by displacement bytes and padding: 2 × 256 × 6376 = 3 264 512 cases.
    `subset` (ModRM.reg, SIB scale and index fixed per payload) has 37 888."""
    for payload in payloads:
        for opcode in (0x78, 0x79):
            for head in _memory_forms(opcode, payload, subset):
                yield Encoding(head + DISP_TAIL, 64, f"exhaustive:{opcode:02x}/{payload:02x}")


def exhaustive_count(subset: bool = False) -> int:
    """How many encodings the exhaustive LLVM run checks (`subset`: the smaller walk)."""
    if subset:
        return sum(2 * (3 * 7 + 8 + 3 * 8 * len({4, p >> 3 & 7})) for p in range(256))
    return 2 * 256 * (3 * 8 * 7 + 64 + 3 * 8 * 256)
