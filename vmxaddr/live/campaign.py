"""Live KVM against a model: run cases in one restored Bochs run, read KVM's answers from the
kprobe events and from what L1 observed, and compare with a model (by default the compiled
`get_vmx_mem_address` of the same Debian version, `kvm-linux-6.1`) given the exit information
KVM itself was handed (the exit qualification and instruction-information field at the probe).

An answer is one of:
  ok ADDRESS   get_vmx_mem_address returned 0 and KVM then read/wrote guest memory at ADDRESS
  #VEC(EC)     it returned 1 with that exception queued; L1 then observed the exception
  none         KVM never decoded the operand: it answered before (CPL > 0: #GP; VMfail for a
               missing current VMCS; an exception raised by the processor before any exit).
               Such a case is outside the function and is counted, not compared.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vmxaddr.case import access_of
from vmxaddr.decode import decode
from vmxaddr.exitinfo import ExitInfo
from vmxaddr.live.batch import K_EXC, K_SHUTDOWN, KIND_NAMES, LiveCase, Observed, Output, Probe, decode_output, encode_cases
from vmxaddr.live.bochsrun import run_job
from vmxaddr.live.images import RELEASES
from vmxaddr.models.base import FAULT, OK, Model
from vmxaddr.trace.format import Recorded

VECTORS = {0: "DE", 6: "UD", 12: "SS", 13: "GP", 14: "PF"}
MASK64 = (1 << 64) - 1


def hypervisor_name(release: str, shadow: bool = False) -> str:
    """The name a live run's records give the hypervisor, e.g. "linux-image-... (live KVM)"."""
    rel = RELEASES[release]
    return f"{rel.package} {rel.version} (live KVM{', enable_shadow_vmcs=1' if shadow else ''})"


def kvm_answer(p: Probe | None) -> Recorded | None:
    """KVM's answer from its probes, None when it did not decode the operand."""
    if p is None or p.qual is None or p.ret is None:
        return None
    if p.ret == 0:
        return Recorded(OK, linear_address=p.access)
    if p.queued:
        vec, ec = p.queued[-1]
        return Recorded(FAULT, VECTORS.get(vec, str(vec)), ec)
    return Recorded(FAULT)


@dataclass
class LiveResult:
    """One case run on the live KVM: the case, what L1 saw, what KVM's probes showed, and KVM's
    answer."""
    case: LiveCase
    observed: Observed
    probe: Probe | None
    answer: Recorded | None

    def exit_info(self) -> ExitInfo | None:
        """The exit information KVM read (from the probes), or None when KVM did not decode the
        operand."""
        if self.probe is None or self.probe.qual is None or self.probe.info is None:
            return None
        return ExitInfo(self.case.mnemonic, self.probe.info, self.probe.qual, len(self.case.raw))


@dataclass
class RunStats:
    """Counts and CPU times of live runs: cases, those KVM decoded, what L1 observed, restore costs."""
    cases: int = 0
    decoded: int = 0  # KVM ran get_vmx_mem_address
    observed: Counter[str] = field(default_factory=Counter)
    restore_cpu_s: float = 0.0
    job_cpu_s: float = 0.0
    bochs_cpu_s: float = 0.0
    wall_s: float = 0.0
    runs: int = 0
    header: dict[str, Any] = field(default_factory=dict)
    log: str = ""


def run_live(release: str, cases: list[LiveCase], probes: bool = True, shadow: bool = False,
             stats: RunStats | None = None, progress: Callable[[str], None] = lambda s: None) -> list[LiveResult]:
    """Run `cases` under the live KVM of `release` (one restored Bochs run)."""
    stats = stats if stats is not None else RunStats()
    t0 = time.monotonic()
    args = " ".join(a for a, on in (("noprobes", not probes), ("shadow", shadow)) if on)
    # Run the cases grouped by paging mode (64-bit mode; protected mode with PAE): KVM_SET_SREGS
    # changing CR3/CR4/EFER resets KVM's MMU, which then rebuilds its EPT tables page by page
    order = sorted(range(len(cases)), key=lambda i: cases[i].code_size == 64)
    cases_in_order = [cases[i] for i in order]
    job = run_job(release, encode_cases(cases_in_order), args=args, progress=progress)
    if not job.output:
        raise RuntimeError(f"the client failed (status {job.status}): {job.log.strip()[-500:]}")
    out: Output = decode_output(job.output)
    if out.header["n"] != len(cases):
        raise RuntimeError(f"the client answered {out.header['n']} of {len(cases)} cases: {job.log.strip()[-300:]}")
    probes_list = out.probes
    if probes_list is not None and len(probes_list) != len(cases):
        raise RuntimeError(f"{len(probes_list)} KVM_SET_REGS probe hits for {len(cases)} cases "
                           "(ring buffer overrun?)")
    res: list[LiveResult | None] = [None] * len(cases)
    for j, i in enumerate(order):
        p = probes_list[j] if probes_list is not None else None
        a = kvm_answer(p)
        res[i] = LiveResult(cases[i], out.observed[j], p, a)
        stats.decoded += a is not None
        stats.observed[KIND_NAMES.get(out.observed[j].kind, "?")] += 1
    stats.cases += len(cases)
    stats.runs += 1
    stats.restore_cpu_s += job.restore_cpu_seconds
    stats.job_cpu_s += job.job_cpu_seconds
    stats.bochs_cpu_s += job.bochs.cpu_seconds
    stats.wall_s += time.monotonic() - t0
    stats.header = out.header
    stats.log = job.log
    return [r for r in res if r is not None]


