"""Every bit layout of the VM-exit information vmxaddr reads or writes, declared once, as data.

One `Layout` per SDM table: the instruction-information layouts (one per instruction group, keyed
by vmxaddr.isa.Layout's values), the I/O exit qualification (INS/OUTS) and APX's extended
instruction-information field. Each lists its fields most significant first, covering every bit
exactly once: the SDM's name, high bit, low bit, how the value reads, and when the SDM leaves the
field undefined (`When`: another field's value — the operand kind, bit 10; no index, bit 22; no
base, bit 27 —, an exit from 64-bit mode, or the exiting instruction).

Everything else reads these tables: vmxaddr.exitinfo (encode: positions and the defined mask;
`fields`; `operand_bits`), vmxaddr.apx (the extended field), vmxaddr.io_exit (the I/O
qualification), vmxaddr.pictures (the drawings) and the explanations. This module imports nothing
from vmxaddr, so that any layer (the SDM model's rule language, the z3 encodings) may read it.

Sources: SDM Vol. 3C, "Information for VM Exits Due to Instruction Execution", the tables
"Format of the VM-Exit Instruction-Information Field as Used for ..." and, under "Exit
Qualification for VM Exits Due to Instruction Execution", "Exit Qualification for I/O
Instructions". Table numbers are those of the edition docs/index.md ("Which SDM?") names, where
"VM Exits" is chapter 27 (27-5, 27-8 … 27-14); later editions renumber them, the titles stay.
tests/test_layouts.py checks every position against the SDM's wording, cited there.
"""

from __future__ import annotations

from typing import NamedTuple


class When(NamedTuple):
    """A condition under which a field is undefined. Exactly one of: `field` (another field of the
    same layout, by name) has `value`; the exit came from `mode`-bit mode; the exiting
    instruction is `instruction`. `text` is the SDM's wording, for explanations and pictures."""

    text: str
    field: str = ""
    value: int = 0
    mode: int = 0
    instruction: str = ""


class Field(NamedTuple):
    """One bit field. `kind` says how its value reads:
    "undefined" / "reserved" (no meaning), "zero" (cleared to 0: defined, always 0), "enum"
    (`values[v]`, "not used" beyond them or where the entry is empty), "gpr" (a general register
    number, 0 = RAX ... 15 = R15, 16-31 = R16-R31), "xmm" (an XMM register number), "number"."""

    name: str
    hi: int
    lo: int
    kind: str
    values: tuple[str, ...] = ()
    undefined_when: tuple[When, ...] = ()

    @property
    def mask(self) -> int:
        """The field's bits in place."""
        return ((1 << (self.hi - self.lo + 1)) - 1) << self.lo


class Layout(NamedTuple):
    """One bit layout (an instruction-information layout, the I/O qualification, the APX field): its fields and where the SDM gives it."""
    name: str  # vmxaddr.isa.Layout's value, "io-qualification" or "apx-extended:<layout>"
    title: str  # the SDM table's title (or what stands for it)
    source: str  # where the positions come from
    width: int  # 32 or 64
    fields: tuple[Field, ...]  # most significant first, every bit once


# -- the values the SDM's tables enumerate ------------------------------------------------------

SCALING = ("x1", "x2", "x4", "x8")
ADDRESS_SIZES = ("16-bit", "32-bit", "64-bit")  # 0, 1, 2; "other values not used"
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")  # 0 ES ... 5 GS; "other values not used"
MEM_REG = ("memory", "register")
VALIDITY = ("valid", "invalid")
DT_IDENTITY = ("sgdt", "sidt", "lgdt", "lidt")
LDT_IDENTITY = ("sldt", "str", "lldt", "ltr")
OPERAND_SIZES = ("16-bit", "32-bit", "64-bit")

