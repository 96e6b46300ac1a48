"""Decode one VMX-family instruction: bytes + code size -> an immutable Instruction record.

Two decoders read every operand form. Our own reads the prefixes, opcode, ModRM, SIB and
displacement of this small instruction family (SDM Vol. 2 §2.1, tables 2-1 … 2-3); capstone 5
reads the first instance of each operand form (see `_form`: the bytes with the register numbers
and the choice of segment override left out) independently and must agree on the length and on
the memory operand's base, index and scale, else the decode fails loudly
(`DecodeError(kind="decoder-disagreement")`).
Where capstone 5 is known to be wrong for this family, the guard is ours and is listed in
docs/known-decoder-issues.md (the mnemonic of 0F C7 /6 in 16-bit code, INVEPT/INVVPID/INVPCID in
16-bit code, no default segment, ignored 64-bit-mode segment prefixes, displacement width).
"""

from __future__ import annotations

from typing import Any, NoReturn

from vmxaddr import rex2 as rex2_mod
from vmxaddr.capstone_guard import _capstone_guard, _capstone_shape, capstone_guard_on, capstone_view
from vmxaddr.decode_other import clear_memo as clear_other_memo
from vmxaddr.decode_other import ins_outs, loadiwkey, msr_imm, waitpkg
from vmxaddr.instruction import SEGMENT_PREFIX, DecodeError, Instruction, MemoryOperand, segment_override
from vmxaddr.isa import RBP, REG16, REG32, REG64, RSP, SEGMENTS, SPECS, Layout

LEGACY_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))
MAX_LENGTH = 15  # SDM Vol. 2 §2.3.11: longer instructions raise #GP

# 16-bit addressing, ModRM.rm -> (base, index) (SDM Vol. 2 Table 2-1). rm 6 with mod 0 is disp16.
_RM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, None), (7, None), (5, None), (3, None))


def parse_hex(text: str) -> bytes:
    """'0f 78 45 d8' / '0f7845d8' / '0x0f,0x78' -> bytes; ValueError with a reason otherwise."""
    t = text.strip().lower().replace("0x", "").replace(",", " ").replace("\\x", " ")
    t = "".join(t.split())
    if not t:
        raise ValueError("no instruction bytes given")
    if len(t) % 2:
        raise ValueError(f"odd number of hex digits in {text!r}")
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise ValueError(f"not hexadecimal: {text!r}") from None


def _mandatory_prefix(prefixes: tuple[int, ...]) -> int | None:
    # The last F2/F3 selects the instruction when present; else 66 does (SDM Vol. 2 §2.1.2,
    # "mandatory prefix"); iced-x86 and hardware agree that F3 66 0F C7 /6 is VMXON.
    rep = None
    for p in prefixes:
        if p in (0xF2, 0xF3):
            rep = p
    if rep is not None:
        return rep
    return 0x66 if 0x66 in prefixes else None


_NAMES = {None: "no", 0x66: "66", 0xF2: "F2", 0xF3: "F3"}


# Memo of successful decodes per operand shape: the bytes before the displacement (prefixes,
# opcode, ModRM, SIB) and the code size. Those bytes alone decide everything but the displacement
# (the capstone guard, too, reads the bytes with the displacement zeroed), so a hit only patches
# the displacement in. A shape is never a proper prefix of another shape: decoding reads the bytes
# in order and stops at the displacement, so the first stored prefix of `data` is its shape.
# A second, smaller memo holds whole byte strings (a fuzzer meets the same edge displacements
# again and again), so a repeat costs one lookup.
_SHAPES: dict[int, dict[bytes, tuple[Any, ...]]] = {16: {}, 32: {}, 64: {}}
_WHOLE: dict[int, dict[bytes, Instruction]] = {16: {}, 32: {}, 64: {}}
_MEMO_MAX = 1 << 16
_new = tuple.__new__  # builds a NamedTuple from a ready tuple, skipping its generated __new__


