"""Differential throughput on one core, beside raw capstone decoding of the same bytes.

    python benchmarks/bench_diff.py [--cases N] [--seed S] [--models sdm,kvm-f9eb4af6,kvm-current]

Pipeline per case: decode (vmxaddr.decode, memoised per operand shape) -> encode the exit
information (memoised per instruction bytes, vmxaddr.diff.exit_and_access) -> run every model ->
compare each with the first (vmxaddr.diff.agree).
Cases come from the fuzzer's generator (vmxaddr.fuzz.gen_case; generation is not timed).
Capstone: `Cs.disasm` with detail on, reading the operands, for the same byte strings.

Two pipeline figures: "cold" (first N cases, empty memo: every new operand shape is decoded in
full, capstone guard included) and "steady" (the next N cases, fresh ones from the same stream,
memo as a fuzzing run has it). The ratio printed is steady pipeline / capstone (target >= 1).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import capstone  # noqa: E402

from vmxaddr import decode as decode_mod  # noqa: E402
from vmxaddr.diff import agree, clear_exit_memo, exit_and_access  # noqa: E402
from vmxaddr.exitinfo import DEFAULT_POLICY  # noqa: E402
from vmxaddr.fuzz import gen_case  # noqa: E402
from vmxaddr.gen import VMX_MNEMONICS, RandomChooser  # noqa: E402
from vmxaddr.models import get  # noqa: E402


def pipeline(items: list, models: list) -> float:
    decode = decode_mod.decode
    policy = DEFAULT_POLICY
    ref_model, others = models[0], models[1:]
    disagree = 0
    t = time.process_time()
    for raw, cs, state in items:
        ins = decode(raw, cs)
        exit, access = exit_and_access(ins, state.rip, policy)
        ref = ref_model(exit, state, access)
        for m in others:
            if not agree(ref, m(exit, state, access)):
                disagree += 1
    dt = time.process_time() - t
    return dt


def capstone_detail(items: list) -> float:
    mds = {}
    for cs, mode in ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64)):
        md = capstone.Cs(capstone.CS_ARCH_X86, mode)
        md.detail = True
        mds[cs] = md
    t = time.process_time()
    for raw, cs, _ in items:
        for ins in mds[cs].disasm(raw, 0, 1):
            ins.operands  # noqa: B018 - the detail is what we time
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--models", default="sdm,kvm-f9eb4af6,kvm-current")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timings of each")
    args = ap.parse_args()
    models = [get(n) for n in args.models.split(",")]
    ch = RandomChooser(random.Random(args.seed))
    n = args.cases
    cases = [gen_case(ch, VMX_MNEMONICS, DEFAULT_POLICY) for _ in range(2 * n)]
    items = [(c.instruction.raw, c.instruction.code_size, c.state) for c in cases]
    first, second = items[:n], items[n:]
    for d in (decode_mod._SHAPES, decode_mod._WHOLE):
        for v in d.values():
            v.clear()
    clear_exit_memo()
    cold = pipeline(first, models)
    shapes = sum(len(v) for v in decode_mod._SHAPES.values())
    pipeline(second, models)  # the memo as a fuzzing run has it after one pass
    # Interleave the two timings so that a noisy neighbour slows both alike; best of each.
    pipes, caps = [], []
    for _ in range(max(args.repeat, 1)):
        pipes.append(pipeline(second, models))
        caps.append(capstone_detail(second))
    steady, cap = min(pipes), min(caps)
    k = len(models)
    print(f"{n} cases per timing, {k} models ({args.models}), one core, Python {sys.version.split()[0]}")
    print(f"  differential pipeline, cold (empty memo): {n / cold:10,.0f} cases/s")
    print(f"  differential pipeline, steady:            {n / steady:10,.0f} cases/s   ({shapes} operand shapes memoised)")
    print(f"  capstone detail decoding, same bytes:     {n / cap:10,.0f} instructions/s")
    print(f"  ratio steady pipeline / capstone: {cap / steady:.2f}   (cold: {cap / cold:.2f}; target >= 1)")


if __name__ == "__main__":
    main()
