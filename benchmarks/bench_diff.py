"""Differential throughput on one core, beside raw capstone decoding of the same bytes.

    python benchmarks/bench_diff.py [--cases N] [--warmup W] [--seed S] [--models sdm,kvm-f9eb4af6,kvm-current]

Pipeline per case: decode (vmxaddr.decode, memoised per operand shape) -> encode the exit
information (memoised per instruction bytes, vmxaddr.diff.exit_and_access) -> run every model ->
compare each with the first (vmxaddr.diff.agree).
Cases come from the fuzzer's generator (vmxaddr.fuzz.gen_case; generation is not timed, and the
memos it fills are emptied before timing). Capstone: `Cs.disasm` with detail on, reading the
operands, for the same byte strings.

Three pipeline figures:
  cold    the first N cases of the stream, memo empty: every operand shape is new;
  stream  N fresh cases after W cases of the same stream went through: the memo as a fuzzing run
          of W cases has it (new shapes still turn up and pay for a full decode); THE figure the
          target is about (ratio stream pipeline / capstone >= 1);
  hot     the same N cases again: every decode and exit encoding is a memo hit (the models and the
          comparison dominate).
Every timing is process CPU time; each repeat times a new slice of fresh cases, interleaved with
capstone on the same slice, so a noisy neighbour slows both alike; the best of each is printed.
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


def _clear_memos() -> None:
    for d in (decode_mod._SHAPES, decode_mod._WHOLE):
        for v in d.values():
            v.clear()
    decode_mod._capstone_shape.cache_clear()
    clear_exit_memo()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20000, help="cases per timing (default 20000)")
    ap.add_argument("--warmup", type=int, default=100000,
                    help="cases through the pipeline before the stream timings (default 100000, about what "
                         "a 60-second fuzzing run evaluates)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--models", default="sdm,kvm-f9eb4af6,kvm-current")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timings of each")
    args = ap.parse_args()
    models = [get(n) for n in args.models.split(",")]
    ch = RandomChooser(random.Random(args.seed))
    n, w, k = args.cases, args.warmup, max(args.repeat, 1)
    print(f"generating {n + w + k * n:,} cases …", file=sys.stderr)
    cases = [gen_case(ch, VMX_MNEMONICS, DEFAULT_POLICY) for _ in range(n + w + k * n)]
    items = [(c.instruction.raw, c.instruction.code_size, c.state) for c in cases]
    del cases
    first, warm, slices = items[:n], items[n:n + w], [items[n + w + i * n:n + w + (i + 1) * n] for i in range(k)]
    _clear_memos()
    cold = pipeline(first, models)
    pipeline(warm, models)
    shapes = sum(len(v) for v in decode_mod._SHAPES.values())
    streams, hots, caps = [], [], []
    for sl in slices:
        before = sum(len(v) for v in decode_mod._SHAPES.values())
        streams.append(pipeline(sl, models))
        new = sum(len(v) for v in decode_mod._SHAPES.values()) - before
        hots.append(pipeline(sl, models))
        caps.append(capstone_detail(sl))
    stream, hot, cap = min(streams), min(hots), min(caps)
    print(f"{n} cases per timing, {len(models)} models ({args.models}), one core, Python {sys.version.split()[0]}")
    print(f"  differential pipeline, cold (empty memo):      {n / cold:10,.0f} cases/s")
    print(f"  differential pipeline, stream (after {w:,} cases, {shapes:,} shapes memoised; "
          f"{new / n:.0%} of the last slice new shapes):")
    print(f"                                                 {n / stream:10,.0f} cases/s")
    print(f"  differential pipeline, hot (the same cases again): {n / hot:6,.0f} cases/s")
    print(f"  capstone detail decoding, same bytes:          {n / cap:10,.0f} instructions/s")
    print(f"  ratio stream pipeline / capstone: {cap / stream:.2f}   (target >= 1; cold {cap / cold:.2f}, hot {cap / hot:.2f})")


if __name__ == "__main__":
    main()