def decode(data: bytes | bytearray | memoryview, code_size: int) -> Instruction:
    """Decode the instruction at the start of `data` (trailing bytes are ignored)."""
    if type(data) is not bytes or len(data) > MAX_LENGTH + 1:
        data = bytes(data[:MAX_LENGTH + 1])
    whole = _WHOLE.get(code_size)
    if whole is None:
        return decode_uncached(data, code_size)  # raises the code-size error
    instr = whole.get(data)
    if instr is None:
        instr = _decode_shape(data, code_size)
        if len(whole) >= _MEMO_MAX:
            whole.clear()
        whole[data] = instr
    return instr


def _decode_shape(data: bytes, code_size: int) -> Instruction:
    shapes = _SHAPES[code_size]
    for k in range(3, min(len(data), MAX_LENGTH) + 1):
        hit = shapes.get(data[:k])
        if hit is not None:
            length, dsize, head, mid, tail, op_head, op_tail = hit
            if len(data) < length:
                break  # truncated: let the full decoder say so
            if op_head is None:  # no displacement to patch: mid ends with the template's operand
                return _new(Instruction, head + (data[:length],) + mid + tail)
            op = _new(MemoryOperand, op_head + (int.from_bytes(data[k:length], "little", signed=True),) + op_tail)
            return _new(Instruction, head + (data[:length],) + mid + (op,) + tail)
    instr = decode_uncached(data, code_size)
    operand = instr.operand
    cut = operand.disp_offset if operand is not None else instr.length
    if len(shapes) >= _MEMO_MAX:
        shapes.clear()
    # The template: the instruction's fields around `raw` and `operand`, and the operand's around
    # `displacement`, so that a hit only splices the new bytes and displacement in.
    t = tuple(instr)
    if operand is not None and operand.disp_size:
        o = tuple(operand)
        shapes[data[:cut]] = (instr.length, operand.disp_size, t[:_RAW], t[_RAW + 1:_OPERAND], t[_OPERAND + 1:],
                              o[:_DISPLACEMENT], o[_DISPLACEMENT + 1:])
    else:
        shapes[data[:cut]] = (instr.length, 0, t[:_RAW], t[_RAW + 1:_OPERAND + 1], t[_OPERAND + 1:], None, None)
    return instr


_RAW, _OPERAND = Instruction._fields.index("raw"), Instruction._fields.index("operand")
_DISPLACEMENT = MemoryOperand._fields.index("displacement")


def clear_memos() -> None:
    """Forget every memoised decode and capstone check (benchmarks and tests start cold with it)."""
    for shapes in _SHAPES.values():
        shapes.clear()
    for whole in _WHOLE.values():
        whole.clear()
    _GUARDED.clear()
    _capstone_shape.cache_clear()
    clear_other_memo()


