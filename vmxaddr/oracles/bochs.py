"""Bochs as a hardware oracle for VM-exit instruction information (issue 8).

Bochs (Debian's 2.7 build has VMX) emulates what a processor writes into the VMCS
on a VM exit.  We boot a tiny VMM of our own in place of the BIOS (``romimage:``),
run a guest made of the instructions under test and read back, for every exit,
the exit reason, exit qualification, VM-exit instruction-information field, guest
RIP and instruction length.

The VMM is ``bochs_asm/vmm.s`` (hand-written, commented); the guest code and the
VMCS guest-state tables are generated here from the case list and a field table.
Everything is assembled and linked with binutils at run time into a ROM image.
"""

from __future__ import annotations

import os
import pty
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class BochsUnavailable(RuntimeError):
    pass


class BochsError(RuntimeError):
    pass


# --------------------------------------------------------------------------- tools

REQUIRED_TOOLS = ("bochs", "as", "ld", "objcopy", "nm", "size")
BIOS_DIR = Path("/usr/share/bochs")
PLUGIN_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu/bochs/plugins"),
    Path("/usr/lib/bochs/plugins"),
)


def missing_tools() -> list[str]:
    """Names of the programs/files the oracle needs that are not installed."""
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if not (BIOS_DIR / "VGABIOS-lgpl-latest").exists():
        missing.append("bochs (VGABIOS-lgpl-latest)")
    if _display_library() is None:
        missing.append("a bochs display library (bochs-term)")
    return missing


def _display_library() -> str | None:
    """Debian's bochs has no 'nogui'; 'term' on a pseudo-terminal is headless enough.
    The rfb library (a VNC server on a local port, always in the bochs package) is
    the fallback."""
    for d in PLUGIN_DIRS:
        if (d / "libbx_term_gui.so").exists() or (d / "libbx_term_gui.so.0").exists():
            return "term"
    for d in PLUGIN_DIRS:
        if (d / "libbx_rfb_gui.so").exists() or (d / "libbx_rfb_gui.so.0").exists():
            return 'rfb, options="timeout=0"'
    return None


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


# -------------------------------------------------------------------- running

_BOCHSRC = """\
megs: 32
romimage: file={rom}
vgaromimage: file={bios_dir}/VGABIOS-lgpl-latest
cpu: model={model}, reset_on_triple_fault=0, ips=100000000
display_library: {display}
port_e9_hack: enabled=1
log: {log}
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
speaker: enabled=0
sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
plugin_ctrl: unmapped=1, biosdev=0, speaker=0, extfpuirq=0, parallel=0, serial=0, gameport=0, iodebug=0
"""

