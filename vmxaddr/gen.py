"""Case generators, written once and driven two ways: by `random.Random` (fast, for throughput)
or by hypothesis's `draw` (for shrinking to minimal witnesses; see vmxaddr.strategies).

Encodings cover every VMX-family instruction, ModRM/SIB form, displacement width, prefix
combination and code size; states lean on the edges where implementations go wrong.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from vmxaddr.exitinfo import Policy
from vmxaddr.state import CpuState, Segment

T = TypeVar("T")


class Chooser(Protocol):
    """Where a generator gets its random choices: a seeded Random, a hypothesis draw, or a recorded replay."""
    def choice(self, seq: Sequence[T]) -> T:
        """One element of `seq`."""
    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
    def chance(self, p: float) -> bool:
        """True with probability `p`."""


def randint(rng: random.Random, lo: int, hi: int) -> int:
    """rng.randint(lo, hi) without its argument checks and two Python-level calls: the same draws
    (CPython's Random._randbelow_with_getrandbits; test_diff_fuzz checks they stay equal)."""
    n = hi - lo + 1
    k = n.bit_length()
    getrandbits = rng.getrandbits
    r = getrandbits(k)
    while r >= n:
        r = getrandbits(k)
    return lo + r


class RandomChooser:
    """Choices from a seeded random.Random (the fuzzer's fast path)."""
    __slots__ = ("r",)

    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def choice(self, seq: Sequence[T]) -> T:
        """One element of `seq`, uniformly."""
        return seq[int(self.r.random() * len(seq))]

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi], uniformly."""
        return randint(self.r, lo, hi)

    def chance(self, p: float) -> bool:
        """True with probability `p`."""
        return self.r.random() < p


class DrawChooser:
    """Adapts hypothesis's `draw` so that shrinking moves toward the first option / low values."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def choice(self, seq: Sequence[T]) -> T:
        """One element of `seq`, drawn so that hypothesis shrinks toward the first."""
        return seq[self.draw(self.st.integers(0, len(seq) - 1))]

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi], drawn so that hypothesis shrinks it."""
        return int(self.draw(self.st.integers(lo, hi)))

    def chance(self, p: float) -> bool:
        # shrinks toward False: the plain case
        """True with probability about `p`, shrinking toward False (the plain case)."""
        return bool(self.draw(self.st.integers(0, 999)) >= 1000 - int(p * 1000))


# mnemonic -> (mandatory prefix, opcode bytes, ModRM.reg or None for any, forms)
OPCODES: dict[str, tuple[int | None, bytes, int | None, str]] = {
    "vmptrld": (None, b"\x0f\xc7", 6, "mem"),
    "vmclear": (0x66, b"\x0f\xc7", 6, "mem"),
    "vmxon": (0xF3, b"\x0f\xc7", 6, "mem"),
    "vmptrst": (None, b"\x0f\xc7", 7, "mem"),
    "vmread": (None, b"\x0f\x78", None, "both"),
    "vmwrite": (None, b"\x0f\x79", None, "both"),
    "invept": (0x66, b"\x0f\x38\x80", None, "mem"),
    "invvpid": (0x66, b"\x0f\x38\x81", None, "mem"),
    "invpcid": (0x66, b"\x0f\x38\x82", None, "mem"),
    "sgdt": (None, b"\x0f\x01", 0, "mem"),
    "sidt": (None, b"\x0f\x01", 1, "mem"),
    "lgdt": (None, b"\x0f\x01", 2, "mem"),
    "lidt": (None, b"\x0f\x01", 3, "mem"),
    "sldt": (None, b"\x0f\x00", 0, "both"),
    "str": (None, b"\x0f\x00", 1, "both"),
    "lldt": (None, b"\x0f\x00", 2, "both"),
    "ltr": (None, b"\x0f\x00", 3, "both"),
    "xsaves": (None, b"\x0f\xc7", 5, "mem"),
    "xrstors": (None, b"\x0f\xc7", 3, "mem"),
    "rdrand": (None, b"\x0f\xc7", 6, "reg"),
    "rdseed": (None, b"\x0f\xc7", 7, "reg"),
}
MNEMONICS = tuple(OPCODES)
MEMORY_MNEMONICS = tuple(m for m, v in OPCODES.items() if v[3] != "reg")

# The other instructions with an instruction-information field (issue 16): string I/O with its
# implicit operand, and the register-only TPAUSE, UMWAIT, LOADIWKEY. Kept out of MNEMONICS so that
# existing seeds draw what they drew before; ALL_MNEMONICS has everything.
OTHER_OPCODES: dict[str, tuple[int | None, bytes, int | None, str]] = {
    "ins": (None, b"\x6c", None, "string"),  # 6C, or 6D with the low bit set
    "outs": (None, b"\x6e", None, "string"),
    "tpause": (0x66, b"\x0f\xae", 6, "reg"),
    "umwait": (0xF2, b"\x0f\xae", 6, "reg"),
    "loadiwkey": (0xF3, b"\x0f\x38\xdc", None, "reg"),
    # VEX.128.F2/F3.M7.W0 F6 /0 id, 64-bit mode only (vmxaddr.decode_other.msr_imm)
    "rdmsr": (None, b"\xc4", 0, "vex"),
    "wrmsrns": (None, b"\xc4", 0, "vex"),
}
STRING_MNEMONICS = ("ins", "outs")
ALL_MNEMONICS = MNEMONICS + tuple(OTHER_OPCODES)
ALL_MEMORY_MNEMONICS = MEMORY_MNEMONICS + STRING_MNEMONICS
# REX2 (APX) can encode the map-0/map-1 instructions only: not INVEPT/INVVPID/INVPCID/LOADIWKEY
# (0F 38, map 2; vmxaddr.rex2).
NO_REX2 = frozenset(("invept", "invvpid", "invpcid", "loadiwkey", "rdmsr", "wrmsrns"))
VMX_MNEMONICS = ("vmptrld", "vmclear", "vmxon", "vmptrst", "vmread", "vmwrite", "invept", "invvpid")
SEG_PREFIXES = (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)

DISP8 = (0, 1, -1, 0x7F, -0x80, 0x10, -0x28)
DISP16 = (0, 1, -1, 0x7FFF, -0x8000, 0x7FF8, -0x10)
DISP32 = (0, 1, -1, 0x7FFFFFFF, -0x80000000, 0x7FFFFFF8, -0x28, 0x1000)


def _disp(ch: Chooser, size: int) -> bytes:
    edges = {1: DISP8, 2: DISP16, 4: DISP32}[size]
    bits = size * 8
    v = ch.choice(edges) if ch.chance(0.5) else ch.integer(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return v.to_bytes(size, "little", signed=True)


def gen_encoding(ch: Chooser, code_sizes: Sequence[int] = (16, 32, 64),
                 mnemonics: Sequence[str] = MEMORY_MNEMONICS, register_forms: float = 0.05,
                 rex2: float = 0.0) -> tuple[bytes, int]:
    """Bytes of one valid VMX-family instruction and the code size to decode them in. `rex2`:
    the share of 64-bit encodings given an APX REX2 prefix (registers R16-R31) where allowed."""
    cs = ch.choice(code_sizes)
    m = ch.choice(mnemonics)
    if m in OTHER_OPCODES:
        return _gen_other(ch, cs, m, rex2), cs
    mp, opcode, regfield, forms = OPCODES[m]
    prefixes: list[int] = []
    if ch.chance(0.4):
        prefixes.append(ch.choice(SEG_PREFIXES))
        if ch.chance(0.1):
            prefixes.append(ch.choice(SEG_PREFIXES))
    if ch.chance(0.3):
        prefixes.append(0x67)
    if mp is None and m in ("sgdt", "sidt", "lgdt", "lidt", "rdrand", "rdseed") and ch.chance(0.2):
        prefixes.append(0x66)  # operand size
    if mp is not None:
        # the mandatory prefix usually comes last; anywhere among the legacy prefixes is legal
        prefixes.insert(ch.integer(0, len(prefixes)) if ch.chance(0.2) else len(prefixes), mp)
    rex = b""
    if rex2 and cs == 64 and m not in NO_REX2 and ch.chance(rex2):
        # REX2 replaces REX (a REX before it is #UD) and the 0F escape (M0 = 1 selects map 1).
        rex = bytes([0xD5, 0x80 | ch.integer(0, 0x7F)])
        opcode = opcode[1:]
    elif cs == 64 and ch.chance(0.4):
        rex = bytes([0x40 | ch.integer(0, 15)])
    reg = regfield if regfield is not None else ch.integer(0, 7)
    if forms == "reg" or (forms == "both" and ch.chance(register_forms)):
        modrm = 0xC0 | reg << 3 | ch.integer(0, 7)
        return bytes(prefixes) + rex + opcode + bytes([modrm]), cs
    mod = ch.choice((0, 1, 2))
    rm = ch.integer(0, 7)
    body = bytes([mod << 6 | reg << 3 | rm])
    asz = {16: 32, 32: 16, 64: 32}[cs] if 0x67 in prefixes else cs
    if asz == 16:
        dsize = 2 if (mod == 0 and rm == 6) else (0, 1, 2)[mod]
    else:
        dsize = (0, 1, 4)[mod]
        if rm == 4:
            sib = ch.integer(0, 255)
            body += bytes([sib])
            if mod == 0 and sib & 7 == 5:
                dsize = 4
        elif rm == 5 and mod == 0:
            dsize = 4
    if dsize:
        body += _disp(ch, dsize)
    return bytes(prefixes) + rex + opcode + body, cs


def _gen_other(ch: Chooser, cs: int, m: str, rex2: float) -> bytes:
    mp, opcode, regfield, forms = OTHER_OPCODES[m]
    prefixes: list[int] = []
    if forms == "vex":
        if cs != 64:  # no VEX map 7 outside 64-bit mode: another register-only form instead
            return _gen_other(ch, cs, "tpause", rex2)
        pp = 3 if m == "rdmsr" else 2
        b1 = 0xE0 ^ (ch.integer(0, 1) << 5) | 7  # R-bar X-bar set, B-bar either: RAX..R15
        imm = ch.choice((0x10, 0x1B, 0xC0000080, 0x6E0, 0)) if ch.chance(0.5) else ch.integer(0, 0xFFFFFFFF)
        return bytes([0xC4, b1, 0x78 | pp, 0xF6, 0xC0 | ch.integer(0, 7)]) + imm.to_bytes(4, "little")
    if forms == "string":
        if ch.chance(0.4):
            prefixes.append(ch.choice(SEG_PREFIXES))  # effective on OUTS only (INS always uses ES)
        if ch.chance(0.3):
            prefixes.append(0x67)
        if ch.chance(0.3):
            prefixes.append(0x66)
        if ch.chance(0.5):
            prefixes.append(ch.choice((0xF3, 0xF2)))  # both repeat INS/OUTS
        op = opcode[0] | ch.integer(0, 1)  # 6C/6E bytes, 6D/6F words or doublewords
        rex = b""
        if cs == 64 and ch.chance(0.3):
            rex = bytes([0xD5, ch.integer(0, 0x7F)]) if rex2 and ch.chance(rex2) else bytes([0x40 | ch.integer(0, 15)])
        return bytes(prefixes) + rex + bytes([op])
    assert mp is not None
    prefixes.append(mp)
    reg = regfield if regfield is not None else ch.integer(0, 7)
    modrm = bytes([0xC0 | reg << 3 | ch.integer(0, 7)])
    if cs == 64 and rex2 and m not in NO_REX2 and ch.chance(rex2):
        return bytes(prefixes) + bytes([0xD5, 0x80 | ch.integer(0, 0x7F)]) + opcode[1:] + modrm
    rex = bytes([0x40 | ch.integer(0, 15)]) if cs == 64 and ch.chance(0.4) else b""
    return bytes(prefixes) + rex + opcode + modrm


def gen_state_egprs(ch: Chooser) -> tuple[int, ...]:
    """Values for R16-R31 (APX), drawn like the legacy registers."""
    return tuple(_reg_value(ch) for _ in range(16))


# -- states ---------------------------------------------------------------------------------------

def _reg_value(ch: Chooser) -> int:
    kind = ch.integer(0, 9)
    if kind == 0:
        return 0
    if kind == 1:
        return ch.integer(0, 0x10000)
    if kind == 2:  # near 2^16
        return (0x10000 + ch.integer(-16, 16)) & 0xFFFFFFFF
    if kind == 3:  # near 2^32
        return (1 << 32) + ch.integer(-16, 16)
    if kind == 4:  # garbage above bit 31, small low half
        return ch.integer(1, 0xFFFFFFFF) << 32 | ch.integer(0, 0x1000)
    if kind == 5:  # near 2^47
        return ((1 << 47) + ch.integer(-16, 16)) & ((1 << 64) - 1)
    if kind == 6:  # near 2^56
        return (1 << 56) + ch.integer(-16, 16)
    if kind == 7:  # negative
        return (-ch.integer(1, 0x10000)) & ((1 << 64) - 1)
    if kind == 8:
        return ch.integer(0, 0xFFFFFFFF)
    return ch.integer(0, (1 << 64) - 1)


FLAT = Segment()


def _segment(ch: Chooser, stack: bool = False) -> Segment:
    kind = ch.integer(0, 9)
    if kind <= 3:
        return FLAT  # flat read/write data
    base = ch.choice((0, 0, 0x1000, 0xFFFFF000, 0x100000000, 0x7FFFFFFFF000, ch.integer(0, 0xFFFFFFFF)))
    if kind == 9:
        base = ch.integer(0, (1 << 64) - 1)  # only FS/GS can hold this in 64-bit mode; harmless elsewhere
    base &= (1 << 64) - 1 if kind == 9 else 0xFFFFFFFFFFFF
    limit = ch.choice((0xFFFFFFFF, 0xFFFF, 0xFFF, 0xFFFFF, 0x1007, ch.integer(0, 0xFFFFFFFF)))
    typ = ch.choice((3, 3, 1, 7, 5, 0xB, 9, 0xF))
    return Segment(base=base, limit=limit, type=typ, db=ch.choice((1, 1, 0)),
                   unusable=ch.chance(0.1))


# The default state of each code size (gen_state reads its mode and CS): made once, not per case.
_DEFAULT_STATES: dict[int, CpuState] = {}
_STATE_SEGMENTS = ("es", "ss", "ds", "fs", "gs")


def gen_state(ch: Chooser, code_size: int, weird_modes: float = 0.03) -> CpuState:
    """A random CPU state for `code_size` code: register values and segments leaning on edges, sometimes CPL 3, LA57 or an unusual mode."""
    st = _DEFAULT_STATES.get(code_size)
    if st is None:
        st = _DEFAULT_STATES[code_size] = CpuState.for_code_size(code_size)
    mode = st.mode
    if code_size != 64 and ch.chance(weird_modes):
        mode = ch.choice(("real", "virtual-8086", "compatibility"))
    # the draws in the order they have always been made (a seed's cases stay the same): 16
    # registers, then ES, SS, DS, FS, GS, then CPL, LA57 and RIP
    regs = tuple([_reg_value(ch) for _ in range(16)])
    es, ss, ds, fs, gs = [_segment(ch) for _ in _STATE_SEGMENTS]
    return CpuState(mode=mode, cpl=3 if ch.chance(0.03) else 0, la57=ch.chance(0.2), regs=regs,
                    rip=ch.choice((0x1000, 0xFFFFFFF0, 0x7FFFFFFFFFF0, ch.integer(0, 0xFFFFFFFF))),
                    cs=st.cs, es=es, ss=ss, ds=ds, fs=fs, gs=gs)


def gen_policy(ch: Chooser) -> Policy:
    """A random encoder policy (exit-qualification extension, undefined bits, seed)."""
    return Policy(exit_qual=ch.choice(("zero-extend", "sign-extend", "random-upper")),
                  undefined_bits=ch.choice(("zero", "random")), seed=ch.integer(0, 1 << 16))