def decode_uncached(data: bytes | bytearray | memoryview, code_size: int) -> Instruction:
    """`decode` without the shape memo (the memo's test compares the two)."""
    if code_size not in (16, 32, 64):
        raise DecodeError("mode", f"code size must be 16, 32 or 64, not {code_size}")
    data = bytes(data[:MAX_LENGTH + 1])
    n = len(data)
    if not n:
        raise DecodeError("empty", "no instruction bytes")
    i = 0
    prefixes: list[int] = []
    rex = 0
    while i < n:
        b = data[i]
        if b in LEGACY_PREFIXES:
            prefixes.append(b)
            rex = 0  # a REX prefix followed by a legacy prefix is ignored (Vol. 2 §2.2.1)
        elif code_size == 64 and 0x40 <= b <= 0x4F:
            rex = b
        else:
            break
        i += 1
    rx2: rex2_mod.Rex2 | None = None
    if code_size == 64 and i < n and data[i] == rex2_mod.REX2:
        rx2, i = rex2_mod.parse(data, i, rex)
    pfx = tuple(prefixes)
    opcode_at = i
    sib_at = -1
    rex2 = rex2_mod.PRESENT | rx2.payload if rx2 is not None else 0

    if i >= n:
        _ran_out(n)
    first = data[i]
    if first == 0xC4 and code_size == 64 and rx2 is None:  # VEX: of this family only RDMSR/WRMSRNS imm32
        return msr_imm(data, i, pfx, rex)
    if rx2 is not None:
        rex2_mod.check_opcode(rx2, first)
        if not rx2.m0:  # legacy map 0: of this family only INS/OUTS (6C-6F)
            if 0x6C <= first <= 0x6F:
                return ins_outs(data, code_size, i, pfx, 0, rex2)
            if first == 0x0F:
                raise DecodeError("rex2", "REX2 with M0 = 0 followed by 0F: REX2 selects map 1 with M0 = 1 and the "
                                  "0F escape is not written; this is #UD")
            raise DecodeError("not-vmx", f"REX2 map 0 opcode {first:02x} is not a VMX-family instruction")
        op = first  # legacy map 1: the opcode follows REX2 without the 0F escape
        i += 1
    else:
        if 0x6C <= first <= 0x6F:
            return ins_outs(data, code_size, i, pfx, rex, 0)
        if first != 0x0F:
            raise DecodeError("not-vmx", f"opcode {first:02x} is not a VMX-family instruction (those start 0F, "
                              "or are INS/OUTS 6C-6F)")
        i += 1
        if i >= n:
            _ran_out(n)
        op = data[i]
        i += 1
    mp = _mandatory_prefix(pfx)
    if rx2 is not None:
        rex_w, rex_r, rex_x, rex_b = rx2.w, rx2.r, rx2.x, rx2.b
    else:
        rex_w, rex_r, rex_x, rex_b = rex & 8, (rex & 4) << 1, (rex & 2) << 2, (rex & 1) << 3
    if op == 0x38:
        if i >= n:
            _ran_out(n)
        op3 = data[i]
        i += 1
        if op3 == 0xDC:
            if i >= n:
                _ran_out(n)
            return loadiwkey(data, code_size, i, pfx, mp, rex)
        if op3 not in (0x80, 0x81, 0x82):
            raise DecodeError("not-vmx", f"0F 38 {op3:02x} is not a VMX-family instruction")
    elif op == 0xAE:
        if i >= n:
            _ran_out(n)
        return waitpkg(data, code_size, i, pfx, mp, rex, rex_b, rex2)
    elif op not in (0x78, 0x79, 0xC7, 0x01, 0x00):
        raise DecodeError("not-vmx", f"0F {op:02x} is not a VMX-family instruction")
    else:
        op3 = -1
    if i >= n:
        _ran_out(n)
    modrm = data[i]
    modrm_at = i
    i += 1
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7

    mnemonic = _classify(op, op3, mod, reg, mp)
    if 0xF0 in pfx:
        raise DecodeError("lock", f"LOCK prefix on {mnemonic.upper()} raises #UD")
    spec = SPECS[mnemonic]
    if mod == 3 and spec.memory == "required":
        raise DecodeError("register-form", f"{mnemonic.upper()} requires a memory operand; ModRM {modrm:02x} names a register (#UD)")

    opsize = 0x66 in pfx and mnemonic not in ("vmclear", "invept", "invvpid", "invpcid")
    operand: MemoryOperand | None = None
    reg1 = reg2 = None
    if mod == 3:
        reg1 = rm | rex_b
    else:
        asize = _OTHER_ADDRESS_SIZE[code_size] if 0x67 in pfx else code_size
        base: int | None
        index: int | None = None
        scale = 1
        rip_rel = False
        default_ss = False
        if asize == 16:
            if mod == 0 and rm == 6:
                base, dsize = None, 2
            else:
                base, index = _RM16[rm]
                dsize = (0, 1, 2)[mod]
            default_ss = base == RBP
        else:
            if rm == 4:
                if i >= n:
                    _ran_out(n)
                sib = data[i]
                sib_at = i
                i += 1
                ss_, idx, sbase = sib >> 6, (sib >> 3) & 7, sib & 7
                idx |= rex_x
                index = None if idx == RSP else idx
                scale = 1 << ss_
                if sbase == 5 and mod == 0:
                    base, dsize = None, 4
                else:
                    base, dsize = sbase | rex_b, (0, 1, 4)[mod]
                    default_ss = sbase in (RSP, RBP) and not rex_b
            elif rm == 5 and mod == 0:
                base, dsize = None, 4
                rip_rel = code_size == 64
            else:
                base, dsize = rm | rex_b, (0, 1, 4)[mod]
                default_ss = rm == RBP and not rex_b
        if i + dsize > n:
            _ran_out(n)
        disp_offset = i
        disp = int.from_bytes(data[i:i + dsize], "little", signed=True) if dsize else 0
        i += dsize
        seg_prefix, eff = segment_override(pfx, code_size) if pfx else (None, None)
        segment = eff or ("ss" if default_ss else "ds")
        operand = _new(MemoryOperand, (segment, seg_prefix, base, index, scale, disp, dsize, disp_offset, asize,
                                       rip_rel, spec.size64 if code_size == 64 else spec.size, spec.access or "read"))
    if i > MAX_LENGTH:
        raise DecodeError("too-long", f"instruction would be {i} bytes; the limit is 15 (#GP)")
    layout = spec.layout  # enum identity: `.value` is a slow property
    if layout is Layout.VMREAD or layout is Layout.INV:
        reg2 = reg | rex_r
    operand_size = None
    if layout is Layout.DT:
        # Operand size of LGDT & co.: 66 flips it outside 64-bit mode; undefined in 64-bit mode.
        operand_size = None if code_size == 64 else (16 if (code_size == 16) != opsize else 32)
    elif layout is Layout.RDRAND:
        operand_size = 64 if rex_w else (16 if (code_size == 16) != opsize else 32)
    raw = data[:i]
    instr = _new(Instruction, (mnemonic, code_size, i, raw, pfx, rex, operand, reg1, reg2, operand_size, spec, rex2, None))
    if rex2:
        return instr  # capstone 5 cannot decode REX2 (docs/known-decoder-issues.md): no guard
    form = _form(data, code_size, opcode_at, modrm_at, sib_at, op, operand is not None and operand.address_size == 16)
    if form not in _GUARDED:
        _capstone_guard(raw if operand is None else _zero_disp(raw, operand), code_size, instr)
        if len(_GUARDED) >= _MEMO_MAX:
            _GUARDED.clear()
        _GUARDED.add(form)
    return instr


