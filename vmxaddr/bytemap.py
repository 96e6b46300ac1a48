"""The bytes of a decoded instruction taken apart: each byte's role, its bit fields, and where
each field ends up in the VM-exit information.

Computed from the decoder's result (vmxaddr.decode.Instruction: its prefixes, REX/REX2 byte,
operand and the displacement's offset) and the raw bytes; the byte offsets of the opcode, ModRM
and SIB follow from them by the SDM's encoding rules (Vol. 2 §2.1 "Instruction Format", §2.2.1
REX, Tables 2-1 … 2-3 for ModRM and SIB; the APX specification for REX2; VEX for RDMSR/WRMSRNS
imm), and `breakdown` checks that they add up to the decoder's length.

JSON shape (`ByteMap.to_json`, `vmxaddr decode --json` key "bytes_breakdown", web.answer's
"bytes_breakdown"):

    {"bytes": [{"offset": 0, "hex": "67", "role": "prefix", "name": "address-size override (67)",
                "note": "why it wins or not", "fields": [{"name": "mod", "bits": "7:6",
                "value": 0, "meaning": "..."}, ...]}, ...],
     "links": [{"offset": 3, "field": "rm", "to": "base", "note": "ModRM.rm 000 + REX.B 0 = rax"}, ...]}

`links[].to` names an instruction-information field (vmxaddr.layouts: "reg1", "reg2", "base",
"index", "scaling", "address size", "segment", "identity", "operand size", "mem/reg"), or
"exit qualification" (the displacement, the MSR index) or "io qualification" (REP).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from vmxaddr.decode import _mandatory_prefix
from vmxaddr.instruction import SEGMENT_PREFIX, Instruction
from vmxaddr.isa import REG16, REG32, REG64, XMM, Layout

_SEG_NAMES = {0x26: "ES", 0x2E: "CS", 0x36: "SS", 0x3E: "DS", 0x64: "FS", 0x65: "GS"}
_RM16 = ("bx+si", "bx+di", "bp+si", "bp+di", "si", "di", "bp (disp16 when mod = 00)", "bx")


class BitField(NamedTuple):
    """One bit field of an instruction byte (ModRM.mod, REX.B, SIB.scale, ...): its bit range, value and meaning."""
    name: str
    hi: int
    lo: int
    value: int
    meaning: str

    def to_json(self) -> dict[str, Any]:
        """The field as `vmxaddr decode --json` prints it ("bits" as "hi:lo", or one bit number)."""
        return {"name": self.name, "bits": f"{self.hi}:{self.lo}" if self.hi != self.lo else str(self.lo),
                "value": self.value, "meaning": self.meaning}


class ByteRole(NamedTuple):
    """One byte of the instruction and the part it plays (prefix, REX/REX2, opcode, ModRM, SIB, displacement, ...), with its fields."""
    offset: int
    value: int
    role: str  # prefix, rex, rex2, vex, escape, opcode, modrm, sib, displacement, immediate
    name: str
    note: str = ""
    fields: tuple[BitField, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The byte as `vmxaddr decode --json` prints it under "bytes"."""
        return {"offset": self.offset, "hex": f"{self.value:02x}", "role": self.role, "name": self.name,
                "note": self.note, "fields": [f.to_json() for f in self.fields]}


class Link(NamedTuple):
    """Where a field of a byte ends up in the exit information (e.g. ModRM.rm -> base register field)."""
    offset: int  # the byte the field is in
    field: str  # the byte's field ("rm", "REX.B", "scale", ...)
    to: str  # the exit-information field it ends up in
    note: str

    def to_json(self) -> dict[str, Any]:
        """The link as `vmxaddr decode --json` prints it under "links"."""
        return {"offset": self.offset, "field": self.field, "to": self.to, "note": self.note}


