"""`trace synth`: a trace as a model would have handled random cases."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from vmxaddr.case import access_of, run_model
from vmxaddr.decode import DecodeError, Instruction, decode
from vmxaddr.errors import ModelFailure
from vmxaddr.exitinfo import IGNORED_SEGMENT_POLICIES, SI_DI_POLICIES, ExitInfo, Policy, encode
from vmxaddr.isa import REG64
from vmxaddr.models import covers
from vmxaddr.models.base import FAULT, IMPL, OK, Model, Result
from vmxaddr.state import CpuState
from vmxaddr.trace.format import MASK64, Recorded
from vmxaddr.trace.parse import state_from_json


def _h(v: int) -> str:
    return hex(v)


def _recorded_from(result: Result, rng: random.Random) -> Recorded:
    out = result.outcome
    if out.kind == OK or (out.kind == IMPL and rng.random() < 0.5):
        return Recorded(OK, linear_address=None if result.linear_address is None else result.linear_address & MASK64)
    return Recorded(FAULT, out.vector, out.error_code)


def _wrong(rec: Recorded) -> Recorded:
    """An answer no model gives for the case: another page for an address, the other kind of
    outcome otherwise."""
    if rec.kind == OK:
        if rec.linear_address is not None:
            return Recorded(OK, linear_address=rec.linear_address ^ 0x1000)
        return Recorded(FAULT, "SS", 0)
    return Recorded(OK, linear_address=0xBAD000)


def covered(model: Model) -> tuple[str, ...]:
    """The instructions `model` says it handles (its `mnemonics` attribute; every one if it has none)."""
    from vmxaddr.gen import MNEMONICS  # (in the functions: check-trace imports this package, not the generator)

    return tuple(m for m in MNEMONICS if covers(model, m)) or MNEMONICS


SHAPES = ("random", "realistic")


def model_failure(e: BaseException) -> str:
    """What a model that gave no answer did, for a count's first line ("it crashed: SIGSEGV")."""
    return f"it {e.what}" if isinstance(e, ModelFailure) else f"it raised {type(e).__name__}: {e}"


