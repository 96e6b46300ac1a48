"""Throughput of the exit-information encoder and its inverse (the fuzz hot path's share):
`encode_info`, `encode`, `fields` and `operand_bits` (cold, memo cleared) over the same
generated instructions, in one run on one core.

    python benchmarks/bench_exitinfo.py [-n 50000] [--seed 1] [--repeat 3]

Prints calls per second for each (the best of --repeat runs, to damp a shared machine's noise).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from vmxaddr import exitinfo
from vmxaddr.decode import DecodeError, decode
from vmxaddr.exitinfo import encode, encode_info, fields, operand_bits
from vmxaddr.gen import MNEMONICS, RandomChooser, gen_encoding


def _best(fn: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ch = RandomChooser(random.Random(args.seed))
    instrs = []
    while len(instrs) < args.n:
        raw, cs = gen_encoding(ch, mnemonics=MNEMONICS, register_forms=0.1)
        try:
            instrs.append(decode(raw, cs))
        except DecodeError:
            continue
    infos = [(encode(i).instruction_info, i.mnemonic) for i in instrs]
    values = [v for v, _ in infos]

    def run_encode_info() -> None:
        for i in instrs:
            encode_info(i)

    def run_encode() -> None:
        for i in instrs:
            encode(i)

    def run_fields() -> None:
        for v, m in infos:
            fields(v, m)

    def run_operand_bits() -> None:
        for v in values:
            exitinfo._OPERAND_BITS.clear()
            operand_bits(v)

    n = len(instrs)
    for name, fn in (("encode_info", run_encode_info), ("encode", run_encode), ("fields", run_fields),
                     ("operand_bits (cold)", run_operand_bits)):
        print(f"{name:<22}{n / _best(fn, args.repeat):14,.0f} calls/s")


if __name__ == "__main__":
    main()
