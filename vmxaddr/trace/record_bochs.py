"""`trace record --bochs`: a trace recorded from an emulated processor, not synthesised.

Random cases from vmxaddr's generator (`vmxaddr.gen`) run as guest code under the Bochs harness
(`vmxaddr.oracles.bochs`, many cases per boot). For every VM exit the record holds what the
emulated processor wrote into the VMCS (exit reason, exit qualification, VM-exit
instruction-information field, VM-exit instruction length, guest RIP), the instruction bytes, the
guest state the harness loaded (segments, CPL, mode, every GPR, set by the guest code right
before the instruction), and the answer of a hypervisor model to that exit (`--hypervisor`,
default `sdm`), computed from the recorded fields exactly as a hypervisor would see them.

Records carry `"source": {"processor": "bochs-2.7", ...}`: check-trace then attributes Bochs
2.7's documented departures (docs/known-oracle-issues.md) instead of calling them unexplained.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vmxaddr.case import access_of, run_model
from vmxaddr.decode import DecodeError, decode
from vmxaddr.exitinfo import ExitInfo, identity_of
from vmxaddr.gen import MNEMONICS, RandomChooser, _reg_value, gen_encoding
from vmxaddr.isa import REG64, SPECS
from vmxaddr.models import covers
from vmxaddr.models.base import FAULT, IMPL, OK, Model
from vmxaddr.oracles import bochs
from vmxaddr.oracles.bochs import NOT_EXITING_IN_BOCHS, Case
from vmxaddr.state import CpuState, Segment
from vmxaddr.trace.format import MASK64, REASON_INSTRUCTIONS, Recorded
from vmxaddr.trace.quirks import BOCHS_27
from vmxaddr.trace.synth import model_failure

PROCESSOR = BOCHS_27
BATCH = 10000  # cases per Bochs boot (as `crosscheck --oracle bochs`)
CPL3 = 0.1  # share of cases run at CPL 3 (non-privileged instructions only: see _cases)

# The guest state the harness loads (vmxaddr/oracles/bochs_guest.py: _MODE_FIELDS, _COMMON_FIELDS):
# flat data segments (base 0, limit 4 GiB, type 3, D/B, G; DPL = CPL), CS per code size.
_SEL_CODE = {0: 0x08, 3: 0x1B}
_SEL_DATA = {0: 0x10, 3: 0x23}


def bochs_state(code_size: int, cpl: int, cs_base: int, regs: tuple[int, ...], rip: int) -> CpuState:
    """The guest state of one case, as the VMCS guest-state area held it at the exit."""
    data = Segment(dpl=cpl, selector=_SEL_DATA[cpl])
    if code_size == 16:
        cs = Segment(base=cs_base, limit=0xFFFF, type=0xB, dpl=cpl, db=0, g=0, selector=_SEL_CODE[cpl])
    elif code_size == 32:
        cs = Segment(type=0xB, dpl=cpl, selector=_SEL_CODE[cpl])
    else:
        cs = Segment(type=0xB, dpl=cpl, db=0, l=1, selector=_SEL_CODE[cpl])
    mode = "64-bit" if code_size == 64 else "protected"
    return CpuState(mode=mode, cpl=cpl, regs=regs, rip=rip, es=data, cs=cs, ss=data, ds=data, fs=data, gs=data)


@dataclass
class _Planned:
    raw: bytes
    code_size: int
    cpl: int
    regs: tuple[int, ...]  # 16 values (only the first 8 are set outside 64-bit code)


@dataclass
class RecordStats:
    """Counts of a Bochs recording: cases, exits, boots, Bochs seconds, cases without an exit, model
    errors."""
    cases: int = 0
    exits: int = 0
    boots: int = 0
    seconds: float = 0.0
    no_exit: int = 0  # cases that caused no VMX-family exit (listed on stderr by the command)
    other_exits: list[str] = field(default_factory=list)
    model_errors: int = 0
    model_error: str = ""  # what the model did the last time it gave no answer


def _cases(model: Model, n: int, seed: int) -> Iterator[_Planned]:
    """n random cases, drawn as they are needed (a billion cases are never planned ahead)."""
    names = tuple(m for m in MNEMONICS if m not in NOT_EXITING_IN_BOCHS and covers(model, m)) \
        or tuple(m for m in MNEMONICS if m not in NOT_EXITING_IN_BOCHS)
    rng = random.Random(seed)
    ch = RandomChooser(rng)
    made = 0
    while made < n:
        raw, cs = gen_encoding(ch, mnemonics=names, register_forms=0.2)
        try:
            instr = decode(raw, cs)
        except DecodeError:
            continue
        if instr.length != len(raw):
            continue
        # CPL 3 only for what exits at CPL 3: a privileged instruction faults first (SDM Vol. 3C
        # §26.1.1), which is an exception exit, not one a trace of VMX-family exits holds.
        cpl = 3 if not instr.spec.privileged and rng.random() < CPL3 else 0
        regs = tuple(_reg_value(ch) if i < (16 if cs == 64 else 8) else 0 for i in range(16))
        if cs != 64:
            regs = tuple(r & 0xFFFFFFFF for r in regs)
        made += 1
        yield _Planned(raw, cs, cpl, regs)


def _answer(model: Model, exit: ExitInfo, state: CpuState, instr: Any, rng: random.Random) -> Recorded | None:
    """What a hypervisor implementing `model` did with this exit. Where the SDM leaves the outcome
    to the implementation, a coin decides between going on and the fault (either is correct)."""
    result = run_model(model, exit, state, access_of(instr))
    out = result.outcome
    if out.kind == OK or (out.kind == IMPL and rng.random() < 0.5):
        la = None if result.linear_address is None else result.linear_address & MASK64
        return Recorded(OK, linear_address=la)
    return Recorded(FAULT, out.vector, out.error_code)


def record_bochs(model: Model, model_name: str, n: int, seed: int = 0, batch: int = BATCH,
                 progress: Callable[[int], None] | None = None,
                 stats: RecordStats | None = None) -> Iterator[dict[str, Any]]:
    """The trace records (state records, then exit records referring to them) of n random cases
    run under Bochs, with `model`'s answers: `batch` cases are drawn, booted and yielded at a time,
    so memory stays flat and the first records come after the first boot, whatever n is."""
    stats = stats if stats is not None else RecordStats()
    planned = _cases(model, n, seed)
    rng = random.Random(seed ^ 0x5EC0DE)
    state_ids: dict[tuple[int, int, int], str] = {}
    done = 0
    for start in itertools.count(0, batch):
        chunk = list(itertools.islice(planned, batch))  # one boot's cases, drawn now
        if not chunk:
            break
        cases = [Case(p.raw, p.code_size, {REG64[i]: p.regs[i] for i in range(16 if p.code_size == 64 else 8)},
                      cpl=p.cpl) for p in chunk]
        run = bochs.boot(cases)  # (looked up at each call: tests stand a fake in)
        stats.boots += 1
        stats.cases += len(chunk)
        stats.seconds += run.seconds
        for _, unmatched in run.extra:
            stats.other_exits.append(f"reason {unmatched.basic_reason} at rip {unmatched.guest_rip:#x}")
        for j, (p, r) in enumerate(zip(chunk, run.records, strict=True)):
            if r is None or r.basic_reason not in REASON_INSTRUCTIONS:
                stats.no_exit += 1
                if r is not None:
                    stats.other_exits.append(f"case {start + j} ({p.raw.hex()}, {p.code_size}-bit, CPL {p.cpl}): "
                                             f"exit reason {r.basic_reason}, interruption info "
                                             f"{r.interruption_info:#x}")
                continue
            key = (p.code_size, p.cpl, run.cs_base[j])
            sid = state_ids.get(key)
            base = bochs_state(p.code_size, p.cpl, run.cs_base[j], (0,) * 16, 0)
            if sid is None:  # segments, mode and CPL: one state record per group shape
                sid = state_ids[key] = f"bochs-{p.code_size}-cpl{p.cpl}-{run.cs_base[j]:x}"
                sj = base.to_json()
                del sj["registers"], sj["rip"]
                yield {"type": "state", "id": sid, "state": sj,
                       "source": {"processor": PROCESSOR, "recorder": "vmxaddr trace record --bochs"}}
            nregs = 16 if p.code_size == 64 else 8
            state = bochs_state(p.code_size, p.cpl, run.cs_base[j], p.regs, r.guest_rip)
            rec: dict[str, Any] = {
                "type": "exit", "exit_reason": r.basic_reason, "rip": hex(r.guest_rip), "bytes": p.raw.hex(),
                "code_size": p.code_size, "instruction_info": f"{r.instruction_info:#010x}",
                "exit_qualification": hex(r.exit_qualification), "length": r.length,
                "state_ref": sid, "state": {"registers": {REG64[i]: hex(p.regs[i]) for i in range(nregs)}},
            }
            instr = decode(p.raw, p.code_size)
            names = REASON_INSTRUCTIONS[r.basic_reason]
            name = names[0] if len(names) == 1 else next(
                (m for m in names if SPECS[m].identity == identity_of(r.instruction_info)), None)
            if name is not None:
                exit = ExitInfo(name, r.instruction_info, r.exit_qualification, r.length)
                try:
                    answer = _answer(model, exit, state, instr, rng)
                except Exception as e:  # noqa: BLE001 - a model that cannot answer leaves the result out
                    stats.model_errors += 1
                    stats.model_error = model_failure(e)
                    answer = None
                if answer is not None:
                    rec["result"] = answer.to_json()
            rec["source"] = {"processor": PROCESSOR, "case": start + j, "seed": seed, "hypervisor": model_name}
            stats.exits += 1
            yield rec
        done += len(chunk)
        if progress is not None:
            progress(done)
