"""Throughput of the core pipeline (decode -> encode -> SDM model) against raw capstone
detail decoding of the same bytes, in one run on one core (CPU time of this process, so that other
load on the machine matters less).

    python benchmarks/bench_core.py [-n 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import capstone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's vmxaddr, not an installed one

from vmxaddr.case import access_of  # noqa: E402
from vmxaddr.decode import decode  # noqa: E402
from vmxaddr.exitinfo import encode  # noqa: E402
from vmxaddr.gen import MNEMONICS, RandomChooser, gen_encoding, gen_state  # noqa: E402
from vmxaddr.models import sdm  # noqa: E402
from vmxaddr.throughput import bulk_work  # noqa: E402

SLICE = 2000


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
    # The two sides alternate over slices of the stream (each case is still seen once by each, in
    # order, so the decoder's memos warm up as they would), so that a change of load on the machine
    # falls on both alike.
    with bulk_work():  # both sides, as vmxaddr's own long loops run (vmxaddr.throughput)
        n_cs, t_cs, t_us = _alternate(cases, mds)
    r_cs, r_us = len(cases) / t_cs, len(cases) / t_us
    print(f"raw capstone detail decode: {r_cs:12,.0f} cases/s  ({n_cs} decoded)")
    print(f"decode + encode + sdm:      {r_us:12,.0f} cases/s")
    print(f"ratio pipeline/capstone:    {r_us / r_cs:12.2f}")


def _alternate(cases: list[tuple[bytes, int, Any]], mds: dict[int, Any]) -> tuple[int, float, float]:
    t_cs = t_us = 0.0
    n_cs = 0
    for at in range(0, len(cases), SLICE):
        part = cases[at:at + SLICE]
        t0 = time.process_time()
        for raw, cs, _ in part:
            for ins in mds[cs].disasm(raw, 0, 1):
                _ = ins.operands  # detail decoding: what a capstone-based decoder would read
                n_cs += 1
        t1 = time.process_time()
        for raw, cs, st in part:
            ins = decode(raw, cs)
            sdm(encode(ins, st.rip), st, access_of(ins))
        t_us += time.process_time() - t1
        t_cs += t1 - t0
    return n_cs, t_cs, t_us


if __name__ == "__main__":
    main()
