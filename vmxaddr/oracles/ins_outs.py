"""INS/OUTS against the oracles that reach them: iced-x86 decodes the bytes, unicorn executes them.

unicorn (QEMU's x86 emulation) runs OUTSB — whose element is read through the memory hook the
address oracle already installs (vmxaddr.oracles.unicorn: one-byte reads are recorded) — with the
instruction's own segment-override and 67h prefixes, so the address it reads is the first
element's linear address. INS writes instead of reading: its address is probed as OUTSB through
an ES override with rSI set to rDI's value, the same segment and offset. Unicorn enforces no
limits and no canonical checks: addresses are compared, faults are not (as for the VMX forms).
"""

from __future__ import annotations

from typing import Any

from vmxaddr.instruction import Instruction
from vmxaddr.oracles.iced import _enum_names, _iced
from vmxaddr.oracles.unicorn import CODE, CODE32, UnicornOracle
from vmxaddr.state import CpuState

_SEGMENT_OVERRIDES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65))


def probe_bytes(instr: Instruction) -> bytes:
    """OUTSB with the instruction's address-size and (for OUTS) segment prefixes; for INS an ES
    override instead of any segment prefix."""
    keep = [p for p in instr.prefixes if p == 0x67 or (instr.mnemonic == "outs" and p in _SEGMENT_OVERRIDES)]
    if instr.mnemonic == "ins":
        keep.append(0x26)
    return bytes(keep) + b"\x6e"


def unicorn_address(oracle: UnicornOracle, instr: Instruction, state: CpuState) -> int | None:
    """The linear address unicorn reads the first element from (None if it read nothing)."""
    cs = instr.code_size
    uc = oracle.uc(cs)
    if not getattr(oracle, "_out_hooked", False):
        def on_out(uc: Any, port: int, size: int, value: int, user: Any) -> None:
            return None

        uc_ = oracle.U
        for code_size in (16, 32, 64):
            oracle.uc(code_size).hook_add(uc_.UC_HOOK_INSN, on_out, None, 1, 0, oracle.X.UC_X86_INS_OUT)
        oracle._out_hooked = True  # type: ignore[attr-defined]
    if instr.mnemonic == "ins":
        state = state.with_reg("rsi", state.regs[7])
    oracle._load_state(uc, state, cs)
    return oracle._run(uc, CODE if cs == 64 else CODE32, probe_bytes(instr))


def iced_string_view(raw: bytes, code_size: int) -> dict[str, Any]:
    """What iced-x86 makes of an INS/OUTS: mnemonic, length, memory segment, base register,
    operand (element) size."""
    iced = _iced()
    ins = iced.Decoder(code_size, raw).decode()
    regs = _enum_names("Register")
    kinds = _enum_names("OpKind")
    text = iced.Formatter(iced.FormatterSyntax.INTEL).format(ins)
    # The string operand's kind names segment and register: MEMORY_ESRDI / _ESEDI / _ESDI (INS),
    # MEMORY_SEG_RSI / _SEG_ESI / _SEG_SI (OUTS, segment in memory_segment).
    kind = next((kinds[ins.op_kind(k)] for k in range(ins.op_count) if kinds[ins.op_kind(k)].startswith("MEMORY_")), "")
    reg = kind.rsplit("_", 1)[-1].lower() if kind else None
    if kind.startswith("MEMORY_ES"):
        seg, reg = "es", kind[len("MEMORY_ES"):].lower()
    else:
        seg = regs.get(ins.memory_segment, "").lower() or None
    words = text.split()
    rep = words[0] in ("rep", "repe", "repne")  # iced writes F2 as "repne"; it repeats INS/OUTS as F3 does
    return {"text": text, "length": ins.len, "mnemonic": words[1] if rep else words[0],
            "base": reg, "segment": seg, "rep": rep}
