"""Address oracle: unicorn (QEMU's x86 CPU emulation) computes the effective and linear address
of the same memory-operand encoding, and we compare with the SDM model.

For a case (instruction + CPU state) we build two ordinary instructions with the VMX
instruction's memory operand byte for byte — its segment-override and 67 prefixes in their
order, its REX.X/REX.B, ModRM mod and r/m, SIB and displacement:
  * LEA r, m (8D /r) with a 32-bit (64-bit in 64-bit mode) destination: the effective address,
    zero-extended from the address size;
  * MOVZX r, byte m (0F B6 /r): a one-byte load through the segment, whose linear address a
    memory hook records (UC_HOOK_MEM_READ / UC_HOOK_MEM_READ_UNMAPPED; the unmapped hook stops
    the emulation, which is how the run ends).
The 66/F2/F3 mandatory prefixes are dropped (they do not take part in addressing; 66 would make
LEA's destination 16 bits) and 66 is added in 16-bit code for a 32-bit LEA destination. For a
RIP-relative operand each instruction is placed so that it *ends* where the VMX instruction ends
(state.rip + length), so the next-RIP both add is the same.

Modes: 64-bit mode is unicorn's UC_MODE_64 with FS/GS bases written through UC_X86_REG_FS_BASE/
GS_BASE. Protected mode (32- and 16-bit code) is UC_MODE_32 with a GDT of our own: a flat 32- or
16-bit code segment for CS and one data descriptor per data segment carrying the state's base;
the selectors are reloaded for every case. Unicorn enforces no segment limits and no
canonical-address checks and runs without paging: addresses are compared, faults are not, and
in 64-bit mode the load's address is only seen modulo 2^52 (QEMU's physical-address width), so
bits 51:0 of the linear address are compared (the full 64-bit effective address comes from LEA).
"""

from __future__ import annotations

import random
import shlex
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmxaddr.case import Case
from vmxaddr.decode import DecodeError, Instruction, decode
from vmxaddr.exitinfo import Policy
from vmxaddr.gen import RandomChooser, gen_state
from vmxaddr.isa import REG64
from vmxaddr.models.sdm import sdm
from vmxaddr.oracles import CaseReport, Disagreement, Summary
from vmxaddr.oracles.case_stream import encodings
from vmxaddr.progress import Progress
from vmxaddr.state import CpuState

CODE = 0x4000_0000_0000  # fixed code page (64-bit mode; below 2^47, above 32-bit addresses)
CODE32 = 0x0000_8000  # fixed code page outside 64-bit mode: below 64 KiB, since 16-bit code wraps IP at 0xffff
GDT = 0x0002_0000
PAGE = 0x1000
MASK52 = (1 << 52) - 1
SEG_ORDER = ("es", "ss", "ds", "fs", "gs")  # data segments; GDT slots 3… (1 = 32-bit code, 2 = 16-bit code)
LEGACY = frozenset((0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))
SEG_PFX = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}

EXPLAINED_1781 = ("unicorn-1781: in 64-bit mode unicorn lets a later, ignored CS/DS/ES/SS prefix cancel an "
                  "earlier FS/GS override (unicorn issue #1781); the SDM keeps FS/GS")


def _desc(base: int, code: bool = False, db: int = 1) -> bytes:
    """A present, DPL-0, 4-GiB segment descriptor (SDM Vol. 3A §3.4.5): read/write data, or
    execute/read code with D = db."""
    limit = 0xFFFFF
    access = (0xB if code else 0x3) | 1 << 4 | 1 << 7
    flags = db << 2 | 1 << 3
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, base >> 16 & 0xFF, access,
                       limit >> 16 & 0xF | flags << 4, base >> 24 & 0xFF)


@dataclass(frozen=True, slots=True)
class Probe:
    """The two instructions built from a VMX instruction's memory operand."""

    lea: bytes
    load: bytes
    lea_dest: int  # register number LEA writes
    load_dest: int  # register number the load writes (if the read lands in mapped memory)
    rip_relative: bool


def split(raw: bytes, code_size: int) -> tuple[list[int], int, bytes]:
    """(legacy prefixes in order, REX byte or 0, the bytes from ModRM on) of a decoded VMX
    instruction's bytes."""
    i = 0
    pfx: list[int] = []
    rex = 0
    while raw[i] in LEGACY or (code_size == 64 and 0x40 <= raw[i] <= 0x4F):
        if raw[i] in LEGACY:
            pfx.append(raw[i])
            rex = 0
        else:
            rex = raw[i]
        i += 1
    assert raw[i] == 0x0F
    i += 3 if raw[i + 1] == 0x38 else 2
    return pfx, rex, raw[i:]