def synth(model: Model, n: int, seed: int = 0, shape: str = "random", wrong: float = 0.0,
          failures: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Records of a trace as `model` would have handled n cases (vmxaddr.gen, seeded), of the
    instructions the model handles (`covered`).

    shape "random": every case new — state records shared by a few exits, some exits overriding
    registers inline, the exit information from the SDM encoder under a random policy.
    shape "realistic": what a guest hypervisor's exits look like — a few states (two per code
    size, defined once), 48 instructions at fixed addresses that recur, four vCPUs, one exit in
    ten with one of the eight legacy registers changed inline (to one of four values).
    `wrong`: the fraction of exits whose recorded answer is replaced by one no model gives.
    An exit record the model gave no answer for has no result; `failures` gets what it did."""
    if shape == "realistic":
        yield from _realistic(model, n, seed, wrong, failures)
        return
    from vmxaddr.gen import RandomChooser, gen_encoding, gen_policy, gen_state

    mnemonics = covered(model)
    rng = random.Random(seed)
    ch = RandomChooser(rng)
    pools: dict[int, list[tuple[str, CpuState]]] = {16: [], 32: [], 64: []}
    next_id = 0
    made = 0
    while made < n:
        raw, cs = gen_encoding(ch, mnemonics=mnemonics)
        try:
            instr = decode(raw, cs)
        except DecodeError:
            continue
        rec: dict[str, Any] = {"type": "exit"}
        pool = pools[cs]
        if pool and rng.random() < 0.7:
            key, st = pool[int(rng.random() * len(pool))]
            rec["state_ref"] = key
            if rng.random() < 0.5:
                regs = {REG64[rng.randrange(16)]: _h(_interesting(rng)) for _ in range(rng.randint(1, 3))}
                rec["state"] = {"registers": regs}
                st = state_from_json(rec["state"], st)
        else:
            st = gen_state(ch, cs)
            if st.code_size != cs:
                continue  # virtual-8086 mode runs 16-bit code only; these bytes were made for cs
            if rng.random() < 0.2:
                rec["state"] = st.to_json()
            else:
                key = f"s{next_id}"
                next_id += 1
                yield {"type": "state", "id": key, "state": st.to_json()}
                rec["state_ref"] = key
                pool.append((key, st))
                if len(pool) > 8:
                    pool.pop(0)
        rip = rng.choice((st.rip, 0x1000, rng.getrandbits(32), rng.getrandbits(47) if cs == 64 else 0xFFF0))
        st = replace(st, rip=rip)
        pol = gen_policy(ch)
        pol = Policy(pol.exit_qual, pol.undefined_bits, rng.choice(IGNORED_SEGMENT_POLICIES),
                     rng.choice(SI_DI_POLICIES), pol.seed)
        exit = encode(instr, rip, pol)
        rec.update(_exit_fields(instr, raw, cs, rip, exit))
        _answer(rec, model, exit, st, instr, rng, wrong, failures)
        made += 1
        yield rec


def _exit_fields(instr: Instruction, raw: bytes, cs: int, rip: int, exit: ExitInfo) -> dict[str, Any]:
    return {"exit_reason": exit.exit_reason, "instruction": instr.mnemonic, "rip": _h(rip), "bytes": raw.hex(),
            "code_size": cs, "instruction_info": _h(exit.instruction_info),
            "exit_qualification": _h(exit.exit_qualification), "length": exit.length}


def _answer(rec: dict[str, Any], model: Model, exit: ExitInfo, st: CpuState, instr: Instruction,
            rng: random.Random, wrong: float, failures: list[str] | None = None) -> None:
    try:
        result = run_model(model, exit, st, access_of(instr))
    except Exception as e:  # noqa: BLE001 - a model that cannot answer leaves the result out (counted)
        if failures is not None:
            failures.append(model_failure(e))
        return
    recorded = _recorded_from(result, rng)
    if wrong and rng.random() < wrong:
        recorded = _wrong(recorded)
    rec["result"] = recorded.to_json()


def _realistic(model: Model, n: int, seed: int, wrong: float, failures: list[str] | None
               ) -> Iterator[dict[str, Any]]:
    from vmxaddr.gen import RandomChooser, gen_encoding, gen_state

    rng = random.Random(seed)
    ch = RandomChooser(rng)
    states: dict[int, list[tuple[str, CpuState]]] = {}
    for cs in (16, 32, 64):
        states[cs] = []
        while len(states[cs]) < 2:
            st = gen_state(ch, cs, weird_modes=0)
            if st.code_size == cs:
                key = f"{cs}-{len(states[cs])}"
                states[cs].append((key, st))
                yield {"type": "state", "id": key, "state": st.to_json()}
    mnemonics = covered(model)
    code: list[tuple[Instruction, bytes, int, int, ExitInfo]] = []
    while len(code) < 48:
        raw, cs = gen_encoding(ch, mnemonics=mnemonics)
        try:
            instr = decode(raw, cs)
        except DecodeError:
            continue
        rip = 0x401000 + 0x40 * len(code) if cs != 64 else 0xFFFFFFFF81000000 + 0x40 * len(code)
        code.append((instr, raw, cs, rip, encode(instr, rip)))
    values = [_interesting(rng) for _ in range(4)]
    for _ in range(n):
        instr, raw, cs, rip, exit = code[min(int(rng.expovariate(1 / 8)), len(code) - 1)]  # a few are hot
        key, st = states[cs][rng.random() < 0.3]
        rec: dict[str, Any] = {"type": "exit", "vcpu": rng.randrange(4), "state_ref": key}
        if rng.random() < 0.1:
            rec["state"] = {"registers": {REG64[rng.randrange(8)]: _h(rng.choice(values))}}
            st = state_from_json(rec["state"], st)
        st = replace(st, rip=rip)
        rec.update(_exit_fields(instr, raw, cs, rip, exit))
        _answer(rec, model, exit, st, instr, rng, wrong, failures)
        yield rec


def _interesting(rng: random.Random) -> int:
    return rng.choice((0, 0x1000, 0xFFFF, 0x10000, 0xFFFFFFFF, 1 << 32, (1 << 47) - 8, MASK64 - 0x27,
                       rng.getrandbits(32), rng.getrandbits(64)))

