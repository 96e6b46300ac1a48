"""`trace synth`: a trace as a model would have handled random cases."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from vmxaddr.case import access_of, run_model
from vmxaddr.decode import DecodeError, decode
from vmxaddr.exitinfo import IGNORED_SEGMENT_POLICIES, SI_DI_POLICIES, Policy, encode
from vmxaddr.isa import REG64
from vmxaddr.models.base import FAULT, IMPL, OK, Model, Result
from vmxaddr.state import CpuState
from vmxaddr.trace.format import MASK64, Recorded
from vmxaddr.trace.records import state_from_json


def _h(v: int) -> str:
    return hex(v)


def _recorded_from(result: Result, rng: random.Random) -> Recorded:
    out = result.outcome
    if out.kind == OK or (out.kind == IMPL and rng.random() < 0.5):
        return Recorded(OK, linear_address=None if result.linear_address is None else result.linear_address & MASK64)
    return Recorded(FAULT, out.vector, out.error_code)


def synth(model: Model, n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Records of a trace as `model` would have handled n random cases (vmxaddr.gen, seeded):
    state records shared by several exits, some exits overriding registers inline, the exit
    information from the SDM encoder under a random policy, and the model's answer."""
    from vmxaddr.gen import MNEMONICS, RandomChooser, gen_encoding, gen_policy, gen_state
    from vmxaddr.models import covers

    covered = tuple(m for m in MNEMONICS if covers(model, m)) or MNEMONICS  # only what the model answers for
    rng = random.Random(seed)
    ch = RandomChooser(rng)
    pools: dict[int, list[tuple[str, CpuState]]] = {16: [], 32: [], 64: []}
    next_id = 0
    made = 0
    while made < n:
        raw, cs = gen_encoding(ch, mnemonics=covered)
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
        rec.update({"exit_reason": exit.exit_reason, "instruction": instr.mnemonic, "rip": _h(rip),
                    "bytes": raw.hex(), "code_size": cs, "instruction_info": _h(exit.instruction_info),
                    "exit_qualification": _h(exit.exit_qualification), "length": exit.length})
        try:
            result = run_model(model, exit, st, access_of(instr))
        except Exception:  # noqa: BLE001 - a model that cannot answer leaves the result out
            result = None
        if result is not None:
            rec["result"] = _recorded_from(result, rng).to_json()
        made += 1
        yield rec


def _interesting(rng: random.Random) -> int:
    return rng.choice((0, 0x1000, 0xFFFF, 0x10000, 0xFFFFFFFF, 1 << 32, (1 << 47) - 8, MASK64 - 0x27,
                       rng.getrandbits(32), rng.getrandbits(64)))