class ByteMap(NamedTuple):
    """The bytes of a decoded instruction taken apart, and the links from their fields to the exit-information fields."""
    bytes: tuple[ByteRole, ...]
    links: tuple[Link, ...]

    def to_json(self) -> dict[str, Any]:
        """The byte map as `vmxaddr decode --json` prints it."""
        return {"bytes": [b.to_json() for b in self.bytes], "links": [lk.to_json() for lk in self.links]}

    def text(self) -> list[str]:
        """Lines for `vmxaddr decode`: one per byte, its fields under it, then the links."""
        out = ["Bytes:"]
        for b in self.bytes:
            out.append(f"  +{b.offset:<2} {b.value:02x}  {b.role:<12} {b.name}" + (f" — {b.note}" if b.note else ""))
            for f in b.fields:
                bits = f"{f.hi}:{f.lo}" if f.hi != f.lo else str(f.lo)
                out.append(f"{'':20}{f.name:<6} bits {bits:<4} = {f.value:0{f.hi - f.lo + 1}b}  {f.meaning}")
        if self.links:
            out.append("  into the exit information:")
            for lk in self.links:
                out.append(f"    +{lk.offset} {lk.field:<10} -> {lk.to:<18} {lk.note}")
        return out


def _prefix_notes(instr: Instruction, mandatory: int | None) -> dict[int, tuple[str, str]]:
    """prefix index -> (name, why it takes effect or not)."""
    pfx = instr.prefixes
    cs = instr.code_size
    out: dict[int, tuple[str, str]] = {}
    last_seg = max((k for k, p in enumerate(pfx) if p in SEGMENT_PREFIX), default=-1)
    last_rep = max((k for k, p in enumerate(pfx) if p in (0xF2, 0xF3)), default=-1)
    io = instr.spec.layout is Layout.IO
    for k, p in enumerate(pfx):
        if p in SEGMENT_PREFIX:
            name = f"segment override {_SEG_NAMES[p]} ({p:02x})"
            if k != last_seg:
                why = ("overridden by a later segment prefix: the last one is used (as iced-x86 and the decoders "
                       "measured do; Vol. 2 §2.1.1 calls more than one prefix of a group not useful)")
            elif instr.mnemonic == "ins":
                why = "no effect: INS always writes through ES"
            elif cs == 64 and p not in (0x64, 0x65):
                why = "ignored in 64-bit mode (only FS and GS overrides apply, Vol. 1 §3.3.7.1)"
            else:
                why = f"takes effect: the operand's segment is {_SEG_NAMES[p]}"
            out[k] = (name, why)
        elif p == 0x67:
            asz = {16: 32, 32: 16, 64: 32}[cs]
            out[k] = ("address-size override (67)", f"address size {cs} -> {asz} bits")
        elif p == 0x66:
            if mandatory == 0x66 and not io:
                out[k] = ("mandatory prefix (66)", f"selects {instr.mnemonic.upper()} (no F2/F3 present)")
            else:
                out[k] = ("operand-size override (66)", "flips the operand size (16 <-> 32 bits)")
        elif p in (0xF2, 0xF3):
            name = f"{'REPNE' if p == 0xF2 else 'REP'} ({p:02X})"
            if io:
                out[k] = (name, "repeats the string I/O (F2 and F3 both do): REP bit 5 of the I/O qualification")
            elif k != last_rep:
                out[k] = (name, "superseded: the last F2/F3 is the mandatory prefix")
            else:
                out[k] = (f"mandatory prefix ({p:02X})", f"selects {instr.mnemonic.upper()}")
        elif p == 0xF0:
            out[k] = ("LOCK (F0)", "#UD on these instructions")
    return out


def _reg_name(n: int, instr: Instruction) -> str:
    if instr.spec.layout is Layout.LOADIWKEY:
        return XMM[n]
    return REG64[n]