def _ran_out(n: int) -> NoReturn:
    if n > MAX_LENGTH:
        raise DecodeError("too-long", "instruction longer than 15 bytes (#GP)")
    raise DecodeError("truncated", f"bytes run out after {n} byte(s): the instruction is incomplete")


_OTHER_ADDRESS_SIZE = {16: 32, 32: 16, 64: 32}  # what a 67 prefix selects (SDM Vol. 1 §3.6)


# The capstone guard runs once per operand *form*: the shape with the register numbers that only
# name a register left out. Segment-override prefixes all count as 3E and REX as 40 plus its X
# and B bits (none of those change length, base, index or scale, which are what the guard
# compares); ModRM.reg counts only where it extends the opcode (0F C7, 0F 01, 0F 00); ModRM.rm
# and the SIB base count only as 4 or 5, and the SIB index only as 4 (their special values), except
# in 16-bit addressing, where every r/m value is its own table row. Each form is checked with the
# first real bytes met; the next shapes of the form take the same path through the decoder.
_GUARDED: set[tuple[int, bytes, bytes, int, int]] = set()
_CANON_PREFIX = {cs: bytes(0x3E if b in SEGMENT_PREFIX else 0x40 | (b & 3) if cs == 64 and 0x40 <= b <= 0x4F else b
                           for b in range(256)) for cs in (16, 32, 64)}
_SPECIAL_RM = (0, 0, 0, 0, 4, 5, 0, 0)


