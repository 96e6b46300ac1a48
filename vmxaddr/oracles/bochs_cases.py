"""The cases the Bochs oracle runs: random encodings of every VMX-family instruction (its own
generator, plus vmxaddr.gen's), kept only when the core decoder accepts them, and the systematic
list that covers every instruction × code size × addressing form once."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from vmxaddr.decode import DecodeError, decode
from vmxaddr.gen import MNEMONICS, RandomChooser, gen_encoding
from vmxaddr.oracles.bochs_guest import Case

# ------------------------------------------------------------ random encodings

# (mnemonic, opcode bytes after the mandatory prefix, mandatory prefix, ModRM.reg or None,
#  operand forms) — SDM Vol. 2 opcode tables.  "m": memory only, "rm": register or
#  memory, "r": register only.
OPCODES: tuple[tuple[str, bytes, int | None, int | None, str], ...] = (
    ("vmptrld", b"\x0f\xc7", None, 6, "m"),
    ("vmptrst", b"\x0f\xc7", None, 7, "m"),
    ("vmclear", b"\x0f\xc7", 0x66, 6, "m"),
    ("vmxon", b"\x0f\xc7", 0xF3, 6, "m"),
    ("vmread", b"\x0f\x78", None, None, "rm"),
    ("vmwrite", b"\x0f\x79", None, None, "rm"),
    ("invept", b"\x0f\x38\x80", 0x66, None, "m"),
    ("invvpid", b"\x0f\x38\x81", 0x66, None, "m"),
    ("invpcid", b"\x0f\x38\x82", 0x66, None, "m"),
    ("sgdt", b"\x0f\x01", None, 0, "m"),
    ("sidt", b"\x0f\x01", None, 1, "m"),
    ("lgdt", b"\x0f\x01", None, 2, "m"),
    ("lidt", b"\x0f\x01", None, 3, "m"),
    ("sldt", b"\x0f\x00", None, 0, "rm"),
    ("str", b"\x0f\x00", None, 1, "rm"),
    ("lldt", b"\x0f\x00", None, 2, "rm"),
    ("ltr", b"\x0f\x00", None, 3, "rm"),
    ("xsaves", b"\x0f\xc7", None, 5, "m"),
    ("xrstors", b"\x0f\xc7", None, 3, "m"),
    ("rdrand", b"\x0f\xc7", None, 6, "r"),
    ("rdseed", b"\x0f\xc7", None, 7, "r"),
)

#: Instructions Bochs 2.7 cannot make exit: XSAVES/XRSTORS exit only when
#: EDX:EAX & IA32_XSS & XSS-exiting bitmap != 0 (SDM 26.1.3), and no Bochs 2.7 CPU
#: model supports any IA32_XSS bit (CPUID.(EAX=0DH,ECX=1):ECX = 0), so they execute.
NOT_EXITING_IN_BOCHS = frozenset({"xsaves", "xrstors"})

_SEG_PREFIXES = (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)
_DISP_CHOICES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                 0xFFFFFFFF, 0xFFFFFFD8, 0xD8, 0x1234, 0x12345678)


def _disp_bytes(rng: random.Random, width: int) -> bytes:
    v = rng.choice(_DISP_CHOICES) if rng.random() < 0.4 else rng.getrandbits(8 * width)
    return (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def random_encoding(rng: random.Random, code_size: int, mnemonic: str | None = None,
                    form: str | None = None) -> bytes:
    """One random encoding of a VMX-family instruction for ``code_size`` code:
    random ModRM/SIB/displacement width, segment override, 67h, REX.  ``form`` is
    "reg" or "mem" to force the operand kind."""
    spec = next(o for o in OPCODES if o[0] == mnemonic) if mnemonic else rng.choice(OPCODES)
    name, opcode, mandatory, reg_fixed, forms = spec
    if form is None:
        kind = "reg" if forms == "r" else "mem" if forms == "m" else rng.choice(("reg", "mem"))
    else:
        kind = form
    legacy: list[int] = []
    if rng.random() < 0.4:
        legacy.append(rng.choice(_SEG_PREFIXES))
    asz = code_size
    if rng.random() < 0.35:
        legacy.append(0x67)
        asz = {16: 32, 32: 16, 64: 32}[code_size]
    if name in ("sgdt", "sidt", "lgdt", "lidt", "sldt", "str", "lldt", "ltr", "rdrand",
                "rdseed") and rng.random() < 0.4:
        legacy.append(0x66)  # operand size (LGDT group bit 11; RDRAND bits 12:11)
    rng.shuffle(legacy)
    if mandatory is not None:
        legacy.append(mandatory)
    rex = 0
    if code_size == 64 and rng.random() < 0.6:
        rex = 0x40 | rng.getrandbits(4)
    reg = reg_fixed if reg_fixed is not None else rng.getrandbits(3)
    tail = b""
    if kind == "reg":
        modrm = 0xC0 | reg << 3 | rng.getrandbits(3)
    elif asz == 16:
        mod = rng.choice((0, 1, 2))
        rm = rng.getrandbits(3)
        modrm = mod << 6 | reg << 3 | rm
        if mod == 1:
            tail = _disp_bytes(rng, 1)
        elif mod == 2 or rm == 6 and mod == 0:
            tail = _disp_bytes(rng, 2)
    else:
        mod = rng.choice((0, 1, 2))
        rm = rng.choice((0, 1, 2, 3, 4, 4, 4, 5, 6, 7))
        modrm = mod << 6 | reg << 3 | rm
        if rm == 4:
            sib = rng.getrandbits(8)
            tail += bytes([sib])
            if mod == 0 and sib & 7 == 5:
                tail += _disp_bytes(rng, 4)
        if mod == 1:
            tail += _disp_bytes(rng, 1)
        elif mod == 2 or (mod == 0 and rm == 5):
            tail += _disp_bytes(rng, 4)
    out = bytes(legacy)
    if rex:
        out += bytes([rex])
    return out + opcode + bytes([modrm]) + tail

def _decodes(code: bytes, code_size: int) -> Any:

    try:
        return decode(code, code_size)
    except DecodeError:
        return None


def random_cases(n: int, seed: int, include_not_exiting: bool = False,
                 cpl3: float = 0.1) -> list[Case]:
    """``n`` random cases over every instruction x code size x addressing form, each one
    an encoding the core decoder accepts.  The first ones walk every (instruction,
    code size, operand kind) in turn so that small ``n`` still covers them.  A
    fraction ``cpl3`` runs at CPL 3."""
    rng = random.Random(seed)
    use_core_gen = _core_generator()
    combos = [(o[0], cs, kind) for o in OPCODES for cs in (16, 32, 64)
              for kind in (("reg",) if o[4] == "r" else ("mem",) if o[4] == "m" else ("reg", "mem"))
              if include_not_exiting or o[0] not in NOT_EXITING_IN_BOCHS]
    out: list[Case] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError("could not generate decodable encodings")
        if len(out) < 4 * len(combos) or rng.random() < 0.5:
            name, cs, kind = combos[len(out) % len(combos)] if len(out) < 4 * len(combos) \
                else rng.choice(combos)
            code = random_encoding(rng, cs, name, kind)
        else:
            # the core's generator too (double segment prefixes, mandatory prefix placed
            # among the others), so the oracle also sees the encodings the other checks use
            code, cs = use_core_gen(rng)
            name = None
        instr = _decodes(code, cs)
        if instr is None or (name is not None and instr.mnemonic != name) or instr.length != len(code):
            continue
        if not include_not_exiting and instr.mnemonic in NOT_EXITING_IN_BOCHS:
            continue
        out.append(Case(code, cs, cpl=3 if rng.random() < cpl3 else 0))
    return out


def _core_generator() -> Callable[[random.Random], tuple[bytes, int]]:
    names = tuple(m for m in MNEMONICS if m not in NOT_EXITING_IN_BOCHS)

    def gen(rng: random.Random) -> tuple[bytes, int]:
        return gen_encoding(RandomChooser(rng), mnemonics=names, register_forms=0.3)

    return gen


# ------------------------------------------------------------ systematic cases

def _modrm_forms(asz: int) -> list[bytes]:
    """ModRM (+SIB, +displacement) bytes with reg = 0 for every addressing form of
    an address size: each mod x r/m, SIB with/without base and index, every scale,
    no-base disp forms (RIP-relative in 64-bit code for mod=00 r/m=101)."""
    forms: list[bytes] = []
    disp = {0: b"", 1: b"\xd8", 2: b"\x34\x92" if asz == 16 else b"\x78\x56\x34\x92"}
    if asz == 16:
        for mod in (0, 1, 2):
            for rm in range(8):
                tail = disp[mod] if not (mod == 0 and rm == 6) else b"\x34\x12"
                forms.append(bytes([mod << 6 | rm]) + tail)
        return forms
    for mod in (0, 1, 2):
        for rm in range(8):
            if rm == 4:
                continue
            tail = b"\x78\x56\x34\x12" if (mod == 0 and rm == 5) else disp[mod]
            forms.append(bytes([mod << 6 | rm]) + tail)
        # SIB: base eax/index ecx at every scale, no index (100), base esp, base ebp
        for ss in range(4):
            forms.append(bytes([mod << 6 | 4, ss << 6 | 1 << 3 | 0]) + disp[mod])
        forms.append(bytes([mod << 6 | 4, 4 << 3 | 0]) + disp[mod])  # no index
        forms.append(bytes([mod << 6 | 4, 2 << 3 | 4]) + disp[mod])  # base esp
        sib_ebp = bytes([mod << 6 | 4, 1 << 6 | 6 << 3 | 5])
        forms.append(sib_ebp + (b"\xf0\xde\xbc\x9a" if mod == 0 else disp[mod]))  # mod 0: no base
    return forms


def coverage_cases() -> list[Case]:
    """Every exiting instruction x code size x addressing form at least once:
    each ModRM/SIB/displacement form of the native and the 67h address size, each
    segment override, REX.B/X/R/W in 64-bit code, and the register forms."""
    out: list[Case] = []
    for name, opcode, mandatory, reg_fixed, kinds in OPCODES:
        if name in NOT_EXITING_IN_BOCHS:
            continue
        reg = reg_fixed if reg_fixed is not None else 1
        pre = bytes([mandatory]) if mandatory is not None else b""
        for cs in (16, 32, 64):
            if kinds in ("r", "rm"):
                for rm in (0, 3, 7):
                    out.append(Case(pre + opcode + bytes([0xC0 | reg << 3 | rm]), cs))
                if cs == 64:
                    out.append(Case(pre + b"\x4d" + opcode + bytes([0xC0 | reg << 3 | 2]), cs))
                    out.append(Case(pre + b"\x48" + opcode + bytes([0xC0 | reg << 3 | 2]), cs))
                if name in ("rdrand", "rdseed", "sldt", "str", "lldt", "ltr"):
                    out.append(Case(b"\x66" + pre + opcode + bytes([0xC0 | reg << 3 | 5]), cs))
                    out.append(Case(b"\x67" + pre + opcode + bytes([0xC0 | reg << 3 | 5]), cs))
            if kinds == "r":
                out.append(Case(pre + opcode + bytes([0xC0 | reg << 3 | 1]), cs, cpl=3))
                continue
            sizes = {16: (16, 32), 32: (32, 16), 64: (64, 32)}[cs]
            for asz in sizes:
                a67 = b"" if asz == cs else b"\x67"
                for form in _modrm_forms(asz):
                    modrm = bytes([form[0] | reg << 3]) + form[1:]
                    out.append(Case(a67 + pre + opcode + modrm, cs))
            base_form = bytes([0x45 | reg << 3, 0xD8])  # [rBP + disp8]: default SS
            plain = bytes([0x00 | reg << 3])  # [rAX] (16-bit: [BX+SI]): default DS
            for seg in _SEG_PREFIXES:
                out.append(Case(bytes([seg]) + pre + opcode + base_form, cs))
                out.append(Case(bytes([seg]) + pre + opcode + plain, cs))
            if name in ("sgdt", "sidt", "lgdt", "lidt"):
                out.append(Case(b"\x66" + pre + opcode + base_form, cs))
            if cs == 64:
                for rex in (0x41, 0x42, 0x44, 0x48, 0x4F):
                    out.append(Case(pre + bytes([rex]) + opcode + bytes([0x04 | reg << 3, 0xE8]), cs))
                    out.append(Case(pre + bytes([rex]) + opcode + base_form, cs))
            # CPL 3: privileged instructions fault (#GP) before the exit, others exit
            out.append(Case(pre + opcode + base_form, cs, cpl=3))
            out.append(Case(pre + opcode + plain, cs, cpl=3))
    return out