def breakdown(instr: Instruction) -> ByteMap:
    """Each byte of `instr.raw` with its role and fields, and the links to the exit information."""
    raw = instr.raw
    roles: list[ByteRole] = []
    links: list[Link] = []
    mandatory = _mandatory_prefix(instr.prefixes)
    notes = _prefix_notes(instr, mandatory)
    layout = instr.spec.layout
    op = instr.operand
    i = 0
    k = 0  # index into instr.prefixes
    rex_at = -1
    # Legacy prefixes and REX bytes, in order (a REX byte followed by a legacy prefix is ignored).
    while i < len(raw) and (k < len(instr.prefixes) and raw[i] == instr.prefixes[k]
                            or instr.code_size == 64 and 0x40 <= raw[i] <= 0x4F):
        b = raw[i]
        if k < len(instr.prefixes) and b == instr.prefixes[k]:
            name, why = notes[k]
            roles.append(ByteRole(i, b, "prefix", name, why))
            k += 1
            if b == 0x67 and op is not None:
                links.append(Link(i, "67", "address size", f"{op.address_size}-bit"))
            elif b in SEGMENT_PREFIX and op is not None and "takes effect" in why:
                links.append(Link(i, _SEG_NAMES[b], "segment", op.segment))
            elif b in (0xF2, 0xF3) and layout is Layout.IO:
                links.append(Link(i, f"{b:02X}", "io qualification", "REP prefixed (bit 5) = 1"))
            elif b == 0x66 and layout in (Layout.DT, Layout.RDRAND) and instr.operand_size:
                links.append(Link(i, "66", "operand size", f"{instr.operand_size}-bit"))
        else:
            effective = b == instr.rex
            w, r, x, bb = b >> 3 & 1, b >> 2 & 1, b >> 1 & 1, b & 1
            roles.append(ByteRole(i, b, "rex", f"REX ({b:02x})",
                                  "in effect" if effective else "ignored: a legacy prefix follows it (Vol. 2 §2.2.1)",
                                  (BitField("W", 3, 3, w, "64-bit operand size" if w else "default operand size"),
                                   BitField("R", 2, 2, r, "+8 to ModRM.reg"), BitField("X", 1, 1, x, "+8 to SIB.index"),
                                   BitField("B", 0, 0, bb, "+8 to ModRM.rm / SIB.base"))))
            if effective:
                rex_at = i
        i += 1
    rex2 = instr.rex2 & 0xFF if instr.rex2 else None
    if rex2 is not None:
        names = ("M0", "R4", "X4", "B4", "W", "R3", "X3", "B3")
        meaning = {"M0": "map 1 (0F xx, the 0F not written)" if rex2 >> 7 else "map 0 (one-byte opcodes)",
                   "R4": "+16 to ModRM.reg", "X4": "+16 to SIB.index", "B4": "+16 to ModRM.rm / SIB.base",
                   "W": "64-bit operand size" if rex2 >> 3 & 1 else "default operand size",
                   "R3": "+8 to ModRM.reg", "X3": "+8 to SIB.index",
                   "B3": "+8 to ModRM.rm / SIB.base"}
        roles.append(ByteRole(i, raw[i], "rex2", "REX2 prefix (D5, APX)", "its payload follows"))
        roles.append(ByteRole(i + 1, rex2, "rex2", "REX2 payload",
                              "register numbers are R4:R3:reg, X4:X3:index, B4:B3:rm/base",
                              tuple(BitField(n, 7 - j, 7 - j, rex2 >> (7 - j) & 1, meaning[n]) for j, n in enumerate(names))))
        rex_at = i + 1
        i += 2
    if instr.immediate is not None:  # RDMSR/WRMSRNS imm: VEX C4, 2 payload bytes, F6, ModRM, imm32
        b1, b2 = raw[i + 1], raw[i + 2]
        roles.append(ByteRole(i, raw[i], "vex", "three-byte VEX (C4)"))
        roles.append(ByteRole(i + 1, b1, "vex", "VEX byte 1", "", (
            BitField("R̄", 7, 7, b1 >> 7, "inverted REX.R"), BitField("X̄", 6, 6, b1 >> 6 & 1, "inverted REX.X"),
            BitField("B̄", 5, 5, b1 >> 5 & 1, "inverted REX.B: +8 to ModRM.rm when 0"),
            BitField("mmmmm", 4, 0, b1 & 31, f"map {b1 & 31}"))))
        roles.append(ByteRole(i + 2, b2, "vex", "VEX byte 2", "", (
            BitField("W", 7, 7, b2 >> 7, "W0"), BitField("vvvv", 6, 3, b2 >> 3 & 15, "unused (1111)"),
            BitField("L", 2, 2, b2 >> 2 & 1, "128"), BitField("pp", 1, 0, b2 & 3,
                                                              {2: "F3: WRMSRNS", 3: "F2: RDMSR"}.get(b2 & 3, "")))))
        if not b1 >> 5 & 1:
            links.append(Link(i + 1, "B̄", "reg1", "0: +8 to the register number"))
        i += 3
        roles.append(ByteRole(i, raw[i], "opcode", "opcode F6 (map 7)"))
        i += 1
    elif layout is Layout.IO:
        roles.append(ByteRole(i, raw[i], "opcode", f"opcode {raw[i]:02X}: {instr.mnemonic.upper()}"
                              + (" (byte elements)" if not raw[i] & 1 else " (word/doubleword elements)")))
        links.append(Link(i, "opcode", "io qualification", f"size of access {instr.operand_size // 8} byte(s)"
                          if instr.operand_size else ""))
        assert op is not None
        if not any(lk.to == "address size" for lk in links):
            links.append(Link(i, "opcode", "address size", f"{op.address_size}-bit (the mode's default)"))
        if not any(lk.to == "segment" for lk in links):
            links.append(Link(i, "opcode", "segment", "es: INS always writes through ES" if instr.mnemonic == "ins"
                              else "ds: the default for OUTS"))
        return ByteMap(tuple(roles), tuple(links))
    else:
        if rex2 is None:
            roles.append(ByteRole(i, raw[i], "escape", "two-byte opcode escape (0F)"))
            i += 1
        if raw[i] == 0x38:
            roles.append(ByteRole(i, raw[i], "escape", "three-byte opcode escape (0F 38)"))
            i += 1
        roles.append(ByteRole(i, raw[i], "opcode", f"opcode {raw[i]:02X}"
                              + (" (map 1, 0F implied by REX2.M0)" if rex2 is not None else "")))
        i += 1
    _modrm_sib(instr, raw, i, rex_at, roles, links)
    if op is not None and op.disp_size:
        d = op.displacement
        for j in range(op.disp_size):
            roles.append(ByteRole(op.disp_offset + j, raw[op.disp_offset + j], "displacement",
                                  f"disp{op.disp_size * 8} byte {j}",
                                  f"raw {int.from_bytes(raw[op.disp_offset:op.disp_offset + op.disp_size], 'little'):#x}, "
                                  f"sign-extended {'-' if d < 0 else ''}{abs(d):#x}" if j == 0 else "little-endian"))
        links.append(Link(op.disp_offset, "disp", "exit qualification",
                          f"the displacement, sign-extended ({'-' if d < 0 else ''}{abs(d):#x})"
                          + (" + RIP of the next instruction (RIP-relative)" if op.rip_relative else "")))
    if instr.immediate is not None:
        at = instr.length - 4
        for j in range(4):
            roles.append(ByteRole(at + j, raw[at + j], "immediate", f"imm32 byte {j}",
                                  f"MSR index {instr.immediate:#x}" if j == 0 else "little-endian"))
        links.append(Link(at, "imm32", "exit qualification", f"the MSR index {instr.immediate:#x}"))
    roles.sort(key=lambda r: r.offset)
    if len(roles) != instr.length or [r.offset for r in roles] != list(range(instr.length)):
        raise AssertionError(f"byte breakdown of {raw.hex(' ')} does not cover its {instr.length} bytes")
    return ByteMap(tuple(roles), tuple(links))