# The SDM's conditions, worded as in its tables.
_REGISTER = When("register instructions (bit 10 is set)", field="mem/reg", value=1)
_MEMORY = When("memory instructions (bit 10 is clear)", field="mem/reg", value=0)
_NO_INDEX = When("no index register (bit 22 is set)", field="index invalid", value=1)
_NO_BASE = When("no base register (bit 27 is set)", field="base invalid", value=1)
_FROM_64 = When("VM exits from 64-bit mode", mode=64)
_INS = When("VM exits due to execution of INS", instruction="ins")


def _u(hi: int, lo: int) -> Field:
    return Field("undefined", hi, lo, "undefined")


def _memory_fields(reg_form: bool) -> dict[str, Field]:
    """The memory-operand fields every memory layout has at the same positions; in the layouts
    with a register form (bit 10 = mem/reg) each is also undefined for a register operand."""
    extra = (_REGISTER,) if reg_form else ()
    return {
        "scaling": Field("scaling", 1, 0, "enum", SCALING, extra + (_NO_INDEX,)),
        "address size": Field("address size", 9, 7, "enum", ADDRESS_SIZES, extra),
        "segment": Field("segment", 17, 15, "enum", SEGMENTS, extra),
        "index": Field("index", 21, 18, "gpr", (), extra + (_NO_INDEX,)),
        "index invalid": Field("index invalid", 22, 22, "enum", VALIDITY, extra),
        "base": Field("base", 26, 23, "gpr", (), extra + (_NO_BASE,)),
        "base invalid": Field("base invalid", 27, 27, "enum", VALIDITY, extra),
    }


def _memory_layout(name: str, title: str, source: str, low: tuple[Field, ...], mid: tuple[Field, ...],
                   high: tuple[Field, ...], reg_form: bool = False) -> Layout:
    """A memory layout: `low` (bits 6:2), bit 10 and `mid` (bits 14:11) and `high` (31:28)
    differ by instruction group; the memory fields sit between them."""
    m = _memory_fields(reg_form)
    fields = (*high, m["base invalid"], m["base"], m["index invalid"], m["index"], m["segment"], *mid,
              m["address size"], *low, m["scaling"])
    return Layout(name, title, source, 32, fields)


_TITLE = "Format of the VM-Exit Instruction-Information Field as Used for "
_SDM = "SDM Vol. 3C, Table 27-{} (\"" + _TITLE + "{}\")"
_CLEARED = Field("cleared to 0", 10, 10, "zero")
_REG2 = Field("reg2", 31, 28, "gpr")

