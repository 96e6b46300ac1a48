"""`kvm-live:RELEASE`: the running KVM as a model, and `fuzz --model kvm-live:RELEASE` in batches.

A model is handed exit information, not bytes. The live model makes an instruction whose memory
operand the processor reports with that exit information (`instruction_for`: ModRM/SIB with a
32-bit displacement, or the 16-bit forms, an explicit segment prefix, 67h when the address size
is not the code size), runs it under the live KVM with the state given, and checks that the
exit information KVM received (kprobe) is the one asked for on every bit the SDM defines;
otherwise the call raises ModelError (no processor produces that exit information). One call is
one restored Bochs run (a few CPU-seconds): `prefetch` runs many cases in one run and caches
the answers, which is how `fuzz` uses it.
"""

from __future__ import annotations

from typing import Any

from vmxaddr.decode import decode
from vmxaddr.errors import ModelError, UnknownModel
from vmxaddr.exitinfo import ExitInfo, defined_mask, operand_bits
from vmxaddr.gen import OPCODES
from vmxaddr.live.batch import FIELDS, INV_TYPES, MNEMONICS, LiveCase
from vmxaddr.live.campaign import LiveResult, run_live
from vmxaddr.live.images import RELEASES
from vmxaddr.live.record import legalize
from vmxaddr.models.base import FAULT, OK, Access, Result, outcome
from vmxaddr.state import CpuState

SEG_PREFIX = (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)
_RM16 = {(3, 6): 0, (3, 7): 1, (5, 6): 2, (5, 7): 3, (6, None): 4, (7, None): 5, (5, None): 6, (3, None): 7,
         (None, 6): 4, (None, 7): 5}


def instruction_for(mnemonic: str, info: int, qual: int, code_size: int) -> bytes | None:
    """Bytes of `mnemonic` whose memory operand has the given instruction-information operand
    fields and displacement (exit qualification), in `code_size` code; None if none exists."""
    if mnemonic not in MNEMONICS:
        return None
    mp, opcode, regfield, _ = OPCODES[mnemonic]
    scaling, asz_code, seg, index, base = operand_bits(info)
    asz = {0: 16, 1: 32, 2: 64}.get(asz_code)
    if asz is None or seg > 5 or (asz == 16 and code_size == 64) or (asz == 64 and code_size != 64):
        return None
    reg = (info >> 28 & 15) if regfield is None else regfield
    pre = [SEG_PREFIX[seg]]
    if asz != code_size:
        pre.append(0x67)
    if asz == 16:
        if scaling or reg > 7:
            return None
        rm = _RM16.get((base, index)) if index is not None or base is not None else None
        if base is None and index is None:
            modrm, tail = 0x06 | (reg & 7) << 3, (qual & 0xFFFF).to_bytes(2, "little")
        elif rm is None:
            return None
        else:
            modrm, tail = 0x80 | (reg & 7) << 3 | rm, (qual & 0xFFFF).to_bytes(2, "little")
        body = bytes([modrm]) + tail
        rex = 0
    else:
        disp = qual & 0xFFFFFFFF
        if asz == 64 and ((disp ^ 0x80000000) - 0x80000000) & (2**64 - 1) != qual & (2**64 - 1):
            return None
        if index == 4:
            return None  # index RSP cannot be encoded
        x, b = (index or 0) >> 3, (base or 0) >> 3
        mod = 0 if base is None else 2
        sib = scaling << 6 | ((index if index is not None else 4) & 7) << 3 | ((base if base is not None else 5) & 7)
        body = bytes([mod << 6 | (reg & 7) << 3 | 4, sib]) + disp.to_bytes(4, "little")
        rex = 0x40 | (reg >> 3) << 2 | x << 1 | b if (reg >> 3 or x or b) else 0
        if rex and code_size != 64:
            return None
    out = bytes(pre) + (bytes([mp]) if mp is not None else b"") + (bytes([rex]) if rex else b"") + opcode + body
    return out


