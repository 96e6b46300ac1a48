"""Cases in, answers out: the binary files exchanged with the client (csrc/client.c), the case
generator, and the parser of the kprobe events' raw ring-buffer pages.

A case is one VMX instruction with a memory operand, the code size it runs in (16/32-bit code in
protected mode, 64-bit code in 64-bit mode: VMX instructions #UD in real, virtual-8086 and
compatibility mode, SDM Vol. 3C §31.3), CPL, all general registers and the six segments. The
generator keeps to what a VM entry accepts (SDM Vol. 3C §27.3.1.2: accessed types, SS type 3/7,
SS.DPL = CS.DPL = CPL, limit/G agreement, ES/SS/DS/CS base bits 63:32 zero, FS/GS canonical) and
to what KVM checks before it decodes the operand: a register that names a VMCS field
(VMREAD/VMWRITE, vmcs_field_to_offset) or an INVEPT/INVVPID type KVM supports holds one, since
KVM answers VMfail before get_vmx_mem_address otherwise.
"""

from __future__ import annotations

import random
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from vmxaddr.decode import DecodeError, decode
from vmxaddr.exitinfo import encode_info
from vmxaddr.gen import RandomChooser, gen_encoding
from vmxaddr.state import CpuState, Segment

SYS = 0x40000000  # client.c: linear address of the system region
SLOT = 0x30000
IN_MAGIC = 0x434C4D56
OUT_MAGIC = 0x524C4D56
SEGS = ("es", "cs", "ss", "ds", "fs", "gs")
# struct kvm_regs order (rax rbx rcx rdx rsi rdi rsp rbp r8..r15) as instruction-information numbers
KVM_ORDER = (0, 3, 1, 2, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15)
MNEMONICS = ("vmread", "vmwrite", "vmptrld", "vmptrst", "vmclear", "invept", "invvpid")
# VMCS fields KVM's vmcs12 has (arch/x86/kvm/vmx/vmcs12.c): 16/32/64-bit and natural width,
# read/write and read-only ones
FIELDS = (0x0000, 0x0800, 0x4002, 0x681E, 0x2000, 0x6400, 0x4400, 0x6C00)
INV_TYPES = {"invept": (1, 2), "invvpid": (1, 2, 3)}
CPL3 = 0.03

_SEG = struct.Struct("<QIHBBBBBBBB2x")
_CASE_HEAD = struct.Struct("<BBBB15s5x")
_REGS = struct.Struct("<17Q")
CASE_SIZE = _CASE_HEAD.size + _REGS.size + 6 * _SEG.size
_RES = struct.Struct("<IBBHII4Q")
_OUTHDR = struct.Struct("<8I4Q3dQ")
assert CASE_SIZE == 304 and _RES.size == 48 and _OUTHDR.size == 96


@dataclass
class LiveCase:
    """One case for the live KVM: instruction bytes, code size, CPL, registers and segments as the
    /dev/kvm client loads them."""
    raw: bytes
    code_size: int
    cpl: int
    regs: tuple[int, ...]  # 16, instruction-information numbering (RAX RCX RDX RBX RSP RBP RSI RDI R8..)
    segs: dict[str, Segment]
    mnemonic: str = ""

    def state(self) -> CpuState:
        """The guest state the case runs with (rip: see rip())."""
        mode = "64-bit" if self.code_size == 64 else "protected"
        return CpuState(mode=mode, cpl=self.cpl, regs=self.regs, rip=self.rip(), **self.segs)

    def rip(self) -> int:
        """The guest RIP of the case's slot, relative to CS's base outside 64-bit mode."""
        if self.code_size == 64:
            return SYS + SLOT
        mask = 0xFFFFFFFF if self.code_size == 32 else 0xFFFF
        return (SYS + SLOT - self.segs["cs"].base) & mask


# -- generation ----------------------------------------------------------------------------------

def _legal_limit(limit: int) -> tuple[int, int]:
    """(limit, G) a VM entry accepts: limit above 1 MByte needs G = 1 and bits 11:0 all set."""
    limit &= 0xFFFFFFFF
    if limit > 0xFFFFF:
        return limit | 0xFFF, 1
    return limit, 0