_LIST: tuple[Layout, ...] = (
    _memory_layout("vmptr", _TITLE + "VMCLEAR, VMPTRLD, VMPTRST, VMXON, XRSTORS, and XSAVES",
                   _SDM.format(13, "VMCLEAR, VMPTRLD, VMPTRST, VMXON, XRSTORS, and XSAVES"),
                   (_u(6, 2),), (_u(14, 11), _CLEARED), (_u(31, 28),)),
    _memory_layout("vmread", _TITLE + "VMREAD and VMWRITE", _SDM.format(14, "VMREAD and VMWRITE"),
                   (Field("reg1", 6, 3, "gpr", (), (_MEMORY,)), _u(2, 2)),
                   (_u(14, 11), Field("mem/reg", 10, 10, "enum", MEM_REG)), (_REG2,), reg_form=True),
    _memory_layout("inv", _TITLE + "INVEPT, INVPCID, and INVVPID", _SDM.format(9, "INVEPT, INVPCID, and INVVPID"),
                   (_u(6, 2),), (_u(14, 11), _CLEARED), (_REG2,)),
    # Operand size: bit 11 in the edition followed (13:12, "1: 16-bit, 2: 32-bit", in the oldest
    # editions); "Undefined for VM exits from 64-bit mode" whatever the address size.
    _memory_layout("dt", _TITLE + "LIDT, LGDT, SIDT, or SGDT", _SDM.format(10, "LIDT, LGDT, SIDT, or SGDT"),
                   (_u(6, 2),),
                   (_u(14, 12), Field("operand size", 11, 11, "enum", OPERAND_SIZES[:2], (_FROM_64,)), _CLEARED),
                   (_u(31, 30), Field("identity", 29, 28, "enum", DT_IDENTITY))),
    _memory_layout("ldt", _TITLE + "LLDT, LTR, SLDT, and STR", _SDM.format(11, "LLDT, LTR, SLDT, and STR"),
                   (Field("reg1", 6, 3, "gpr", (), (_MEMORY,)), _u(2, 2)),
                   (_u(14, 11), Field("mem/reg", 10, 10, "enum", MEM_REG)),
                   (_u(31, 30), Field("identity", 29, 28, "enum", LDT_IDENTITY)), reg_form=True),
    Layout("rdrand", _TITLE + "RDRAND and RDSEED", _SDM.format(12, "RDRAND and RDSEED"), 32, (
        _u(31, 13), Field("operand size", 12, 11, "enum", OPERAND_SIZES), _u(10, 7),
        Field("reg", 6, 3, "gpr"), _u(2, 0))),
    Layout("io", _TITLE + "INS and OUTS", _SDM.format(8, "INS and OUTS"), 32, (
        _u(31, 18), Field("segment", 17, 15, "enum", SEGMENTS, (_INS,)), _u(14, 10),
        Field("address size", 9, 7, "enum", ADDRESS_SIZES), _u(6, 0))),
    # Not in any SDM edition we could read: Reg1 at 6:3 as Bochs's gen_instruction_info() writes
    # it for TPAUSE/UMWAIT and KVM's vmx_get_instr_info_reg() reads it for RDMSR/WRMSRNS imm.
    Layout("reg", _TITLE + "TPAUSE and UMWAIT (and RDMSR/WRMSRNS with an immediate)",
           "Bochs gen_instruction_info(); KVM handle_rdmsr_imm()/handle_wrmsr_imm() (docs/tpause-umwait.md)",
           32, (_u(31, 7), Field("reg1", 6, 3, "gpr"), _u(2, 0))),
    # Not found in an SDM edition either: Reg1/Reg2 where every other layout keeps them
    # (docs/loadiwkey.md, unverified).
    Layout("loadiwkey", _TITLE + "LOADIWKEY", "vmxaddr's reading, unverified (docs/loadiwkey.md)", 32, (
        Field("reg2", 31, 28, "xmm"), _u(27, 7), Field("reg1", 6, 3, "xmm"), _u(2, 0))),
)

INSTRUCTION_INFO: dict[str, Layout] = {lay.name: lay for lay in _LIST}
"""The 32-bit instruction-information layouts by vmxaddr.isa.Layout value."""

IO_QUALIFICATION = Layout(
    "io-qualification", "Exit Qualification for I/O Instructions",
    "SDM Vol. 3C, Table 27-5 (\"Exit Qualification for I/O Instructions\")", 64, (
        Field("reserved", 63, 32, "reserved"),
        Field("port", 31, 16, "number"),
        Field("reserved", 15, 7, "reserved"),
        Field("operand encoding", 6, 6, "enum", ("DX", "immediate")),
        Field("REP prefixed", 5, 5, "enum", ("not REP", "REP")),
        Field("string instruction", 4, 4, "enum", ("not string", "string")),
        Field("direction", 3, 3, "enum", ("OUT", "IN")),
        Field("size of access", 2, 0, "enum", ("1 byte", "2 bytes", "", "4 bytes")),
    ))

# -- APX: the extended (64-bit) instruction-information field, VMCS 0x2406 -------------------------
# Positions from KVM's "KVM: x86: Enable APX for guests" v2, patch 04/16 `struct ext_insn_info`
# (vmxaddr/apx.py cites it): the same positions for every layout; a 32-bit layout's field moves
# there (register numbers widen to 5 bits), its conditions with it.