_LINE_X = re.compile(
    r"^X ([0-9a-f]{8}) ([0-9a-f]{16}) ([0-9a-f]{8}) ([0-9a-f]{16}) ([0-9a-f]{2}) ([0-9a-f]{8})(?: ([0-9a-f]{16}))?$"
)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def run_image(rom: Path, workdir: Path, timeout: float = 120.0) -> str:
    """Boot Bochs on ``rom`` headless and return what the VMM wrote on port 0xE9."""
    display = _display_library()
    if display is None or shutil.which("bochs") is None:
        raise BochsUnavailable("bochs is not installed (scripts/system-deps.sh)")
    conf = workdir / "bochsrc"
    conf.write_text(_BOCHSRC.format(rom=rom, bios_dir=BIOS_DIR, model=CPU_MODEL,
                                    display=display, log=workdir / "bochs.log"))
    # Debian builds bochs with its debugger: it stops before the first
    # instruction, so feed it 'continue' (and 'quit' should it stop again).
    (workdir / "dbgcmds").write_text("c\nquit\n")
    master, slave = pty.openpty()  # the term display wants a terminal
    drainer = threading.Thread(target=_drain, args=(master,), daemon=True)
    drainer.start()
    env = dict(os.environ, TERM="dumb")
    env.pop("DISPLAY", None)
    try:
        proc = subprocess.Popen(
            ["bochs", "-q", "-f", str(conf), "-rc", str(workdir / "dbgcmds")],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=env, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise BochsError(f"bochs timed out after {timeout}s; output so far:\n"
                             + out.decode(errors="replace")[-2000:]) from None
        except BaseException:  # ^C: bochs runs in its own session, so the terminal's SIGINT missed it
            proc.kill()
            proc.wait()
            raise
    finally:
        os.close(slave)
        os.close(master)
    text = out.decode(errors="replace")
    if "\nEND" not in text and not text.startswith("END"):
        raise BochsError(did_not_finish(text, err, proc.returncode))
    return text


def did_not_finish(text: str, err: bytes, returncode: int | None) -> str:
    """The message for a run that ended before the VMM's END: how bochs ended and the line of
    its output that says most (a PANIC or error line, else its last), on the first line; the rest
    of the output after it."""
    if returncode is not None and returncode < 0:
        try:
            how = f"bochs was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"bochs was killed by signal {-returncode}"
    else:
        how = f"bochs exited with status {returncode}"
    said = (text[-3000:] + err.decode(errors="replace")[-2000:]).strip()
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    if not lines:
        return f"the VMM did not finish: {how} and printed nothing"
    loud = [ln for ln in lines if re.search(r"PANIC|FATAL|ERROR|error", ln)]
    return f"the VMM did not finish: {how}; bochs said: {(loud or lines)[-1]}\n{said}"


def parse_log(text: str) -> tuple[str, list[tuple[int, Record]], list[str]]:
    """(CAP line, [(group, record)], other VMM lines such as failures)."""
    cap = ""
    recs: list[tuple[int, Record]] = []
    other: list[str] = []
    group = -1
    for raw in text.splitlines():
        # the debugger's own prompt text may share the line with our output
        line = raw.strip()
        if line.startswith("CAP "):
            cap = line[4:]
        elif line.startswith("G "):
            group = int(line[2:], 16)
        elif m := _LINE_X.match(line):
            reason, qual, info, rip, length, intr = (int(x, 16) for x in m.groups()[:6])
            gla = int(m.group(7), 16) if m.group(7) else None
            recs.append((group, Record(reason, qual, info, rip, length, intr, gla)))
        elif line.startswith(("LAUNCHFAIL", "RESUMEFAIL", "VMWRITEFAIL", "EXC", "NOVMX",
                              "VMXONFAIL")):
            other.append(line)
    return cap, recs, other


def run_bochs(cases: Sequence[Case | tuple], timeout: float = 300.0) -> list[Record | None]:
    """Run every case ((bytes, code size, registers) or Case) as guest code in one
    Bochs boot; one record per case, None where the case caused no VM exit."""
    return boot(cases, timeout).records


def boot(cases: Sequence[Case | tuple], timeout: float = 300.0,
         keep_dir: Path | None = None) -> BochsRun:
    """Like run_bochs, with the whole run: unmatched exits, the VMM's CAP line
    (secondary controls it could enable), the time, the raw port-0xE9 log."""
    cases = [c if isinstance(c, Case) else Case(*c) for c in cases]
    missing = missing_tools()
    if missing:
        raise BochsUnavailable("missing: " + ", ".join(missing)
                               + " (install with scripts/system-deps.sh)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmxaddr-bochs-") as tmp:
        workdir = Path(tmp) if keep_dir is None else keep_dir
        workdir.mkdir(parents=True, exist_ok=True)
        image = build_image(cases, workdir)
        text = run_image(image.rom, workdir, timeout=timeout)
    cap, recs, other = parse_log(text)
    bad = [o for o in other if not o.startswith("VMWRITEFAIL 202c")]
    if bad:
        raise BochsError("VMM reported: " + "; ".join(bad[:5]))
    # map (group, guest RIP) -> case
    lookup: dict[tuple[int, int], int] = {}
    cs_base = [0] * len(cases)
    for k, g in enumerate(image.groups):
        base = image.group_addr[k] if g.code_size == 16 else 0
        for i in g.cases:
            lookup[(k, image.insn_addr[i] - base)] = i
            cs_base[i] = base
    records: list[Record | None] = [None] * len(cases)
    extra: list[tuple[int, Record]] = []
    for k, r in recs:
        i = lookup.get((k, r.guest_rip))
        if r.basic_reason == 18 or i is None or records[i] is not None:
            if r.basic_reason != 18:
                extra.append((k, r))
            continue
        records[i] = r
    return BochsRun(records, extra, cap, time.monotonic() - t0, text, cs_base)


ProgressFn = Callable[[int, int], None]


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


# ---------------------------------------------------------------- comparison

@dataclass
class Comparison:
    index: int
    mnemonic: str
    code_size: int
    code: bytes
    ok: bool
    differences: list[str]
    explained: list[str]  # differences that are documented Bochs deviations
    undefined_info: int  # what Bochs wrote into the SDM's undefined info bits
    qual_upper: int | None  # exit-qualification bits above the address size (16/32-bit)
    cpl: int = 0
    items: list[Any] = field(default_factory=list)  # the same differences as vmxaddr.oracles.Disagreement


def _known_deviation(instr: Any, field_name: str, got: int, want: int) -> str | None:
    """A difference that docs/known-oracle-issues.md documents as Bochs's, or None."""
    from vmxaddr.exitinfo import F_DT_OPSIZE, F_RDRAND_OPSIZE
    from vmxaddr.isa import Layout

    layout = instr.spec.layout
    diff = got ^ want
    if field_name == "instruction_info":
        if layout is Layout.DT and diff == F_DT_OPSIZE and not got & F_DT_OPSIZE:
            return "bochs-dt-opsize"  # LGDT group: bit 11 never set
        code = {16: 0, 32: 1, 64: 2}
        # Excused only when our side is what the SDM says: else a bug of ours would hide behind Bochs's
        if layout is Layout.RDRAND and diff & ~F_RDRAND_OPSIZE == 0 \
                and (want & F_RDRAND_OPSIZE) >> 11 == code[sdm_rdrand_opsize(instr)] \
                and (got & F_RDRAND_OPSIZE) >> 11 == code[bochs_rdrand_opsize(instr)]:
            return "bochs-rdrand-opsize"
    return None


def sdm_rdrand_opsize(instr: Any) -> int:
    """The operand size of RDRAND/RDSEED by the SDM, from the prefixes alone (RDRAND/RDSEED pages,
    "Operand size": 16, 32 or 64 by 66h and REX.W; Vol. 1 §3.6 and §3.6.1: REX.W gives 64 and
    wins over 66h; else 66h toggles the default, 16 in 16-bit code, 32 in 32- and 64-bit code)."""
    if instr.code_size == 64 and instr.rex & 8:
        return 64
    default = 16 if instr.code_size == 16 else 32
    if 0x66 in instr.prefixes:
        return 32 if default == 16 else 16
    return default


def bochs_rdrand_opsize(instr: Any) -> int:
    """The operand size Bochs 2.7 reports for RDRAND/RDSEED (observed): REX.W -> 64,
    else 32 in 64-bit mode; outside 64-bit mode the *address* size (67h flips it),
    66h ignored.  The SDM (RDRAND page): 66h/REX.W operand size."""
    if instr.code_size == 64:
        return 64 if instr.rex & 8 else 32
    flipped = 0x67 in instr.prefixes
    return 32 if (instr.code_size == 32) != flipped else 16


def compare(cases: Sequence[Case], records: Sequence[Record | None]) -> list[Comparison]:
    """Compare every Bochs record with the core's encoder (vmxaddr.exitinfo).

    Checked: basic exit reason (EXIT_REASONS), instruction information on the bits
    the SDM defines for the layout and operand (defined_mask), exit qualification
    on the bits within the operand's address size (the rest are undefined, SDM
    28.2.1; not compared for RDRAND/RDSEED, whose qualification the SDM does not
    define), and instruction length."""
    from vmxaddr.decode import decode
    from vmxaddr.exitinfo import Policy, encode, encode_info
    from vmxaddr.isa import EXIT_REASONS, Layout
    from vmxaddr.oracles import Disagreement

    policy = Policy(exit_qual="zero-extend", undefined_bits="zero", ignored_segment="default",
                    si_di="base")
    out: list[Comparison] = []
    for i, (case, rec) in enumerate(zip(cases, records, strict=True)):
        instr = decode(case.code, case.code_size)
        diffs: list[str] = []
        explained: list[str] = []
        items: list[Disagreement] = []
        undefined_info = 0
        qual_upper: int | None = None
        if rec is None:
            diffs.append("no VM exit recorded")
            items.append(Disagreement("exit", "a VM exit", "none recorded"))
        elif case.cpl > 0 and instr.spec.privileged:
            # SDM 26.1.1: faults based on privilege level have priority over VM exits;
            # CPL > 0 -> #GP(0): an exception exit (reason 0) for vector 13, hardware
            # exception (type 3), error code valid.
            if rec.basic_reason != 0 or rec.interruption_info != 0x80000B0D:
                msg = (f"exit reason {rec.basic_reason} (interruption info "
                       f"{rec.interruption_info:#x}), expected #GP(0) at CPL {case.cpl}")
                known = None
                if instr.mnemonic == "invpcid" and rec.basic_reason == EXIT_REASONS["invpcid"]:
                    known = "bochs-invpcid-exits-before-cpl-check"
                (explained if known else diffs).append(msg + (f" [{known}]" if known else ""))
                items.append(Disagreement("exit_reason", "#GP(0) before any VM exit", rec.basic_reason, known))
        else:
            want = encode(instr, rip=rec.guest_rip, policy=policy)
            _, mask = encode_info(instr, policy)
            if rec.basic_reason != EXIT_REASONS[instr.mnemonic]:
                extra = ""
                if rec.basic_reason == 0:
                    extra = f" (exception, interruption info {rec.interruption_info:#x})"
                diffs.append(f"exit reason {rec.basic_reason}{extra}, expected "
                             f"{EXIT_REASONS[instr.mnemonic]}")
                items.append(Disagreement("exit_reason", EXIT_REASONS[instr.mnemonic], rec.basic_reason))
            else:
                got_i, want_i = rec.instruction_info & mask, want.instruction_info & mask
                undefined_info = rec.instruction_info & ~mask & 0xFFFFFFFF
                if got_i != want_i:
                    msg = (f"instruction_info {rec.instruction_info:#010x}, expected "
                           f"{want.instruction_info:#010x} on mask {mask:#010x}")
                    known = _known_deviation(instr, "instruction_info", got_i, want_i)
                    (explained if known else diffs).append(msg + (f" [{known}]" if known else ""))
                    items.append(Disagreement("instruction_info", want_i, got_i, known))
                if instr.spec.layout is not Layout.RDRAND:
                    asz = instr.operand.address_size if instr.operand else 64
                    qmask = (1 << asz) - 1
                    if (rec.exit_qualification ^ want.exit_qualification) & qmask:
                        msg = (f"exit_qualification {rec.exit_qualification:#x}, expected "
                               f"{want.exit_qualification:#x} (low {asz} bits)")
                        known = None
                        if (instr.operand is None and case.code_size == 64
                                and rec.exit_qualification == rec.guest_rip + rec.length):
                            # register form: Bochs adds RIP when a stale decoder field says
                            # "RIP-relative" (docs/known-oracle-issues.md)
                            known = "bochs-regform-qual-next-rip"
                        (explained if known else diffs).append(msg + (f" [{known}]" if known else ""))
                        items.append(Disagreement("exit_qualification", want.exit_qualification & qmask,
                                                  rec.exit_qualification & qmask, known))
                    if asz < 64:
                        qual_upper = rec.exit_qualification >> asz
                if rec.length != instr.length:
                    diffs.append(f"length {rec.length}, expected {instr.length}")
                    items.append(Disagreement("length", instr.length, rec.length))
        out.append(Comparison(i, instr.mnemonic, case.code_size, case.code, not diffs, diffs,
                              explained, undefined_info, qual_upper, case.cpl, items))
    return out


def _decodes(code: bytes, code_size: int) -> Any:
    from vmxaddr.decode import DecodeError, decode

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
        if len(out) < 4 * len(combos) or use_core_gen is None or rng.random() < 0.5:
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


def _core_generator() -> Callable[[random.Random], tuple[bytes, int]] | None:
    try:
        from vmxaddr.gen import MNEMONICS, RandomChooser, gen_encoding
    except ImportError:
        return None
    names = tuple(m for m in MNEMONICS if m not in NOT_EXITING_IN_BOCHS)

    def gen(rng: random.Random) -> tuple[bytes, int]:
        return gen_encoding(RandomChooser(rng), mnemonics=names, register_forms=0.3)

    return gen


def crosscheck_bochs(n: int = 1000, seed: int = 0, progress: ProgressFn | None = None,
                     batch: int = 10000) -> dict[str, Any]:
    """Run ``n`` random encodings through Bochs and compare with the core's encoder.
    Returns a JSON-able summary (counts, time, unexplained disagreements, what Bochs
    wrote into undefined bits)."""
    cases = random_cases(n, seed)
    comparisons: list[Comparison] = []
    seconds = 0.0
    boots = 0
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        run = boot(chunk)
        boots += 1
        seconds += run.seconds
        comparisons += compare(chunk, run.records)
        if progress:
            progress(min(start + batch, len(cases)), len(cases))
    bad = [c for c in comparisons if not c.ok]
    explained: dict[str, int] = {}
    for c in comparisons:
        for e in c.explained:
            key = e[e.rfind("[") + 1:-1]
            explained[key] = explained.get(key, 0) + 1
    undefined_info_bits = 0
    for c in comparisons:
        undefined_info_bits |= c.undefined_info
    upper_nonzero = sum(1 for c in comparisons if c.qual_upper)
    return {
        "oracle": "bochs",
        "seed": seed,
        "cases": len(cases),
        "agree": len(comparisons) - len(bad),
        "unexplained": len(bad),
        "explained": explained,
        "boots": boots,
        "seconds": round(seconds, 2),
        "undefined_info_bits_seen": f"{undefined_info_bits:#010x}",
        "qual_upper_bits_nonzero": upper_nonzero,
        "disagreements": [
            {"mode": c.code_size, "cpl": c.cpl, "bytes": c.code.hex(),
             "instruction": c.mnemonic, "differences": c.differences}
            for c in bad[:50]
        ],
    }


def _case_report(c: Comparison) -> Any:
    """A Comparison as the CaseReport every oracle's report is made of (None when Bochs agrees)."""
    from vmxaddr.oracles import CaseReport

    if not c.items:
        return None
    command = f"vmxaddr decode --mode {c.code_size} {c.code.hex()}"
    note = f"{c.mnemonic}, {c.code_size}-bit code" + (f", CPL {c.cpl}" if c.cpl else "")
    return CaseReport(c.code, c.code_size, list(c.items), command, note)


def bochs_summary(n: int, seed: int = 0, progress: Any = None, batch: int = 10000) -> Any:
    """`crosscheck_bochs` as the report every oracle gives (vmxaddr.oracles.Summary): counts,
    disagreements by field, examples with a command; what only Bochs tells goes in `details`.
    ^C stops after the batch being run and returns the counts so far, marked interrupted."""
    import time

    from vmxaddr.oracles import Summary

    summary = Summary("bochs")
    start_time = time.monotonic()
    cases = random_cases(n, seed)
    undefined_info_bits = upper_nonzero = boots = 0
    try:
        for start in range(0, len(cases), batch):
            chunk = cases[start:start + batch]
            run = boot(chunk)
            boots += 1
            for c in compare(chunk, run.records):
                undefined_info_bits |= c.undefined_info
                upper_nonzero += bool(c.qual_upper)
                summary.add(_case_report(c))
            if progress is not None:
                progress.update(summary.cases)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.seconds = time.monotonic() - start_time
    summary.details = {"boots": boots, "undefined_info_bits_seen": f"{undefined_info_bits:#010x}",
                       "qual_upper_bits_nonzero": upper_nonzero}
    return summary


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


def _print_summary(summary: dict[str, Any], as_json: bool) -> int:
    import json

    if as_json:
        print(json.dumps(summary))
    else:
        print(f"bochs: {summary['cases']} cases, {summary['agree']} agree, "
              f"{summary['unexplained']} unexplained, explained {summary['explained']}, "
              f"{summary['boots']} boot(s), {summary['seconds']} s")
        for d in summary["disagreements"]:
            print(f"  {d['mode']}-bit CPL {d['cpl']} {d['bytes']} {d['instruction']}: "
                  f"{'; '.join(d['differences'])}")
    return 1 if summary["unexplained"] else 0


def _cmd_crosscheck(args: Any) -> int:
    import sys

    from vmxaddr.progress import Progress

    with Progress(args.n, "bochs", enabled=not args.json) as prog:
        try:
            summary = crosscheck_bochs(args.n, args.seed, progress=lambda done, _total: prog.update(done))
        except BochsUnavailable as e:
            print(f"vmxaddr crosscheck: error: {e}", file=sys.stderr)
            return 2
    return _print_summary(summary, args.json)


def register(sub: Any) -> None:
    """``vmxaddr crosscheck --oracle bochs``, unless a ``crosscheck`` command is already
    registered (the general one, which dispatches ``--oracle bochs`` to crosscheck_bochs)."""
    if "crosscheck" in getattr(sub, "choices", {}):
        return
    p = sub.add_parser(
        "crosscheck", help="compare the exit-information encoder with an oracle (Bochs)",
        description="Run N random VMX-family encodings (every instruction, code size 16/32/64, "
        "ModRM/SIB/displacement form, segment override, 67h, REX, CPL 0/3) as guest code under "
        "Bochs and compare each VM exit with vmxaddr's encoder. Known Bochs deviations "
        "(docs/known-oracle-issues.md) are counted apart; exit status 1 if any other "
        "disagreement remains. Needs bochs (scripts/system-deps.sh).")
    p.add_argument("--oracle", choices=("bochs",), default="bochs", help="the oracle (bochs)")
    p.add_argument("-n", type=int, default=1000, help="number of random encodings (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_crosscheck)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vmxaddr.oracles.bochs [-n N] [--seed S] [--json]``"""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vmxaddr.oracles.bochs",
                                 description="Cross-check the exit-information encoder against Bochs.")
    ap.add_argument("-n", type=int, default=1000, help="number of random encodings (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return _cmd_crosscheck(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