def _modrm_sib(instr: Instruction, raw: bytes, i: int, rex_at: int, roles: list[ByteRole], links: list[Link]) -> None:
    """ModRM at raw[i] and, when present, SIB (Vol. 2 Tables 2-1 … 2-3)."""
    modrm = raw[i]
    mod, reg, rm = modrm >> 6, modrm >> 3 & 7, modrm & 7
    op = instr.operand
    layout = instr.spec.layout
    asz = op.address_size if op is not None else 0
    names = {16: REG16, 32: REG32, 64: REG64}.get(asz, REG64)
    rex_note = " (+ REX.R/REX2 R bits)" if rex_at >= 0 else ""
    if layout in (Layout.VMREAD, Layout.INV):
        reg_meaning = f"reg2 = {REG64[instr.reg2 or 0]}{rex_note}"
        links.append(Link(i, "reg", "reg2", f"{reg:03b} -> {REG64[instr.reg2 or 0]}"))
    elif layout in (Layout.DT, Layout.LDT):
        reg_meaning = f"/{reg}: {instr.mnemonic.upper()}"
        links.append(Link(i, "reg", "identity", f"/{reg} -> {instr.mnemonic}"))
    elif layout is Layout.LOADIWKEY:
        reg_meaning = f"xmm1 = {XMM[instr.reg1 or 0]}"
        links.append(Link(i, "reg", "reg1", f"{reg:03b} -> {XMM[instr.reg1 or 0]}"))
    else:
        reg_meaning = f"/{reg}: opcode extension ({instr.mnemonic.upper()})"
    if mod == 3:
        mod_meaning = "11: a register operand"
        target = "reg2" if layout is Layout.LOADIWKEY else "reg1" if layout is not Layout.RDRAND else "reg"
        reg_n = instr.reg2 if layout is Layout.LOADIWKEY else instr.reg1
        rm_meaning = f"{_reg_name(reg_n or 0, instr)}"
        links.append(Link(i, "rm", target, f"{rm:03b} -> {_reg_name(reg_n or 0, instr)}"))
        if layout in (Layout.VMREAD, Layout.LDT):
            links.append(Link(i, "mod", "mem/reg", "11 -> register (1)"))
    else:
        mod_meaning = {0: "00: memory, no displacement (but see rm)", 1: "01: memory, disp8",
                       2: f"10: memory, disp{16 if asz == 16 else 32}"}[mod]
        if asz == 16:
            rm_meaning = f"[{_RM16[rm]}]"
            if op is not None and op.base is not None:
                links.append(Link(i, "rm", "base", f"{rm:03b} -> {REG64[op.base]}"))
            elif op is not None:  # mod 00, rm 110: [disp16], no base (Table 2-1)
                links.append(Link(i, "rm", "base invalid", "110 with mod 00: disp16 only, no base (1)"))
            if op is not None and op.index is not None:
                links.append(Link(i, "rm", "index", f"{rm:03b} -> {REG64[op.index]}"))
        elif rm == 4:
            rm_meaning = "100: a SIB byte follows"
        elif rm == 5 and mod == 0:
            rm_meaning = "101 with mod 00: " + ("RIP-relative disp32" if op and op.rip_relative else "disp32, no base")
            links.append(Link(i, "rm", "base invalid", "no base register (1)"))
        else:
            base = op.base if op is not None and op.base is not None else rm
            rm_meaning = f"base {names[base]}"
            links.append(Link(i, "rm", "base", f"{rm:03b} -> {REG64[base]}"))
        if op is not None and asz == 16 and op.index is None:
            links.append(Link(i, "rm", "index invalid", "no index (1)"))
        if op is not None and asz != 16 and rm != 4:
            links.append(Link(i, "rm", "index invalid" if op.index is None else "index",
                              "no index (1)" if op.index is None else f"{REG64[op.index]}"))
    roles.append(ByteRole(i, modrm, "modrm", f"ModRM ({modrm:02x})", "", (
        BitField("mod", 7, 6, mod, mod_meaning), BitField("reg", 5, 3, reg, reg_meaning),
        BitField("rm", 2, 0, rm, rm_meaning))))
    if mod != 3 and asz != 16 and rm == 4:
        sib = raw[i + 1]
        ss, idx, base = sib >> 6, sib >> 3 & 7, sib & 7
        assert op is not None
        idx_meaning = "100: no index" if op.index is None else f"index {names[op.index]}"
        base_meaning = ("101 with mod 00: no base, disp32" if op.base is None else f"base {names[op.base]}")
        roles.append(ByteRole(i + 1, sib, "sib", f"SIB ({sib:02x})", "", (
            BitField("scale", 7, 6, ss, f"x{1 << ss}"), BitField("index", 5, 3, idx, idx_meaning),
            BitField("base", 2, 0, base, base_meaning))))
        if op.index is None:
            links.append(Link(i + 1, "index", "index invalid", "100 = no index (1); scaling undefined"))
        else:
            links.append(Link(i + 1, "index", "index", f"{idx:03b} -> {REG64[op.index]}"))
            links.append(Link(i + 1, "scale", "scaling", f"{ss:02b} -> x{1 << ss}"))
        links.append(Link(i + 1, "base", "base invalid" if op.base is None else "base",
                          "no base (1)" if op.base is None else f"{base:03b} -> {REG64[op.base]}"))
    if rex_at >= 0 and op is not None:
        if op.base is not None and op.base >= 8:
            links.append(Link(rex_at, "B", "base", f"+{op.base & 24} -> {REG64[op.base]}"))
        if op.index is not None and op.index >= 8:
            links.append(Link(rex_at, "X", "index", f"+{op.index & 24} -> {REG64[op.index]}"))
    if rex_at >= 0 and instr.reg2 is not None and instr.reg2 >= 8 and layout is not Layout.LOADIWKEY:
        links.append(Link(rex_at, "R", "reg2", f"+{instr.reg2 & 24} -> {REG64[instr.reg2]}"))
    if rex_at >= 0 and op is None and instr.reg1 is not None and instr.reg1 >= 8 and layout is not Layout.LOADIWKEY:
        links.append(Link(rex_at, "B", "reg1" if layout is not Layout.RDRAND else "reg", f"+{instr.reg1 & 24}"))
    if rex_at >= 0 and layout is Layout.RDRAND and instr.operand_size == 64:
        links.append(Link(rex_at, "W", "operand size", "64-bit"))
    if op is not None and op.address_size and not any(lk.to == "address size" for lk in links):
        links.append(Link(i, "mod/rm", "address size", f"{op.address_size}-bit (the mode's default)"))
    if op is not None and not any(lk.to == "segment" for lk in links):
        links.append(Link(i, "rm", "segment", f"{op.segment}: the default for this base"
                          if op.segment in ("ss", "ds") else op.segment))