EXTENDED_POSITIONS: tuple[Field, ...] = (
    Field("reserved", 63, 45, "reserved"),
    Field("reg2", 44, 40, "gpr"),
    Field("reserved", 39, 37, "reserved"),
    Field("base", 36, 32, "gpr"),
    Field("reserved", 31, 29, "reserved"),
    Field("index", 28, 24, "gpr"),
    Field("reserved", 23, 21, "reserved"),
    Field("reg1", 20, 16, "gpr"),
    Field("reserved", 15, 12, "reserved"),
    Field("base invalid", 11, 11, "enum", VALIDITY),
    Field("index invalid", 10, 10, "enum", VALIDITY),
    Field("segment", 9, 7, "enum", SEGMENTS),
    Field("operand size", 6, 5, "enum", OPERAND_SIZES),
    Field("mem/reg", 4, 4, "enum", MEM_REG),
    Field("address size", 3, 2, "enum", ADDRESS_SIZES),
    Field("scaling", 1, 0, "enum", SCALING),
)
EXTENDED_SOURCE = ("KVM \"Enable APX for guests\" v2 patch 04/16 struct ext_insn_info "
                   "(20260112235408.168200-1-chang.seok.bae@intel.com); docs/apx.md")
# 32-bit field name -> its place in the extended field (the identity has none: it stays in the
# 32-bit field, which the processor still writes).
_EXTENDED_NAME = {"reg": "reg1", "cleared to 0": "mem/reg"}


def _moved(w: When) -> When:
    """A condition of the 32-bit field, said of the extended one (its bit numbers differ)."""
    if not w.field:
        return w
    name = _EXTENDED_NAME.get(w.field, w.field)
    return w._replace(field=name, text=w.text.split(" (bit")[0] + f" ({name} = {w.value})")


def _extended(layout: Layout) -> Layout:
    own = {_EXTENDED_NAME.get(f.name, f.name): f for f in layout.fields if f.kind not in ("undefined", "reserved")}
    fields = []
    for pos in EXTENDED_POSITIONS:
        f = own.get(pos.name)
        if pos.kind == "reserved":
            fields.append(pos)
        elif f is None:
            fields.append(Field(pos.name, pos.hi, pos.lo, "undefined", pos.values))
        else:
            kind = f.kind if f.kind in ("gpr", "xmm") else pos.kind
            fields.append(Field(pos.name, pos.hi, pos.lo, kind, pos.values, tuple(map(_moved, f.undefined_when))))
    return Layout(f"apx-extended:{layout.name}", f"APX extended instruction information as used for {layout.name}",
                  EXTENDED_SOURCE, 64, tuple(fields))


EXTENDED: dict[str, Layout] = {name: _extended(lay) for name, lay in INSTRUCTION_INFO.items()}
"""The APX extended field as each 32-bit layout uses it, by vmxaddr.isa.Layout value."""

ALL: dict[str, Layout] = {**INSTRUCTION_INFO, IO_QUALIFICATION.name: IO_QUALIFICATION,
                          **{lay.name: lay for lay in EXTENDED.values()}}
"""Every layout by name: the instruction-information ones, "io-qualification", "apx-extended:<layout>"."""


# -- reading the tables -------------------------------------------------------------------------

def field(layout: Layout, name: str) -> Field:
    """The field called `name` (the first, most significant, if several are)."""
    for f in layout.fields:
        if f.name == name:
            return f
    raise KeyError(f"{layout.name} has no field {name!r}")


def shared(name: str, layouts: tuple[Layout, ...] | None = None) -> Field:
    """A field every layout that has it keeps at one position (the memory-operand fields, reg1,
    reg2): that field. ValueError at import if a table disagrees, so the constants other modules
    derive from it cannot go wrong for one layout."""
    found = {(f.hi, f.lo): f for lay in (layouts or _LIST) for f in lay.fields if f.name == name}
    if len(found) != 1:
        raise ValueError(f"field {name!r} sits at {sorted(found)} in different layouts")
    return next(iter(found.values()))


