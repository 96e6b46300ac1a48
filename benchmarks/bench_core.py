"""Throughput of the core pipeline (decode -> encode -> SDM model) against raw capstone
detail decoding of the same bytes, in one run on one core.

    python benchmarks/bench_core.py [-n 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import capstone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's vmxaddr, not an installed one

from vmxaddr.case import access_of  # noqa: E402
from vmxaddr.decode import decode  # noqa: E402
from vmxaddr.exitinfo import encode  # noqa: E402
from vmxaddr.gen import MNEMONICS, RandomChooser, gen_encoding, gen_state  # noqa: E402
from vmxaddr.models import sdm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    ch = RandomChooser(random.Random(args.seed))
    cases = []
    for _ in range(args.n):
        raw, cs = gen_encoding(ch, mnemonics=MNEMONICS, register_forms=0.1)
        cases.append((raw, cs, gen_state(ch, cs)))
    print(f"{len(cases)} generated encodings ({len({c[0] for c in cases})} distinct byte strings)")

    mds = {}
    for cs, mode in ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64)):
        md = capstone.Cs(capstone.CS_ARCH_X86, mode)
        md.detail = True
        mds[cs] = md
    t0 = time.perf_counter()
    n_cs = 0
    for raw, cs, _ in cases:
        for ins in mds[cs].disasm(raw, 0, 1):
            _ = ins.operands  # detail decoding: what a capstone-based decoder would read
            n_cs += 1
    t_cs = time.perf_counter() - t0

    t0 = time.perf_counter()
    for raw, cs, st in cases:
        ins = decode(raw, cs)
        sdm(encode(ins, st.rip), st, access_of(ins))
    t_us = time.perf_counter() - t0

    r_cs, r_us = len(cases) / t_cs, len(cases) / t_us
    print(f"raw capstone detail decode: {r_cs:12,.0f} cases/s  ({n_cs} decoded)")
    print(f"decode + encode + sdm:      {r_us:12,.0f} cases/s")
    print(f"ratio pipeline/capstone:    {r_us / r_cs:12.2f}")


if __name__ == "__main__":
    main()
