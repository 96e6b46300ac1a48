"""`vmxaddr trace record --kvm RELEASE`: a trace whose hypervisor answers come from the running KVM.

Each case runs once in L1 under Debian's KVM (nested, in Bochs 2.7). An exit record is written for
every case whose operand KVM decoded (get_vmx_mem_address ran): the instruction bytes, the code
size, the state the case ran with (inline: every case has its own segments), the exit
qualification and instruction-information field exactly as KVM received them (kprobe), and KVM's
answer (the address it then accessed, or the exception it queued and L1 received). `length` is
left out: it is not captured. Records carry source.processor = "bochs-2.7" (check-trace explains
Bochs' documented departures) and source.hypervisor = the Debian package and version.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from vmxaddr.errors import LiveError, ToolMissing, fail
from vmxaddr.isa import SPECS
from vmxaddr.live.batch import K_EXC, KIND_NAMES, SLOT, SYS, LiveCase, _legal_limit, from_record, generate
from vmxaddr.live.bochsrun import require_bochs
from vmxaddr.live.campaign import LiveResult, RunStats, hypervisor_name, run_live
from vmxaddr.live.images import RELEASES, require
from vmxaddr.progress import Progress
from vmxaddr.state import CpuState, Segment
from vmxaddr.trace.parse import RecordError, StateTable, parse_exit, parse_state_record
from vmxaddr.trace.quirks import BOCHS_27

PROCESSOR = BOCHS_27
BATCH = 100_000  # cases per restored run (the stub's buffer holds ~250,000)


def legalize(c: LiveCase) -> LiveCase:
    """The case with what a VM entry insists on (SDM Vol. 3C §27.3.1.2) and the harness needs:
    CS/SS DPL = CPL, SS type 3/7, accessed types, G agreeing with the limit, the harness' CS
    base for 16-bit code. Replayed states are run as adjusted, and recorded as run."""
    segs = {}
    for name, s in c.segs.items():
        if name == "cs":
            continue
        limit, g = _legal_limit(s.limit)
        typ = s.type | 1
        if typ in (9, 13):
            typ |= 2
        if name == "ss":
            typ = 7 if typ == 7 else 3
        dpl = c.cpl if name == "ss" else s.dpl
        base = s.base if name in ("fs", "gs") else s.base & 0xFFFFFFFF
        segs[name] = replace(s, limit=limit, g=g, type=typ, s=1, p=1, dpl=dpl, base=base,
                             selector=(0x38 | 3) if (name == "ss" and c.cpl) else 0x18)
    cs = c.segs["cs"]
    typ = 9 if cs.type in (8, 9) else 0xB
    if c.code_size == 64:
        segs["cs"] = Segment(0, 0xFFFFFFFF, typ, 1, c.cpl, 1, 0, 1, 1, False, 0x08 | c.cpl)
    elif c.code_size == 32:
        segs["cs"] = Segment(cs.base & 0xFFFFFFFF, 0xFFFFFFFF, typ, 1, c.cpl, 1, 1, 1, 0, False, 0x10 | c.cpl)
    else:
        base = cs.base & 0xFFFFFFFF
        if not 0 <= (SYS + SLOT - base) <= 0xFFF0:
            base = SYS + SLOT - 0x1000
        segs["cs"] = Segment(base, 0xFFFF, typ, 1, c.cpl, 1, 0, 0, 0, False, 0x10 | c.cpl)
    regs = c.regs if c.code_size == 64 else tuple(r & 0xFFFFFFFF for r in c.regs)
    return replace(c, segs=segs, regs=regs, cpl=c.cpl if c.cpl in (0, 3) else 3)


def read_cases(path: str) -> tuple[list[LiveCase], int]:
    """Cases from a trace (JSON Lines exit records with bytes and a state) or a witness file
    (`fuzz --out`, corpus/witnesses: {"cases": [{"bytes", "mode", "state"}]}); and how many
    entries were skipped (no bytes, not a VMX instruction with a memory operand, or a mode
    where VMX instructions #UD)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cases: list[LiveCase] = []
    skipped = 0
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("cases"), list):
        for w in doc["cases"]:
            try:
                mode = int(w.get("mode", 32))
                st = CpuState.from_json(w.get("state") or {}, base=CpuState.for_code_size(mode))
            except (ValueError, TypeError):
                skipped += 1
                continue
            c = from_record({"bytes": w.get("bytes", ""), "code_size": mode}, st)
            if c is None or st.mode not in ("protected", "64-bit"):
                skipped += 1
                continue
            cases.append(legalize(c))
        return cases, skipped
    table = StateTable()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or obj.get("type") == "summary":
                continue
            if obj.get("type") == "state":
                parse_state_record(obj, table)
                continue
            rec = parse_exit(obj, n, table)
        except (ValueError, RecordError):
            skipped += 1
            continue
        if rec.state is None or rec.raw is None or rec.state.mode not in ("protected", "64-bit"):
            skipped += 1
            continue
        c = from_record({"bytes": rec.raw.hex(), "code_size": rec.code_size}, rec.state)
        if c is None:
            skipped += 1
            continue
        cases.append(legalize(c))
    return cases, skipped