def holds(w: When, layout: Layout, value: int, code_size: int | None, instruction: str) -> bool | None:
    """Does the condition hold for this value of the field? None when it depends on the mode and
    the mode is not known."""
    if w.field:
        f = field(layout, w.field)
        return (value >> f.lo) & ((1 << (f.hi - f.lo + 1)) - 1) == w.value
    if w.mode:
        return None if code_size is None else code_size == w.mode
    return instruction == w.instruction


def is_defined(f: Field, layout: Layout, value: int, code_size: int | None, instruction: str) -> bool:
    """Are `f`'s bits defined in `value`? (Unknown mode: not, where the mode decides.)"""
    if f.kind in ("undefined", "reserved"):
        return False
    return not any(holds(w, layout, value, code_size, instruction) is not False for w in f.undefined_when)


def condition_bits(layout: Layout) -> int:
    """The bits the definedness of `layout`'s fields depends on (bits 10, 22, 27 at most)."""
    mask = 0
    for f in layout.fields:
        for w in f.undefined_when:
            if w.field:
                mask |= field(layout, w.field).mask
    return mask


def defined_mask(layout: Layout, value: int, code_size: int | None, instruction: str) -> int:
    """The bits of `value` the SDM defines (for this instruction, exiting from this mode)."""
    mask = 0
    for f in layout.fields:
        if is_defined(f, layout, value, code_size, instruction):
            mask |= f.mask
    return mask


def meaning(f: Field, v: int) -> str:
    """The value's reading for kinds that need no register names ("enum", "zero", "number")."""
    if f.kind == "enum":
        return f.values[v] if v < len(f.values) and f.values[v] else "not used"
    if f.kind in ("undefined", "reserved"):
        return ""
    return str(v) if f.kind == "zero" or v < 10 else f"{v:#x}"


class InfoField(NamedTuple):
    """One field of a value, read through its layout."""

    name: str
    hi: int
    lo: int
    value: int
    meaning: str
    defined: bool


_COMPILED: dict[str, tuple[tuple[Field, int, int, tuple[tuple[int, int, int, int, str], ...]], ...]] = {}


def _compile(layout: Layout) -> tuple[tuple[Field, int, int, tuple[tuple[int, int, int, int, str], ...]], ...]:
    """(field, shift, width mask, conditions as (shift, mask, value, mode, instruction)) per
    field, least significant first: what `read` needs, computed once per layout."""
    out = []
    for f in reversed(layout.fields):
        conds = []
        for w in f.undefined_when:
            g = field(layout, w.field) if w.field else None
            conds.append((g.lo if g else 0, (1 << (g.hi - g.lo + 1)) - 1 if g else 0, w.value, w.mode, w.instruction))
        out.append((f, f.lo, (1 << (f.hi - f.lo + 1)) - 1, tuple(conds)))
    return tuple(out)


def read(layout: Layout, value: int, instruction: str, code_size: int | None,
         names: dict[str, tuple[str, ...]]) -> list[InfoField]:
    """`value` as labelled fields of `layout`, most significant first. `names` gives the register
    names for the "gpr" and "xmm" kinds. `defined` is False where the layout's conditions make
    the bits undefined for this value, mode (None: not known, so a mode condition counts) and
    instruction."""
    compiled = _COMPILED.get(layout.name)
    if compiled is None or compiled[0][0] is not layout.fields[-1]:
        compiled = _COMPILED[layout.name] = _compile(layout)
    out = []
    for f, lo, mask, conds in compiled:
        v = value >> lo & mask
        kind = f.kind
        if kind == "undefined" or kind == "reserved":
            out.append(InfoField(f.name, f.hi, lo, v, "", False))
            continue
        defined = True
        for c_lo, c_mask, c_value, mode, ins in conds:
            if (c_mask and value >> c_lo & c_mask == c_value) or (mode and code_size in (None, mode)) \
                    or (ins and ins == instruction):
                defined = False
                break
        table = names.get(kind)
        if table is not None:
            text = table[v] if v < len(table) else f"#{v}"
        else:
            text = meaning(f, v)
        out.append(InfoField(f.name, f.hi, lo, v, text, defined))
    out.reverse()
    return out
