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
The generated input is frozen out of the cyclic garbage collector's reach (gc.freeze) before
timing: it is held alive only because the benchmark times it in bulk. Both the pipeline and
capstone are timed under the collector thresholds `vmxaddr fuzz` runs with
(vmxaddr.throughput.bulk_work).
Every timing is process CPU time; each repeat times a new slice of fresh cases, interleaved with
capstone on the same slice, so a noisy neighbour slows both alike; the best of each is printed.
"""

from __future__ import annotations

import argparse
import gc
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
from vmxaddr.throughput import bulk_work  # noqa: E402


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
    decode_mod.clear_memos()
    clear_exit_memo()


def _twin(raw: bytes, cs: int) -> bytes:
    """The same operand shape with another displacement (every displacement byte flipped)."""
    op = decode_mod.decode_uncached(raw, cs).operand
    if op is None or not op.disp_size:
        return raw
    a, b = op.disp_offset, op.disp_offset + op.disp_size
    return raw[:a] + bytes(x ^ 0x5A for x in raw[a:b]) + raw[b:]


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
    total = n + w + 2 * k * n
    print(f"generating {total:,} cases …", file=sys.stderr)
    items = []
    for _ in range(total):
        c = gen_case(ch, VMX_MNEMONICS, DEFAULT_POLICY)
        items.append((c.instruction.raw, c.instruction.code_size, c.state))
    # The input (a quarter of a million cases with their CPU states) stays alive for the whole
    # run; a fuzzer holds one case at a time. Left to the cyclic collector, those objects are
    # rescanned at every full collection, which then dominates both timings. Freeze them.
    gc.collect()
    gc.freeze()
    first, warm = items[:n], items[n:n + w]
    rest = items[n + w:]
    pairs = [(rest[2 * i * n:(2 * i + 1) * n], rest[(2 * i + 1) * n:(2 * i + 2) * n]) for i in range(k)]
    _clear_memos()
    print("timing …", file=sys.stderr)
    with bulk_work():  # the collector thresholds vmxaddr fuzz runs with (vmxaddr.throughput), for both
        _time(args, models, first, warm, pairs)


def _time(args: argparse.Namespace, models: list, first: list, warm: list, pairs: list) -> None:
    n, w = args.cases, args.warmup
    cold = pipeline(first, models)
    pipeline(warm, models)
    shapes = sum(len(v) for v in decode_mod._SHAPES.values())
    streams, warms, hots, caps = [], [], [], []
    new = 0
    for fresh, known in pairs:
        before = sum(len(v) for v in decode_mod._SHAPES.values())
        streams.append(pipeline(fresh, models))
        new = sum(len(v) for v in decode_mod._SHAPES.values()) - before
        caps.append(capstone_detail(fresh))
        # every shape of `known` memoised (through its twin), but not its bytes: each decode is a
        # shape hit that patches the displacement in, each exit encoding a shape hit
        pipeline([(_twin(raw, cs), cs, st) for raw, cs, st in known], models)
        for v in decode_mod._WHOLE.values():
            v.clear()
        warms.append(pipeline(known, models))
        hots.append(pipeline(known, models))
        caps.append(capstone_detail(known))
    stream, shape_warm, hot, cap = min(streams), min(warms), min(hots), min(caps)
    from vmxaddr.models import NATIVE

    how = f"compiled: {', '.join(NATIVE)}" if NATIVE else "pure Python (no native build, see setup.py)"
    print(f"{n:,} cases per timing, {len(models)} models ({args.models}; {how}), one core, Python {sys.version.split()[0]}")
    print(f"  capstone detail decoding, same bytes:      {n / cap:8,.0f} instructions/s")
    print(f"  differential pipeline, cold (empty memo):  {n / cold:8,.0f} cases/s   ratio {cap / cold:.2f}")
    print(f"  differential pipeline, stream:             {n / stream:8,.0f} cases/s   ratio {cap / stream:.2f}"
          f"   (after {w:,} cases: {shapes:,} shapes memoised, {new / n:.0%} of a slice new)")
    print(f"  differential pipeline, shapes known:       {n / shape_warm:8,.0f} cases/s   ratio {cap / shape_warm:.2f}"
          f"   (target >= 1: displacement patched in)")
    print(f"  differential pipeline, hot (bytes known):  {n / hot:8,.0f} cases/s   ratio {cap / hot:.2f}")


if __name__ == "__main__":
    main()