def _form(data: bytes, code_size: int, opcode_at: int, modrm_at: int, sib_at: int, op: int,
          addr16: bool) -> tuple[int, bytes, bytes, int, int]:
    modrm = data[modrm_at]
    mod, reg, rm = modrm >> 6, modrm >> 3 & 7, modrm & 7
    if op not in (0xC7, 0x01, 0x00):
        reg = 0  # a register operand (VMREAD/VMWRITE, INVEPT & co.)
    if not addr16 or mod == 3:
        rm = _SPECIAL_RM[rm]
    sib = -1
    if sib_at >= 0:
        b = data[sib_at]
        sib = (b & 0xC0) | (0x20 if b & 0x38 == 0x20 else 0) | _SPECIAL_RM[b & 7]
    return (code_size, data[:opcode_at].translate(_CANON_PREFIX[code_size]), data[opcode_at:modrm_at],
            mod << 6 | reg << 3 | rm, sib)


_C7_MEMORY = {(6, None): "vmptrld", (6, 0x66): "vmclear", (6, 0xF3): "vmxon",
              (7, None): "vmptrst", (5, None): "xsaves", (3, None): "xrstors"}


def _classify(op: int, op3: int, mod: int, reg: int, mp: int | None) -> str:
    """The instruction's identity from opcode, ModRM and mandatory prefix (our guard for
    capstone 5, which calls 66 0F C7 /6 VMPTRLD in 16-bit code)."""
    if op == 0xC7:
        if mod != 3:
            m = _C7_MEMORY.get((reg, mp))
            if m:
                return m
            if reg in (3, 5, 6, 7):
                raise DecodeError("prefix", f"{_NAMES[mp]} prefix with 0F C7 /{reg} (memory form) is not a valid instruction (#UD)")
            raise DecodeError("not-vmx", f"0F C7 /{reg} is not a VMX-family instruction")
        if reg in (6, 7) and mp in (None, 0x66):
            return "rdrand" if reg == 6 else "rdseed"
        if reg in (6, 7) and mp == 0xF3:
            other = "SENDUIPI" if reg == 6 else "RDPID"
            raise DecodeError("not-vmx", f"F3 0F C7 /{reg} with a register is {other}, not a VMX-family instruction")
        if reg in (3, 5, 6, 7):
            raise DecodeError("register-form", f"0F C7 /{reg} with a register operand is not a VMX-family instruction (#UD)")
        raise DecodeError("not-vmx", f"0F C7 /{reg} is not a VMX-family instruction")
    if op in (0x78, 0x79):
        name = "vmread" if op == 0x78 else "vmwrite"
        if mp is not None:
            other = {0x66: "EXTRQ/INSERTQ (AMD SSE4a)", 0xF2: "INSERTQ (AMD SSE4a)", 0xF3: "an invalid encoding"}[mp]
            raise DecodeError("prefix", f"{_NAMES[mp]} 0F {op:02x} is {other}, not {name.upper()}, which takes no 66/F2/F3 prefix")
        return name
    if op == 0x38:
        name = {0x80: "invept", 0x81: "invvpid", 0x82: "invpcid"}[op3]
        if mp != 0x66:
            raise DecodeError("prefix", f"{name.upper()} needs the 66 prefix (and no F2/F3); found {_NAMES[mp]} mandatory prefix")
        return name
    if op == 0x01:
        if mod == 3 or reg > 3:
            form = "with a register operand " if mod == 3 else ""
            raise DecodeError("not-vmx", f"0F 01 /{reg} {form}is not SGDT/SIDT/LGDT/LIDT "
                              "(the register forms are VMCALL, MONITOR, …)")
        return ("sgdt", "sidt", "lgdt", "lidt")[reg]
    # op == 0x00
    if reg > 3:
        raise DecodeError("not-vmx", f"0F 00 /{reg} is VERR/VERW or invalid, not SLDT/STR/LLDT/LTR")
    return ("sldt", "str", "lldt", "ltr")[reg]


def _zero_disp(raw: bytes, op: MemoryOperand) -> bytes:
    if not op.disp_size:
        return raw
    return raw[:op.disp_offset] + bytes(op.disp_size) + raw[op.disp_offset + op.disp_size:]


REGISTER_NAMES = REG64 + REG32 + REG16
__all__ = ["DecodeError", "Instruction", "MemoryOperand", "decode", "parse_hex", "capstone_view", "capstone_guard_on",
           "SEGMENTS"]