def probe(instr: Instruction) -> Probe:
    """The LEA-and-load code that makes unicorn compute `instr`'s effective and linear address, with
    the registers it must set."""
    op = instr.operand
    assert op is not None
    cs = instr.code_size
    pfx, rex, tail = split(instr.raw, cs)
    keep = [p for p in pfx if p not in (0x66, 0xF2, 0xF3, 0xF0)]
    used = {r for r in (op.base, op.index) if r is not None}
    # LEA's destination must not feed the load; the load's must not overwrite LEA's result
    dest, dest2 = [r for r in range(8) if r not in used][:2]
    body = bytes([tail[0] & 0xC7 | dest << 3]) + tail[1:]
    body2 = bytes([tail[0] & 0xC7 | dest2 << 3]) + tail[1:]
    if cs == 64:
        rexb = bytes([(rex & 0x0B) | 0x48])  # keep X and B, clear R (dest < 8), W: 64-bit LEA
        lea = bytes(keep) + rexb + b"\x8d" + body
        load = bytes(keep) + rexb + b"\x0f\xb6" + body2
    else:
        lea = (b"\x66" if cs == 16 else b"") + bytes(keep) + b"\x8d" + body
        load = bytes(keep) + b"\x0f\xb6" + body2
    return Probe(lea, load, dest, dest2, op.rip_relative)


class UnicornOracle:
    """One unicorn instance per code size, reused: each case rewrites registers, segment
    descriptors and code, then runs LEA and the load."""

    def __init__(self) -> None:
        import unicorn as U
        from unicorn import x86_const as X

        self.U, self.X = U, X
        self.ucs: dict[int, Any] = {}
        self.seen: list[int] = []
        self.gprs64 = [getattr(X, f"UC_X86_REG_{n}") for n in
                       ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                        "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")]
        self.gprs32 = [getattr(X, f"UC_X86_REG_{n}") for n in ("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI")]
        self.segregs = {s: getattr(X, f"UC_X86_REG_{s.upper()}") for s in SEG_ORDER}

    def _hook(self, uc: Any, access: int, address: int, size: int, value: int, user: Any) -> bool:
        if size == 1:  # the probe's byte load (descriptor loads are 4-byte reads)
            self.seen.append(address)
        return False  # for an unmapped read: stop the emulation, the address is recorded

    def uc(self, code_size: int) -> Any:
        """The unicorn instance for `code_size` code, made (memory mapped, segments set up) at the
        first use."""
        uc = self.ucs.get(code_size)
        if uc is not None:
            return uc
        U, X = self.U, self.X  # noqa: N806
        if code_size == 64:
            uc = U.Uc(U.UC_ARCH_X86, U.UC_MODE_64)
            uc.mem_map(CODE, 2 * PAGE)
        else:
            uc = U.Uc(U.UC_ARCH_X86, U.UC_MODE_32)
            uc.mem_map(CODE32, 2 * PAGE)
            uc.mem_map(GDT, PAGE)
            gdt = bytes(8) + _desc(0, code=True, db=1) + _desc(0, code=True, db=0) + b"".join(_desc(0) for _ in SEG_ORDER)
            uc.mem_write(GDT, gdt)
            uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(gdt) - 1, 0))
            for k, s in enumerate(SEG_ORDER):
                uc.reg_write(self.segregs[s], (3 + k) * 8)
            uc.reg_write(X.UC_X86_REG_CS, 8 if code_size == 32 else 16)
        uc.hook_add(U.UC_HOOK_MEM_READ, self._hook)
        uc.hook_add(U.UC_HOOK_MEM_READ_UNMAPPED, self._hook)
        self.ucs[code_size] = uc
        return uc

    def _load_state(self, uc: Any, state: CpuState, code_size: int) -> None:
        X = self.X  # noqa: N806
        if code_size == 64:
            for r, v in zip(self.gprs64, state.regs, strict=True):
                uc.reg_write(r, v)
            uc.reg_write(X.UC_X86_REG_FS_BASE, state.fs.base)
            uc.reg_write(X.UC_X86_REG_GS_BASE, state.gs.base)
        else:
            for r, v in zip(self.gprs32, state.regs, strict=False):
                uc.reg_write(r, v & 0xFFFFFFFF)
            uc.mem_write(GDT + 3 * 8, b"".join(_desc(state.segment(s).base & 0xFFFFFFFF) for s in SEG_ORDER))
            for k, s in enumerate(SEG_ORDER):
                uc.reg_write(self.segregs[s], (3 + k) * 8)  # reload the descriptor cache

    def _run(self, uc: Any, start: int, code: bytes) -> int | None:
        self.seen.clear()
        uc.mem_write(start, code)
        try:
            uc.emu_start(start, start + len(code))
        except self.U.UcError:
            pass
        return self.seen[0] if self.seen else None

    def addresses(self, instr: Instruction, state: CpuState) -> tuple[int, int | None]:
        """(effective address from LEA, linear address of the load or None if unicorn did not load)."""
        cs = instr.code_size
        uc = self.uc(cs)
        self._load_state(uc, state, cs)
        pr = probe(instr)
        read_lea = self.gprs64[pr.lea_dest] if cs == 64 else self.gprs32[pr.lea_dest]
        if not pr.rip_relative:
            base = CODE if cs == 64 else CODE32
            linear = self._run(uc, base, pr.lea + pr.load)
            return uc.reg_read(read_lea), linear
        # RIP-relative: each probe ends where the VMX instruction ends.
        end = (state.rip + instr.length) & ((1 << 64) - 1)
        first = (end - max(len(pr.lea), len(pr.load))) & ~(PAGE - 1)
        pages = range(first, (end + PAGE - 1) & ~(PAGE - 1) or PAGE, PAGE)
        mapped = [p for p in pages if not CODE <= p < CODE + 2 * PAGE]
        for p in mapped:
            uc.mem_map(p, PAGE)
        try:
            self._run(uc, end - len(pr.lea), pr.lea)
            ea = uc.reg_read(read_lea)
            linear = self._run(uc, end - len(pr.load), pr.load)
        finally:
            for p in mapped:
                uc.mem_unmap(p, PAGE)
        return ea, linear