def _data_segment(rng: random.Random, name: str, code_size: int, cpl: int) -> Segment:
    kind = rng.randrange(10)
    if kind <= 2:
        return Segment(dpl=cpl if name == "ss" else 0, selector=0x3B if (name == "ss" and cpl) else 0x18)
    base = rng.choice((0, 0, 0x1000, 0xFFFFF000, 0x7FFFF000, rng.getrandbits(32), rng.getrandbits(16)))
    if name in ("fs", "gs") and rng.random() < 0.3:  # FS/GS bases may be any canonical address
        v = rng.choice((0x100000000, 0x7FFFFFFFF000, rng.getrandbits(47), (1 << 64) - 0x1000))
        base = v
    limit, g = _legal_limit(rng.choice((0xFFFFFFFF, 0xFFFF, 0xFFF, 0xFFFFF, 0x1007, 0, rng.getrandbits(32),
                                        rng.getrandbits(16))))
    if name == "ss":
        typ = rng.choice((3, 3, 7))
        unusable = code_size == 64 and rng.random() < 0.05
        dpl = cpl
    else:
        typ = rng.choice((3, 3, 1, 7, 5, 0xB, 0xF))
        unusable = rng.random() < 0.08
        dpl = rng.choice((0, 0, 3))
    return Segment(base=base, limit=limit, type=typ, s=1, dpl=dpl, p=1, db=rng.choice((1, 1, 0)), g=g,
                   unusable=unusable, selector=(0x38 | 3) if (name == "ss" and cpl) else 0x18)


def _code_segment(rng: random.Random, code_size: int, cpl: int) -> Segment:
    typ = 0xB if rng.random() < 0.85 else 9  # execute-only: a CS: override read faults
    sel = 0x08 if code_size == 64 else 0x10
    if code_size == 64:
        return Segment(base=0, limit=0xFFFFFFFF, type=typ, dpl=cpl, db=0, l=1, g=1, selector=sel | cpl)
    if code_size == 32:
        base = rng.choice((0, 0, 0, 0x1000, 0x10000000, rng.getrandbits(32)))
        return Segment(base=base, limit=0xFFFFFFFF, type=typ, dpl=cpl, db=1, g=1, selector=sel | cpl)
    ip = rng.randrange(0, 0xFFF0)
    return Segment(base=(SYS + SLOT - ip) & 0xFFFFFFFF, limit=0xFFFF, type=typ, dpl=cpl, db=0, g=0,
                   selector=sel | cpl)


def _reg_value(rng: random.Random) -> int:
    k = rng.randrange(8)
    if k == 0:
        return 0
    if k == 1:
        return rng.randrange(0x10000)
    if k == 2:
        return (0x10000 + rng.randrange(-16, 16)) & 0xFFFFFFFF
    if k == 3:
        return ((1 << 32) + rng.randrange(-16, 16))
    if k == 4:
        return ((1 << 47) + rng.randrange(-16, 16))
    if k == 5:
        return (-rng.randrange(1, 0x10000)) & ((1 << 64) - 1)
    if k == 6:
        return rng.getrandbits(32)
    return rng.getrandbits(64)


def generate(n: int, seed: int) -> list[LiveCase]:
    """n random cases (vmxaddr's encoding generator, register and segment values as above)."""
    rng = random.Random(seed)
    ch = RandomChooser(random.Random(seed ^ 0x11FE))
    out: list[LiveCase] = []
    while len(out) < n:
        raw, cs = gen_encoding(ch, mnemonics=MNEMONICS, register_forms=0.0)
        try:
            instr = decode(raw, cs)
        except DecodeError:
            continue
        if instr.length != len(raw) or instr.operand is None:
            continue
        cpl = 3 if rng.random() < CPL3 else 0
        regs = [_reg_value(rng) for _ in range(16)]
        if cs != 64:
            regs = [r & 0xFFFFFFFF for r in regs]
        segs = {s: _data_segment(rng, s, cs, cpl) for s in ("es", "ss", "ds", "fs", "gs")}
        segs["cs"] = _code_segment(rng, cs, cpl)
        op = instr.operand
        if cs != 64 and cpl == 0 and op.segment != "ss":
            # L1 receives a fault through a CPL-0 interrupt gate, which pushes on SS:ESP (no stack
            # switch in legacy mode): keep SS and ESP usable when the operand does not read them
            segs["ss"] = Segment(selector=0x18)
            if 4 not in (op.base, op.index):
                regs[4] = 0x10000000 + rng.randrange(0, 0x100000, 4)
        info, _ = encode_info(instr)
        reg2 = info >> 28 & 0xF
        if instr.mnemonic in ("vmread", "vmwrite"):
            regs[reg2] = rng.choice(FIELDS)
        elif instr.mnemonic in INV_TYPES:
            regs[reg2] = rng.choice(INV_TYPES[instr.mnemonic])
        out.append(LiveCase(raw, cs, cpl, tuple(regs), segs, instr.mnemonic))
    return out