def model_answer(model: Model, r: LiveResult) -> Recorded | None:
    """What `model` answers on the exit information KVM read, in the form of a recorded answer; None
    without it."""
    exit = r.exit_info()
    if exit is None:
        return None
    instr = decode(r.case.raw, r.case.code_size)
    res = model(exit, r.case.state(), access_of(instr))
    o = res.outcome
    if o.kind == OK:
        la = None if res.linear_address is None else res.linear_address & MASK64
        return Recorded(OK, linear_address=la)
    return Recorded(o.kind if o.kind == FAULT else FAULT, o.vector, o.error_code)


def same(live: Recorded, model: Recorded) -> bool:
    """Does the model's answer match KVM's? An address or error code KVM did not show matches any."""
    if live.kind != model.kind:
        return False
    if live.kind == OK:
        return live.linear_address is None or live.linear_address == model.linear_address
    return live.vector == model.vector and (live.error_code is None or live.error_code == model.error_code)


def observed_consistent(r: LiveResult) -> bool:
    """What L1 saw agrees with what KVM's probes say it did: a queued fault was delivered, or its
    delivery failed (a triple fault: in legacy mode the fault is pushed on the case's own SS:ESP)."""
    if r.answer is None or r.answer.kind == OK:
        return True
    vec = {v: k for k, v in VECTORS.items()}.get(r.answer.vector or "")
    return (r.observed.kind == K_EXC and r.observed.vector == vec) or delivery_failed(r)


def delivery_failed(r: LiveResult) -> bool:
    """True when KVM queued a fault that L1 could not take (a shutdown outside 64-bit mode: the
    fault was pushed on the case's own stack)."""
    return r.answer is not None and r.answer.kind == FAULT and r.observed.kind == K_SHUTDOWN \
        and r.case.code_size != 64


@dataclass
class Comparison:
    """The counts of comparing live answers with a model: compared, agreeing, not decoded,
    inconsistent, the disagreements."""
    compared: int = 0
    agree: int = 0
    not_decoded: int = 0
    observed_mismatch: int = 0
    delivery_failed: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)


def compare(results: list[LiveResult], model: Model, into: Comparison | None = None) -> Comparison:
    """Compare each live result with `model`'s answer on the same exit information, adding to
    `into`."""
    cmp = into if into is not None else Comparison()
    for r in results:
        if r.answer is None:
            cmp.not_decoded += 1
            continue
        cmp.observed_mismatch += not observed_consistent(r)
        cmp.delivery_failed += delivery_failed(r)
        want = model_answer(model, r)
        cmp.compared += 1
        if want is not None and same(r.answer, want):
            cmp.agree += 1
        elif len(cmp.disagreements) < 100:
            cmp.disagreements.append(describe(r, want))
    return cmp


def describe(r: LiveResult, want: Recorded | None) -> dict[str, Any]:
    """One disagreement as JSON: the case, the exit information KVM read, both answers, what L1
    observed, the state."""
    c = r.case
    return {"bytes": c.raw.hex(), "code_size": c.code_size, "cpl": c.cpl, "instruction": c.mnemonic,
            "exit_qualification": hex(r.probe.qual or 0) if r.probe else None,
            "instruction_info": f"{r.probe.info or 0:#010x}" if r.probe else None,
            "live": r.answer.short() if r.answer else None, "model": want.short() if want else None,
            "observed": KIND_NAMES.get(r.observed.kind, "?") + (f" #{r.observed.vector}" if r.observed.kind == K_EXC else ""),
            "state": c.state().to_json()}