_FILL = {"prefix": "#fdf0d5", "rex": "#e6f4ea", "rex2": "#e6f4ea", "vex": "#e6f4ea", "escape": "#eeeeee",
         "opcode": "#e8f1fb", "modrm": "#f3e8fb", "sib": "#fbe8f1", "displacement": "#fff8dc", "immediate": "#fff8dc"}


def picture(bm: ByteMap, title: str) -> Any:
    """The breakdown as an SVG (vmxaddr.svg.Svg), 372 px wide like the field pictures: one row
    per byte (its hex, role, name and bit fields), then each link as "+offset field -> exit
    field". Rows and links carry data-offset / data-to attributes for the site to connect."""
    import textwrap

    from vmxaddr.svg import Svg

    width, margin, size, line = 372, 10, 11, 15
    chars = int((width - 2 * margin - 44) / (size * 0.62))
    svg = Svg(width, 0, title)
    y = 6.0
    for ln in textwrap.wrap(title, int((width - 2 * margin) / (13 * 0.62))):
        y += 17
        svg.text(margin, y, ln, 13, font_weight="bold")
    y += 8
    for b in bm.bytes:
        lines = textwrap.wrap(f"{b.role}: {b.name}" + (f" — {b.note}" if b.note else ""), chars)
        for f in b.fields:
            bits = f"{f.hi}:{f.lo}" if f.hi != f.lo else str(f.lo)
            lines += textwrap.wrap(f"{f.name} [{bits}] = {f.value:0{f.hi - f.lo + 1}b}: {f.meaning}", chars,
                                   subsequent_indent="  ")
        h = 8 + line * len(lines)
        svg.rect(margin, y, width - 2 * margin, h, fill=_FILL.get(b.role, "#ffffff"), stroke="#999999",
                 stroke_width=1, data_offset=b.offset, data_role=b.role)
        svg.text(margin + 6, y + 17, f"{b.value:02x}", 13, font_weight="bold")
        svg.text(margin + 6, y + h - 5, f"+{b.offset}", 10, fill="#555555")
        for n, ln in enumerate(lines):
            svg.text(margin + 40, y + 15 + n * line, ln, size, style="white-space:pre")
        y += h + 2
    if bm.links:
        y += 16
        svg.text(margin, y, "into the exit information", 12, font_weight="bold")
        arrow = svg.arrow_marker("byte-arrow")
        for lk in bm.links:
            y += line + 2
            head = f"+{lk.offset} {lk.field}"
            svg.text(margin, y, head, size)
            x0 = margin + len(head) * size * 0.6 + 4
            svg.line(x0, y - 4, x0 + 22, y - 4, stroke="#555555", stroke_width=1.2, marker_end=arrow,
                     data_offset=lk.offset, data_to=lk.to)
            rest = textwrap.wrap(f"{lk.to}: {lk.note}", int((width - x0 - 30 - margin) / (size * 0.62)))
            for n, ln in enumerate(rest):
                svg.text(x0 + 28, y + n * line, ln, size, font_weight="bold" if n == 0 else None)
            y += line * (len(rest) - 1)
    svg.height = y + 14
    return svg