def _ignored_after_fsgs(instr: Instruction) -> bool:
    segs = [SEG_PFX[p] for p in instr.prefixes if p in SEG_PFX]
    return instr.code_size == 64 and bool(segs) and segs[-1] not in ("fs", "gs") and any(s in ("fs", "gs") for s in segs)


def compare_case(oracle: UnicornOracle, instr: Instruction, state: CpuState) -> list[Disagreement] | None:
    """Disagreements between the SDM model and unicorn for one case; None when the case is
    skipped (the model stops before computing an address: #UD for the mode, #GP for CPL)."""
    case = Case(instr, state, Policy())
    res = case.run(sdm)
    if res.effective_address is None or res.linear_address is None:
        return None
    ea, linear = oracle.addresses(instr, state)
    out: list[Disagreement] = []
    if ea != res.effective_address:
        out.append(Disagreement("effective_address", res.effective_address, ea))
    if instr.code_size == 64:
        want = res.linear_address & MASK52
        if linear != want:
            why = None
            if _ignored_after_fsgs(instr) and linear == res.effective_address & MASK52:
                why = EXPLAINED_1781
            out.append(Disagreement("linear_address", want, linear, why))
    elif linear != res.linear_address:
        out.append(Disagreement("linear_address", res.linear_address, linear))
    return out


def explain_command(instr: Instruction, state: CpuState) -> str:
    """A `vmxaddr explain` command line for the case (registers the operand uses, non-zero
    segment bases, RIP when RIP-relative)."""
    op = instr.operand
    assert op is not None
    parts = ["vmxaddr", "explain", "--mode", str(instr.code_size)]
    for r in sorted({r for r in (op.base, op.index) if r is not None}):
        parts += ["--reg", f"{REG64[r]}={state.regs[r]:#x}"]
    if op.rip_relative:
        parts += ["--rip", f"{state.rip:#x}"]
    for s in ("es", "ss", "ds", "fs", "gs"):
        b = state.segment(s).base
        if b:
            parts += ["--seg", f"{s}.base={b:#x}"]
    parts.append(instr.raw.hex(" "))
    return " ".join(shlex.quote(p) for p in parts)


def crosscheck_unicorn(n: int, seed: int, progress: Progress | None = None,
                       on_case: Callable[[int], None] | None = None) -> Summary:
    """Compare the SDM model's addresses with unicorn's on `n` generated cases: encodings from
    the seeded walk (memory forms of every instruction × code size × prefix combination),
    states from vmxaddr.gen with a seeded random.Random."""
    summary = Summary("unicorn")
    oracle = UnicornOracle()
    ch = RandomChooser(random.Random(seed ^ 0x5EED))
    stream = encodings(seed, memory_only=True)
    try:
        for k in range(n):
            enc = next(stream)
            try:
                instr = decode(enc.raw, enc.code_size)
            except DecodeError as e:  # the walk makes only valid encodings: this is our bug
                summary.add(CaseReport(enc.raw, enc.code_size, [Disagreement("decode", str(e), "valid")],
                                       f"vmxaddr explain --mode {enc.code_size} {enc.raw.hex()}", enc.combo))
                continue
            state = gen_state(ch, enc.code_size, weird_modes=0.0)
            ds = compare_case(oracle, instr, state)
            if ds is None:
                summary.add(None, skipped=True)
            elif ds:
                summary.add(CaseReport(instr.raw, instr.code_size, ds, explain_command(instr, state), enc.combo))
            else:
                summary.add(None)
            if progress is not None and (k & 1023) == 0:
                progress.update(k, f"{summary.unexplained_cases} unexplained")
    except KeyboardInterrupt:  # ^C: the counts so far, marked (vmxaddr/oracles/crosscheck.py prints them)
        summary.interrupted = True
        return summary
    if progress is not None:
        progress.update(n, f"{summary.unexplained_cases} unexplained")
    return summary