def from_record(rec: dict[str, Any], state: CpuState) -> LiveCase | None:
    """A case replayed from a trace's exit record (its bytes, code size and state)."""
    try:
        cs = int(rec.get("code_size") or (64 if state.mode == "64-bit" else 32))
        raw = bytes.fromhex(str(rec["bytes"]).replace(" ", ""))
        instr = decode(raw, cs)
    except (KeyError, ValueError, DecodeError):
        return None
    raw = raw[:instr.length]
    if instr.mnemonic not in MNEMONICS or instr.operand is None:
        return None
    segs = {s: getattr(state, s) for s in SEGS}
    return LiveCase(raw, cs, state.cpl, tuple(state.regs), segs, instr.mnemonic)


# -- the files ----------------------------------------------------------------------------------

def encode_cases(cases: list[LiveCase]) -> bytes:
    """The client's input file (client.c's layout): a header, then each case's bytes, registers and
    segments."""
    parts = [struct.pack("<4I16x", IN_MAGIC, 1, len(cases), 0)]
    for c in cases:
        flags = 1 if c.mnemonic in ("vmclear", "vmptrld") else 0
        parts.append(_CASE_HEAD.pack(c.code_size, c.cpl, len(c.raw), flags, c.raw))
        parts.append(_REGS.pack(*(c.regs[i] & (2**64 - 1) for i in KVM_ORDER), 2))
        for s in SEGS:
            g = c.segs[s]
            parts.append(_SEG.pack(g.base & (2**64 - 1), g.limit & 0xFFFFFFFF, g.selector, g.type, g.s, g.dpl,
                                   g.p, g.db, g.l, g.g, int(g.unusable)))
    return b"".join(parts)


K_HLT, K_EXC, K_SHUTDOWN, K_OTHER, K_IOCTL = 1, 2, 3, 4, 5
KIND_NAMES = {K_HLT: "completed", K_EXC: "exception", K_SHUTDOWN: "shutdown", K_OTHER: "other-exit",
              K_IOCTL: "ioctl-failed"}


@dataclass
class Observed:
    """What L1 observed for one case (client.c struct lres)."""
    kind: int
    vector: int
    exit_reason: int
    error_code: int
    err: int
    rip: int
    rflags: int

    @property
    def vmfail(self) -> str | None:
        """"invalid" (CF) or "valid" (ZF) when the instruction failed with VMfail, else None."""
        return "invalid" if self.rflags & 1 else "valid" if self.rflags & 0x40 else None


@dataclass
class Probe:
    """What KVM saw and did for one case (kprobe events between two KVM_SET_REGS)."""
    qual: int | None = None
    info: int | None = None
    ret: int | None = None
    queued: list[tuple[int, int | None]] = field(default_factory=list)  # (vector, error code)
    access: int | None = None  # the gva KVM read or wrote after decoding
    rip: int | None = None


@dataclass
class Output:
    """The client's output file decoded: what L1 observed per case, the kprobe events, the header's
    counts and times."""
    observed: list[Observed]
    probes: list[Probe] | None
    header: dict[str, Any]
    formats: str
    log: str = ""


