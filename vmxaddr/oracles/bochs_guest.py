"""What runs under Bochs for the oracle (vmxaddr.oracles.bochs): the cases, the VMCS guest-state
and control tables our VMM (bochs_asm/vmm.s) loads, the guest code generated from the cases, and
the ROM image assembled and linked from both with binutils.

The records Bochs's VM exits give back (`Record`, `BochsRun`) are declared here too, beside the
cases they answer."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmxaddr.errors import BochsError

ASM_DIR = Path(__file__).with_name("bochs_asm")

#: Bochs CPU model: Skylake-X has VMX with descriptor-table exiting, INVPCID,
#: RDRAND/RDSEED exiting and XSAVES in Bochs 2.7 (checked at run time: the VMM
#: prints the secondary controls it could enable on its CAP line).
CPU_MODEL = "corei7_skylake_x"

REGISTER_NAMES = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)
_REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")

# guest code must fit the guest's read-only mapping (0x400000..0x13fffff) and a
# 16-bit code segment must stay below 64 KiB
_MAX_16BIT_GROUP_BYTES = 0x8000
_MAX_GROUP_CASES = 4000


@dataclass(frozen=True)
class Case:
    """One instruction to run as guest code."""

    code: bytes
    code_size: int  # 16, 32 or 64
    regs: Mapping[int | str, int] = field(default_factory=dict)
    cpl: int = 0  # 0 or 3: the guest's privilege level (SS.DPL, SDM 27.3.1.2)


@dataclass(frozen=True)
class Record:
    """What the VMM read from the VMCS after one VM exit."""

    reason: int  # full exit-reason field (basic reason in bits 15:0)
    exit_qualification: int
    instruction_info: int
    guest_rip: int
    length: int
    interruption_info: int  # VM-exit interruption information (exception exits)
    guest_linear_address: int | None = None  # VMCS 0x640A: meaningful for INS/OUTS exits only

    @property
    def basic_reason(self) -> int:
        """The basic exit reason (bits 15:0 of the exit-reason field)."""
        return self.reason & 0xFFFF


@dataclass
class BochsRun:
    """The outcome of one Bochs boot."""

    records: list[Record | None]  # one per case, None when the case did not exit
    extra: list[tuple[int, Record]]  # exits that match no case (group, record)
    cap: str
    seconds: float
    log: str
    cs_base: list[int] = field(default_factory=list)  # per case: the guest CS base of its group

# ------------------------------------------------------------------ VMCS tables
# SDM Vol. 3 App. B field encodings; SDM 27.3 (guest-state checks) for values.

_AR_DATA = {0: 0xC093, 3: 0xC0F3}  # type 3 (RW accessed), S, DPL, P, D/B, G
# type 11, S, DPL, P; D for 32-bit code, L for 64-bit code
_AR_CODE = {(cs, cpl): {16: 0x009B, 32: 0xC09B, 64: 0xA09B}[cs] | cpl << 5
            for cs in (16, 32, 64) for cpl in (0, 3)}
_CS_LIMIT = {16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFF}
_GUEST_CR0 = 0x80010031  # PG | WP | NE | ET | PE (WP: the read-only guest mapping holds)
_GUEST_CR3 = {16: 0x19000, 32: 0x19000, 64: 0x16000}
_GUEST_CR4 = {16: 0x42010, 32: 0x42010, 64: 0x42020}  # OSXSAVE | VMXE | PSE or PAE
_TSS, _IDT = 0x1C000, 0x1D000
_SEL_CODE = {0: 0x08, 3: 0x1B}  # selector RPL = DPL (SDM 27.3.1.2: SS.RPL = SS.DPL = CS.DPL)
_SEL_DATA = {0: 0x10, 3: 0x23}

_MODE_FIELDS: dict[tuple[int, int], list[tuple[int, int, str]]] = {
    (cs, cpl): [
        (0x4802, _CS_LIMIT[cs], "guest CS limit"),
        (0x4816, _AR_CODE[cs, cpl], "guest CS access rights"),
        (0x0802, _SEL_CODE[cpl], "guest CS"),
        (0x0800, _SEL_DATA[cpl], "guest ES"), (0x0804, _SEL_DATA[cpl], "guest SS"),
        (0x0806, _SEL_DATA[cpl], "guest DS"), (0x0808, _SEL_DATA[cpl], "guest FS"),
        (0x080A, _SEL_DATA[cpl], "guest GS"),
        (0x4814, _AR_DATA[cpl], "ES AR"), (0x4818, _AR_DATA[cpl], "SS AR"),
        (0x481A, _AR_DATA[cpl], "DS AR"), (0x481C, _AR_DATA[cpl], "FS AR"),
        (0x481E, _AR_DATA[cpl], "GS AR"),
        (0x6800, _GUEST_CR0, "guest CR0"),
        (0x6802, _GUEST_CR3[cs], "guest CR3"),
        (0x6804, _GUEST_CR4[cs], "guest CR4"),
    ]
    for cs in (16, 32, 64) for cpl in (0, 3)
}

_COMMON_FIELDS: list[tuple[int, int, str]] = [
    # guest selectors (CS, SS, DS, ES, FS, GS: per CPL in _MODE_FIELDS)
    (0x080C, 0, "guest LDTR"), (0x080E, 0x20, "guest TR"),
    # guest limits
    (0x4800, 0xFFFFFFFF, "ES limit"), (0x4804, 0xFFFFFFFF, "SS limit"),
    (0x4806, 0xFFFFFFFF, "DS limit"), (0x4808, 0xFFFFFFFF, "FS limit"),
    (0x480A, 0xFFFFFFFF, "GS limit"), (0x480C, 0, "LDTR limit"), (0x480E, 0x67, "TR limit"),
    (0x4810, 0xFFFF, "GDTR limit"), (0x4812, 0xFFFF, "IDTR limit"),
    # guest access rights
    (0x4820, 0x10000, "LDTR AR (unusable)"), (0x4822, 0x008B, "TR AR (busy TSS)"),
    # guest bases (CS base is written per group by the VMM)
    (0x6806, 0, "ES base"), (0x680A, 0, "SS base"), (0x680C, 0, "DS base"),
    (0x680E, 0, "FS base"), (0x6810, 0, "GS base"), (0x6812, 0, "LDTR base"),
    (0x6814, _TSS, "TR base"), (0x6816, 0, "GDTR base"), (0x6818, 0, "IDTR base"),
    # other guest state
    (0x4824, 0, "interruptibility"), (0x4826, 0, "activity state"),
    (0x482A, 0, "guest SYSENTER_CS"), (0x681A, 0x400, "guest DR7"), (0x681C, 0, "guest RSP"),
    (0x6820, 0x2, "guest RFLAGS"), (0x6822, 0, "pending debug exceptions"),
    (0x6824, 0, "guest SYSENTER_ESP"), (0x6826, 0, "guest SYSENTER_EIP"),
    (0x2800, 0xFFFFFFFFFFFFFFFF, "VMCS link pointer"), (0x2802, 0, "guest DEBUGCTL"),
    # controls other than the pin/proc/exit/entry words (written by the VMM)
    (0x4004, 0xFFFFFFFF, "exception bitmap: every guest exception exits"),
    (0x4006, 0, "#PF error-code mask"), (0x4008, 0, "#PF error-code match"),
    (0x400A, 0, "CR3-target count"), (0x400E, 0, "exit MSR-store count"),
    (0x4010, 0, "exit MSR-load count"), (0x4014, 0, "entry MSR-load count"),
    (0x4016, 0, "entry interruption info"),
    (0x6000, 0, "CR0 guest/host mask"), (0x6002, 0, "CR4 guest/host mask"),
    (0x6004, 0, "CR0 read shadow"), (0x6006, 0, "CR4 read shadow"),
    # host state
    (0x0C00, 0x10, "host ES"), (0x0C02, 0x18, "host CS"), (0x0C04, 0x10, "host SS"),
    (0x0C06, 0x10, "host DS"), (0x0C08, 0x10, "host FS"), (0x0C0A, 0x10, "host GS"),
    (0x0C0C, 0x20, "host TR"), (0x4C00, 0, "host SYSENTER_CS"),
    (0x6C06, 0, "host FS base"), (0x6C08, 0, "host GS base"), (0x6C0A, _TSS, "host TR base"),
    (0x6C0E, _IDT, "host IDTR base"), (0x6C10, 0, "host SYSENTER_ESP"),
    (0x6C12, 0, "host SYSENTER_EIP"),
    # every XSS bit exits (SDM 26.1.3: XSAVES exits when EDX:EAX & IA32_XSS & bitmap != 0);
    # last, because the write fails (VMWRITEFAIL 202c, tolerated) without XSAVES support
    (0x202C, 0xFFFFFFFFFFFFFFFF, "XSS-exiting bitmap"),
]


def _fields_asm(label: str, rows: Iterable[tuple[int, int, str]]) -> list[str]:
    out = [f"{label}:"]
    out += [f"        .quad 0x{f:04x}, 0x{v:x}    /* {c} */" for f, v, c in rows]
    out.append("        .quad -1")
    return out


# ------------------------------------------------------------------ generation

def _reg_number(r: int | str) -> int:
    if isinstance(r, int):
        if not 0 <= r < 16:
            raise ValueError(f"register number out of range: {r}")
        return r
    name = r.lower()
    if name in REGISTER_NAMES:
        return REGISTER_NAMES.index(name)
    if name in _REG32:
        return _REG32.index(name)
    raise ValueError(f"unknown register {r!r}")


def _mov_lines(code_size: int, regs: Mapping[int | str, int]) -> list[str]:
    lines = []
    for r, value in sorted(regs.items(), key=lambda kv: _reg_number(kv[0])):
        n = _reg_number(r)
        if code_size == 64:
            lines.append(f"        movabs $0x{value & (2**64 - 1):x}, %{REGISTER_NAMES[n]}")
        else:
            if n >= 8:
                raise ValueError("r8-r15 exist only in 64-bit code")
            lines.append(f"        mov $0x{value & 0xFFFFFFFF:x}, %{_REG32[n]}")
    return lines


@dataclass
class _Group:
    code_size: int
    cpl: int
    cases: list[int]  # indices into the case list


def _split_groups(cases: Sequence[Case]) -> list[_Group]:
    groups: list[_Group] = []
    by_mode: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cases):
        if c.code_size not in (16, 32, 64):
            raise ValueError(f"case {i}: code size must be 16, 32 or 64")
        if c.cpl not in (0, 3):
            raise ValueError(f"case {i}: cpl must be 0 or 3")
        if not 1 <= len(c.code) <= 15:
            raise ValueError(f"case {i}: instruction must be 1..15 bytes")
        by_mode.setdefault((c.code_size, c.cpl), []).append(i)
    for (size, cpl), idx in sorted(by_mode.items()):
        cur: list[int] = []
        nbytes = 0
        for i in idx:
            est = len(cases[i].code) + 11 * len(cases[i].regs)
            if cur and (len(cur) >= _MAX_GROUP_CASES
                        or (size == 16 and nbytes + est > _MAX_16BIT_GROUP_BYTES)):
                groups.append(_Group(size, cpl, cur))
                cur, nbytes = [], 0
            cur.append(i)
            nbytes += est
        if cur:
            groups.append(_Group(size, cpl, cur))
    return groups


def generate_cases_asm(cases: Sequence[Case]) -> tuple[str, list[_Group]]:
    """GNU as source of the guest code blocks, the per-group case tables and the
    VMCS field tables.  Labels: ``s<i>`` = start of case i (register loads),
    ``c<i>`` = its instruction, ``g<k>`` / ``g<k>_end`` = group code / final VMCALL."""
    groups = _split_groups(cases)
    out = ["/* generated by vmxaddr.oracles.bochs: guest code and tables */", "        .text"]
    for k, g in enumerate(groups):
        out.append("        .balign 16")
        out.append(f"        .code{g.code_size}")
        out.append(f"g{k}:                             /* {g.code_size}-bit code, CPL {g.cpl} */")
        for i in g.cases:
            c = cases[i]
            out.append(f"s{i}:")
            out += _mov_lines(g.code_size, c.regs)
            out.append(f"c{i}:")
            out.append("        .byte " + ", ".join(f"0x{b:02x}" for b in c.code))
        out.append(f"g{k}_end:")
        out.append("        vmcall                  /* ends the group (exit reason 18) */")
    out.append("        .code64")
    out.append("        .data")
    out.append("        .balign 8")
    out.append("        .globl groups, group_count")
    out.append(f"group_count: .quad {len(groups)}")
    out.append("groups:")
    for k, g in enumerate(groups):
        base = f"g{k}" if g.code_size == 16 else "0"
        out.append(f"        .quad {g.code_size}, {base}, t{k}, {len(g.cases)}, "
                   f"guest_fields_{g.code_size}_{g.cpl}")
    for k, g in enumerate(groups):
        base = f"g{k}" if g.code_size == 16 else "0"
        out.append(f"t{k}:")
        out += [f"        .quad s{i} - {base}" for i in g.cases]
        out.append(f"        .quad g{k}_end - {base}")
    out.append("        .globl common_fields")
    out += _fields_asm("common_fields", _COMMON_FIELDS)
    for (cs, cpl), rows in _MODE_FIELDS.items():
        out += _fields_asm(f"guest_fields_{cs}_{cpl}", rows)
    return "\n".join(out) + "\n", groups


_LINKER_SCRIPT = """\
ROMSIZE = {romsize:#x};
SECTIONS {{
  .payload 0x400000 : AT(0x100000000 - ROMSIZE) {{ *(.text) *(.data) *(.rodata*) *(.bss) }}
  __payload_lma = LOADADDR(.payload);
  __payload_size = SIZEOF(.payload);
  .reset 0xfffff000 : AT(0xfffff000) {{ *(.reset) }}
  /DISCARD/ : {{ *(.note*) *(.comment) *(.eh_frame) }}
}}
"""


def _run(cmd: list[str], cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise BochsError(f"{' '.join(cmd)} failed:\n{p.stdout}{p.stderr}")
    return p.stdout


@dataclass
class _Image:
    rom: Path
    groups: list[_Group]
    insn_addr: dict[int, int]  # case index -> linked address of its instruction
    group_addr: dict[int, int]


def build_image(cases: Sequence[Case], workdir: Path) -> _Image:
    """Generate, assemble and link the ROM image for ``cases`` in ``workdir``."""
    asm, groups = generate_cases_asm(cases)
    (workdir / "cases.s").write_text(asm)
    shutil.copy(ASM_DIR / "vmm.s", workdir / "vmm.s")
    _run(["as", "--64", "-o", "vmm.o", "vmm.s"], workdir)
    _run(["as", "--64", "-o", "cases.o", "cases.s"], workdir)
    # payload size decides the ROM size (power of two, >= 64 KiB, 4 KiB reset block)
    _run(["ld", "-r", "-o", "all.o", "vmm.o", "cases.o"], workdir)
    size_out = _run(["size", "-A", "all.o"], workdir)
    payload = 0
    for line in size_out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in (".text", ".data") and parts[1].isdigit():
            payload += int(parts[1]) + 16
    romsize = 0x10000
    while romsize < payload + 0x1000:
        romsize *= 2
    if romsize > 0x400000:
        raise BochsError(f"too many cases for one image ({payload} bytes of payload)")
    (workdir / "link.ld").write_text(_LINKER_SCRIPT.format(romsize=romsize))
    _run(["ld", "-m", "elf_x86_64", "-T", "link.ld", "-o", "vmm.elf", "all.o"], workdir)
    _run(["objcopy", "-O", "binary", "vmm.elf", "vmm.rom"], workdir)
    rom = workdir / "vmm.rom"
    if rom.stat().st_size != romsize:
        raise BochsError(f"ROM image is {rom.stat().st_size} bytes, expected {romsize}")
    insn_addr: dict[int, int] = {}
    group_addr: dict[int, int] = {}
    for line in _run(["nm", "vmm.elf"], workdir).splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        addr, name = int(parts[0], 16), parts[2]
        if re.fullmatch(r"c\d+", name):
            insn_addr[int(name[1:])] = addr
        elif re.fullmatch(r"g\d+", name):
            group_addr[int(name[1:])] = addr
    return _Image(rom, groups, insn_addr, group_addr)
