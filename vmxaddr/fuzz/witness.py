"""A witness case as the user sees it: the state reduced to what the operand reads, the corpus
JSON, the `vmxaddr diff` command that reproduces it, each model's answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vmxaddr.case import Case
from vmxaddr.encoders import get_encoder
from vmxaddr.exitinfo import Policy, reported_segment
from vmxaddr.fuzz.failures import guarded_answer
from vmxaddr.isa import REG32, REG64
from vmxaddr.models.base import Model, Result
from vmxaddr.state import CpuState


def used_registers(case: Case) -> list[int]:
    """The registers the case's memory operand reads (base and index), for the witness's --reg options."""
    op = case.instruction.operand
    if op is None:
        return []
    return [r for r in (op.base, op.index) if r is not None]


def used_segments(case: Case) -> list[str]:
    """The segments that matter to the case: the one used and the one reported."""
    op = case.instruction.operand
    if op is None:
        return []
    segs = [op.segment, reported_segment(case.instruction, case.policy)]
    return sorted(set(segs))


def reduced_state(case: Case, everything: bool = False) -> CpuState:
    """The case's state with only what the operand reads (base, index, its segment) kept."""
    st = case.state
    base = CpuState.for_code_size(case.instruction.code_size)
    regs = list(base.regs + base.egprs)
    for r in (range(32) if everything else used_registers(case)):
        regs[r] = st.reg_value(r)
    segs = {s: st.segment(s) for s in (("es", "ss", "ds", "fs", "gs") if everything else used_segments(case))
            if s != "cs"}
    rip = st.rip if (everything or (case.instruction.operand and case.instruction.operand.rip_relative)) else base.rip
    return replace(base, mode=st.mode, cpl=st.cpl, la57=st.la57, lam_sup=st.lam_sup, lam_u48=st.lam_u48,
                   lam_u57=st.lam_u57, regs=tuple(regs[:16]), egprs=tuple(regs[16:]), rip=rip, **segs)


def state_json(st: CpuState, code_size: int) -> dict[str, Any]:
    """Only what differs from the default state for the code size (corpus format)."""
    base = CpuState.for_code_size(code_size)
    out: dict[str, Any] = {}
    if st.mode != base.mode:
        out["mode"] = st.mode
    if st.cpl:
        out["cpl"] = st.cpl
    cr4 = {k: 1 for k in ("la57", "lam_sup") if getattr(st, k)}
    cr3 = {k: 1 for k in ("lam_u48", "lam_u57") if getattr(st, k)}
    if cr4:
        out["cr4"] = cr4
    if cr3:
        out["cr3"] = cr3
    if st.rip != base.rip:
        out["rip"] = hex(st.rip)
    regs = {REG64[i]: hex(v) for i, v in enumerate(st.regs + st.egprs) if v != (base.regs + base.egprs)[i]}
    if regs:
        out["registers"] = regs
    segs = {}
    for s in ("es", "cs", "ss", "ds", "fs", "gs"):
        seg, dflt = st.segment(s), base.segment(s)
        ch = {k: (hex(v) if isinstance(v, int) and not isinstance(v, bool) and v > 9 else v)
              for k, v in seg.to_json().items() if v != dflt.to_json()[k]}
        if ch:
            segs[s] = ch
    if segs:
        out["segments"] = segs
    return out


def command(case: Case, names: Sequence[str], encoder: str = "sdm") -> str:
    """A `vmxaddr diff` command line that reproduces the case (non-default settings only)."""
    st = case.state
    cs = case.instruction.code_size
    base = CpuState.for_code_size(cs)
    parts = ["vmxaddr diff"] + ([f"--encoder {encoder}"] if encoder != "sdm" else []) + [f"--models {','.join(names)}", f"--mode {cs}"]
    if st.mode != base.mode:
        parts.append(f"--cpu-mode {st.mode}")
    if st.cpl:
        parts.append(f"--cpl {st.cpl}")
    if st.la57:
        parts.append("--la57")
    for k in ("sup", "u48", "u57"):
        if getattr(st, f"lam_{k}"):
            parts.append(f"--lam {k}")
    if st.rip != base.rip:
        parts.append(f"--rip {st.rip:#x}")
    for i, v in enumerate(st.regs + st.egprs):
        if v != (base.regs + base.egprs)[i]:
            name = REG32[i] if cs != 64 and v >> 32 == 0 else REG64[i]
            parts.append(f"--reg {name}={v:#x}")
    for s in ("es", "cs", "ss", "ds", "fs", "gs"):
        seg, dflt = st.segment(s), base.segment(s)
        for k, v in seg.to_json().items():
            if v != dflt.to_json()[k]:
                parts.append(f"--seg {s}.{k}={int(v):#x}" if k in ("base", "limit") else f"--seg {s}.{k}={int(v)}")
    p = case.policy
    if p.exit_qual != "zero-extend":
        parts.append(f"--exit-qual {p.exit_qual}")
    if p.apx and not case.instruction.rex2:
        parts.append("--apx")
    parts.append(case.instruction.raw.hex(" ").join("''"))
    return " ".join(parts)


def outcome_text(r: Result) -> str:
    """A result's outcome in short form: "ok", "#GP(0)", "impl:#SS(0)"."""
    o = r.outcome
    if o.kind == "ok":
        return "ok"
    code = "" if o.error_code is None else f"({o.error_code})"
    return ("impl:" if o.kind == "implementation-specific" else "") + f"#{o.vector}{code}"


def answer(r: Result) -> dict[str, Any]:
    """A model's answer to the witness as JSON: segment, addresses in hex, outcome."""
    def hx(v: int | None) -> str | None:
        return None if v is None else hex(v)

    return {"segment": r.segment, "effective_address": hx(r.effective_address),
            "linear_address": hx(r.linear_address), "outcome": outcome_text(r)}


def _complexity(case: Case) -> tuple[int, ...]:
    st = case.state
    js = state_json(st, case.instruction.code_size)
    nregs = len(js.get("registers", {}))
    nsegs = sum(len(v) for v in js.get("segments", {}).values())
    bits = sum(v.bit_length() for v in st.regs) + sum(st.segment(s).base.bit_length() for s in ("es", "ss", "ds", "fs", "gs"))
    return (nregs + nsegs + len(js) , len(case.instruction.raw), bits)


def witness_json(w: Case, names: Sequence[str], models: Sequence[Model], name: str, encoder: str = "sdm") -> dict[str, Any]:
    """A shrunk witness as the JSON object of corpus/witnesses: bytes, mode, state, each model's answer, the class."""
    cs = w.instruction.code_size
    exit = w.exit
    exits = (exit, exit if encoder == "sdm" else get_encoder(encoder)(w.instruction, w.state.rip, w.policy))
    obj: dict[str, Any] = {
        "id": f"{names[1]}-vs-{names[0]}-" + "-".join(name.replace("/", " ").replace(":", " ").split()[:6]),
        "bytes": w.instruction.raw.hex(" "), "mode": cs, "state": state_json(w.state, cs),
        "models": list(names), "class": name,
        "answers": {n: guarded_answer(m, e, w, answer) for n, m, e in zip(names, models, exits, strict=True)},
    }
    if encoder != "sdm":
        obj["encoder"] = encoder
    p = w.policy
    if p != Policy():
        obj["policy"] = {"exit_qual": p.exit_qual, "undefined_bits": p.undefined_bits,
                         "ignored_segment": p.ignored_segment, "si_di": p.si_di}
    return obj