def decode_output(data: bytes) -> Output:
    """Parse the client's output file (ValueError when it is not one)."""
    h = _OUTHDR.unpack_from(data, 0)
    if h[0] != OUT_MAGIC:
        raise ValueError("not a client output file")
    n, rec = h[2], h[3]
    fmt_off, fmt_len, raw_off, raw_len = h[8:12]
    header = {"n": n, "probes": h[4], "vmx_revision": h[5], "shadow": h[6], "seconds_setup": h[12],
              "seconds_cases": h[13], "seconds_trace": h[14], "raw_bytes": raw_len}
    obs = []
    for i in range(n):
        _, kind, vec, er, ec, err, rip, rflags, _, _ = _RES.unpack_from(data, _OUTHDR.size + i * rec)
        obs.append(Observed(kind, vec, er, ec, err, rip, rflags))
    formats = data[fmt_off:fmt_off + fmt_len].decode(errors="replace")
    probes = parse_events(data[raw_off:raw_off + raw_len], formats, n) if h[4] else None
    return Output(obs, probes, header, formats)


# -- the ring buffer ----------------------------------------------------------------------------

_FIELD = re.compile(r"field:([^;]*);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);")


def _formats(text: str) -> dict[int, tuple[str, dict[str, tuple[int, int, bool]]]]:
    """event id -> (name, {field: (offset, size, signed)}) from the FORMAT blocks."""
    out = {}
    for m in re.finditer(r"FORMAT (\w+)\n(.*?)END\n", text, re.S):
        name, body = m.groups()
        idm = re.search(r"^ID: (\d+)", body, re.M)
        if not idm:
            continue
        fields = {}
        for f in _FIELD.finditer(body):
            fname = f.group(1).split()[-1].split("[")[0]
            fields[fname] = (int(f.group(2)), int(f.group(3)), f.group(4) == "1")
        out[int(idm.group(1))] = (name, fields)
    return out


def _events(raw: bytes) -> list[bytes]:
    """The data of each event in the raw pages (ring buffer page: u64 time stamp, u64 commit,
    then events with a 32-bit header: type_len:5, time_delta:27; kernel/trace/ring_buffer.c)."""
    out = []
    for p in range(0, len(raw) - 16 + 1, 4096):
        commit = struct.unpack_from("<Q", raw, p + 8)[0] & 0xFFFFF
        pos, end = p + 16, p + 16 + min(commit, 4096 - 16)
        while pos + 4 <= end:
            hdr = struct.unpack_from("<I", raw, pos)[0]
            tl = hdr & 0x1F
            if tl == 29:  # padding
                if hdr >> 5 == 0:
                    break
                pos += 4 + struct.unpack_from("<I", raw, pos + 4)[0]
            elif tl in (30, 31):  # time extend / time stamp
                pos += 8
            elif tl == 0:
                length = struct.unpack_from("<I", raw, pos + 4)[0]
                out.append(raw[pos + 8:pos + 4 + length])
                pos += 4 + length
            else:
                out.append(raw[pos + 4:pos + 4 + 4 * tl])
                pos += 4 + 4 * tl
    return out


def parse_events(raw: bytes, formats: str, n: int) -> list[Probe]:
    """One Probe per case: the events from one KVM_SET_REGS of a case to the next."""
    fmts = _formats(formats)
    probes: list[Probe] = []
    cur: Probe | None = None

    def get(data: bytes, fields: dict[str, tuple[int, int, bool]], name: str) -> int:
        off, size, signed = fields[name]
        return int.from_bytes(data[off:off + size], "little", signed=signed)

    for ev in _events(raw):
        if len(ev) < 2:
            continue
        eid = struct.unpack_from("<H", ev, 0)[0]
        if eid not in fmts:
            continue
        name, fields = fmts[eid]
        if name == "setregs":
            if "fl" in fields and get(ev, fields, "fl") & 4:  # the client's own stub (client.c run_stub)
                cur = None
                continue
            cur = Probe(rip=get(ev, fields, "rip"))
            probes.append(cur)
        elif cur is None:
            continue
        elif name == "gvma":
            cur.qual, cur.info = get(ev, fields, "qual"), get(ev, fields, "info")
        elif name == "gvmar" and cur.qual is not None and cur.ret is None:
            cur.ret = get(ev, fields, "ret")
        elif name == "qe":
            cur.queued.append((get(ev, fields, "nr"), get(ev, fields, "ec")))
        elif name == "q":
            cur.queued.append((get(ev, fields, "nr"), None))
        elif name in ("rd", "wr") and cur.ret == 0 and cur.access is None:
            cur.access = get(ev, fields, "gva")
    return probes