class LiveModel:
    """The model `kvm-live:RELEASE` (module doc)."""

    def __init__(self, release: str) -> None:
        self.release = release
        self.__name__ = f"kvm-live:{release}"
        self.cache: dict[Any, tuple[LiveResult, bytes]] = {}

    @staticmethod
    def _key(exit: ExitInfo, state: CpuState) -> Any:
        return (exit.instruction, exit.instruction_info, exit.exit_qualification, state)

    def _case(self, exit: ExitInfo, state: CpuState) -> LiveCase | None:
        if state.mode not in ("protected", "64-bit"):
            return None
        raw = instruction_for(exit.instruction, exit.instruction_info, exit.exit_qualification, state.code_size)
        if raw is None:
            return None
        segs = {s: getattr(state, s) for s in ("es", "cs", "ss", "ds", "fs", "gs")}
        regs = list(state.regs)
        # KVM reads the VMCS-field (VMREAD/VMWRITE) or type (INVEPT/INVVPID) register before the
        # operand and answers VMfail if it is not valid: give it a valid one unless the address uses it
        _, _, _, index, base = operand_bits(exit.instruction_info)
        reg2 = exit.instruction_info >> 28 & 15
        valid = FIELDS if exit.instruction in ("vmread", "vmwrite") else INV_TYPES.get(exit.instruction)
        if valid is not None and regs[reg2] not in valid and reg2 not in (index, base):
            regs[reg2] = valid[0]
        return legalize(LiveCase(raw, state.code_size, state.cpl, tuple(regs), segs, exit.instruction))

    def prefetch(self, items: list[tuple[ExitInfo, CpuState]]) -> None:
        """Run the cases of `items` not yet answered in one Bochs batch, so that the calls that
        follow are cache hits."""
        todo, keys = [], []
        for exit, state in items:
            k = self._key(exit, state)
            c = self._case(exit, state)
            if c is not None and k not in self.cache:
                todo.append(c)
                keys.append(k)
        if todo:
            for k, r in zip(keys, run_live(self.release, todo), strict=True):
                self.cache[k] = (r, r.case.raw)

    def __call__(self, exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
        k = self._key(exit, state)
        if k not in self.cache:
            self.prefetch([(exit, state)])
        if k not in self.cache:
            raise ModelError(f"kvm-live: no instruction in {state.mode} mode has this exit information")
        r, raw = self.cache[k]
        if r.probe is None or r.probe.info is None:
            raise ModelError(f"kvm-live: KVM did not decode the operand of {raw.hex()} "
                             f"(L1 observed {r.observed.kind}, vector {r.observed.vector})")
        mask = 0x0FFFFFFF & ~0x7C  # the operand's fields: scaling, address size, segment, index, base
        if (r.probe.info ^ exit.instruction_info) & mask & defined_mask_for(r) or \
                (r.probe.qual ^ exit.exit_qualification) & ((1 << {0: 16, 1: 32}.get(exit.instruction_info >> 7 & 7, 64)) - 1):
            raise ModelError(f"kvm-live: Bochs reported {r.probe.info:#x}/{r.probe.qual:#x} for {raw.hex()}, "
                             f"not the {exit.instruction_info:#x}/{exit.exit_qualification:#x} asked for")
        return live_result(r, explain)


def live_result(r: LiveResult, explain: bool = False) -> Result:
    """KVM's answer as a model Result: the address it accessed, or the fault it queued."""
    a = r.answer
    assert a is not None
    if a.kind == OK:
        return Result(outcome(explain, OK, None, None, "live-kvm", lambda: "KVM went on and accessed the address"),
                      None, a.linear_address)
    return Result(outcome(explain, FAULT, a.vector, a.error_code, "live-kvm",
                          lambda: f"KVM queued #{a.vector}({a.error_code}) (kprobe on kvm_queue_exception*)"))


def defined_mask_for(r: LiveResult) -> int:
    """The instruction-information bits the SDM defines for the case's instruction (every bit when
    it does not decode)."""
    try:
        return defined_mask(decode(r.case.raw, r.case.code_size))
    except Exception:  # noqa: BLE001 - a mask of every bit when the bytes do not decode
        return 0xFFFFFFFF


def resolve(name: str) -> LiveModel:
    """The model `kvm-live:RELEASE`; UnknownModel for a release the harness does not build."""
    release = name.split(":", 1)[1]
    if release not in RELEASES:
        raise UnknownModel(f"{name!r}: unknown release; kvm-live:{' or kvm-live:'.join(RELEASES)}")
    return LiveModel(release)