def exit_record(r: LiveResult, index: int, seed: int | None, hypervisor: str) -> dict[str, Any] | None:
    """The trace exit record of one live result (None when KVM did not decode the operand)."""
    if r.answer is None or r.probe is None or r.probe.info is None or r.probe.qual is None:
        return None
    c = r.case
    st = c.state()
    sj = st.to_json()
    rec: dict[str, Any] = {
        "type": "exit", "exit_reason": SPECS[c.mnemonic].exit_reason, "instruction": c.mnemonic,
        "rip": hex(st.rip), "bytes": c.raw.hex(), "code_size": c.code_size,
        "instruction_info": f"{r.probe.info:#010x}", "exit_qualification": hex(r.probe.qual),
        "state": sj, "result": r.answer.to_json(),
    }
    obs = KIND_NAMES.get(r.observed.kind, "?")
    if r.observed.kind == K_EXC:
        obs += f" vector {r.observed.vector} error code {r.observed.error_code:#x}"
    src: dict[str, Any] = {"processor": PROCESSOR, "hypervisor": hypervisor, "recorder": "vmxaddr trace record --kvm",
                           "case": index, "observed_by_l1": obs}
    if seed is not None:
        src["seed"] = seed
    rec["source"] = src
    return rec


def record_kvm(release: str, cases: list[LiveCase], seed: int | None, stats: RunStats, shadow: bool = False,
               batch: int = BATCH, progress: Any = None) -> Iterator[dict[str, Any]]:
    """The exit records of `cases` run on the live KVM of `release`, `batch` cases per Bochs run."""
    hyp = hypervisor_name(release, shadow)
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        for j, r in enumerate(run_live(release, chunk, shadow=shadow, stats=stats)):
            rec = exit_record(r, start + j, seed, hyp)
            if rec is not None:
                yield rec
        if progress is not None:
            progress(start + len(chunk))


def cmd_record_kvm(args: Any) -> int:
    """`trace record --kvm RELEASE` (called from vmxaddr/trace/record_bochs.py)."""
    if args.kvm not in RELEASES:
        fail(f"--kvm: unknown release {args.kvm!r}; one of: {', '.join(RELEASES)}")
    if args.n < 0:
        fail("-n must not be negative")
    try:  # before any download: a missing tool is one line and exit status 2
        require_bochs()
        require("gcc", "apt-get", "dpkg")
    except ToolMissing as e:
        fail(str(e))
    skipped = 0
    if getattr(args, "cases", None):
        try:
            cases, skipped = read_cases(args.cases)
        except OSError as e:
            fail(f"cannot read {args.cases}: {e.strerror}")
        seed = None
    else:
        cases, seed = generate(args.n, args.seed), args.seed
    try:
        out = open(args.out, "w") if args.out and args.out != "-" else sys.stdout  # noqa: SIM115
    except OSError as e:
        fail(f"cannot write {args.out}: {e.strerror}")
    stats = RunStats()
    written = 0
    try:
        with Progress(len(cases), f"record (live KVM {args.kvm})", enabled=not args.quiet, unit="cases") as prog:
            for rec in record_kvm(args.kvm, cases, seed, stats, shadow=getattr(args, "shadow_vmcs", False),
                                  progress=prog.update):
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                written += 1
    except ToolMissing as e:
        fail(str(e))
    except (LiveError, RuntimeError) as e:
        print(f"vmxaddr trace record: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout:
            out.close()
    if not args.quiet:
        print(f"recorded {written} exits of {len(cases)} cases from the live KVM of {args.kvm} "
              f"({stats.runs} restored Bochs run(s), {stats.bochs_cpu_s:.1f} Bochs CPU-s, restore "
              f"{stats.restore_cpu_s:.1f} CPU-s); L1 observed {dict(stats.observed)}; "
              f"{len(cases) - stats.decoded} cases KVM answered before decoding the operand"
              + (f"; {skipped} entries of {args.cases} skipped" if skipped else ""), file=sys.stderr)
    if args.json:
        print(json.dumps({"type": "summary", "command": "trace record", "processor": PROCESSOR,
                          "hypervisor": hypervisor_name(args.kvm, getattr(args, "shadow_vmcs", False)), "seed": seed, "cases": len(cases),
                          "exit_records": written, "not_decoded": len(cases) - stats.decoded,
                          "skipped": skipped, "observed": dict(stats.observed), "runs": stats.runs,
                          "bochs_cpu_seconds": round(stats.bochs_cpu_s, 2),
                          "restore_cpu_seconds": round(stats.restore_cpu_s, 2), "out": args.out or "-"},
                         separators=(",", ":")))
    return 0
