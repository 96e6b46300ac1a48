"""Issue 14, item 5 for Xen: the port xen-c447b730 against Xen 4.17's real decode_vmx_inst().

    python scripts/realcode_xen_campaign.py [--cases N] [--raw N] [--seed S]

Fetches the source (vmxaddr sources fetch xen-4.17) if it is not cached, then:
  fuzz  `vmxaddr.fuzz.fuzz(xen-4.17, xen-c447b730)`: N generated cases (instructions over every
        VMX form and code size, states leaning on edges; the SDM encoder writes the exit
        information), compared as the differential engine compares (outcome; linear address
        when neither faults). Default 1,000,000.
  raw   N cases whose exit information is drawn directly, not encoded: any 32-bit
        instruction-information value (reserved address sizes 3...7, segment values 6 and 7,
        bit 10 for every instruction) and 64-bit exit qualifications leaning on edges, over the
        generator's states. Compared strictly: outcome, vector, error code, linear address,
        segment and displacement.
Progress on stderr; one JSON object on stdout (counts, seconds, and the first disagreements).
The same comparisons run, shorter, in tests/test_realcode_xen.py (the 1,000,000-case one
behind --run-slow).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmxaddr.exitinfo import ExitInfo  # noqa: E402
from vmxaddr.fuzz import fuzz  # noqa: E402
from vmxaddr.fuzz.choosers import RecordingChooser  # noqa: E402
from vmxaddr.gen import gen_state  # noqa: E402
from vmxaddr.models import get  # noqa: E402
from vmxaddr.models.base import Access, Result  # noqa: E402
from vmxaddr.models.xen_port import MNEMONICS, xen_c447b730  # noqa: E402
from vmxaddr.realcode import sources  # noqa: E402
from vmxaddr.realcode.xen_compiled import release_model  # noqa: E402

MASK64 = (1 << 64) - 1
QUALS = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0xFFD8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFD8, 0xFFFFFFFF,
         0x1_0000_0000, 0x7FFF_FFFF_FFFF, 0x8000_0000_0000, 0xFFFF_FFFF_FFFF_FFD8, MASK64)
ACCESS = {"vmptrld": Access(8, False), "vmclear": Access(8, False), "vmxon": Access(8, False),
          "vmptrst": Access(8, True), "vmread": Access(8, True), "vmwrite": Access(8, False),
          "invept": Access(16, False), "invvpid": Access(16, False)}


def fields(r: Result) -> tuple[Any, ...]:
    o = r.outcome
    ok = o.kind != "fault"
    return (o.kind, o.vector, o.error_code, r.linear_address if ok else None, r.segment if ok else None,
            r.displacement if ok else None)


def raw_exit(rng: random.Random) -> ExitInfo:
    ins = rng.choice(MNEMONICS)
    info = rng.getrandbits(32)
    if rng.random() < 0.6:  # mostly memory operands, valid-looking address sizes
        info &= ~(1 << 10)
    if rng.random() < 0.7:
        info = (info & ~(7 << 7)) | (rng.choice((0, 1, 2)) << 7)
    qual = rng.choice(QUALS) if rng.random() < 0.6 else rng.getrandbits(rng.choice((16, 32, 64)))
    if rng.random() < 0.2:
        qual = (qual + rng.randint(-8, 8)) & MASK64
    return ExitInfo(ins, info, qual, 3)


def raw_campaign(n: int, seed: int, real: Any, say: Any) -> dict[str, Any]:
    rng = random.Random(seed)
    ch = RecordingChooser(random.Random(seed + 1))
    bad: list[dict[str, Any]] = []
    count = 0
    t0 = time.monotonic()
    state = None
    for i in range(n):
        if i % 4 == 0:  # a state serves four exits (the bridge's cache sees both cases)
            ch.log = []
            state = gen_state(ch, rng.choice((16, 32, 64)))
        assert state is not None
        exit = raw_exit(rng)
        access = ACCESS[exit.instruction]
        rp, rr = xen_c447b730(exit, state, access), real(exit, state, access)
        if fields(rp) != fields(rr):
            count += 1
            if len(bad) < 20:
                bad.append({"exit": exit.to_json(), "state": state.to_json(), "port": fields(rp), "real": fields(rr)})
        if i and i % 100_000 == 0:
            say(f"raw: {i:,} cases, {count} disagreements ({i / (time.monotonic() - t0):,.0f}/s)")
    return {"cases": n, "disagreements": count, "first": bad, "seconds": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1_000_000)
    ap.add_argument("--raw", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    def say(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    f = sources.fetch("xen-4.17", progress=say)
    real = release_model("xen-4.17")
    real.load()
    port = get("xen-c447b730")
    out: dict[str, Any] = {"source": {"package": f.package, "version": f.version, "downloads": f.downloads}}
    if args.raw:
        out["raw"] = raw_campaign(args.raw, args.seed, real, say)
        say(f"raw: {out['raw']['disagreements']} disagreements in {args.raw:,} cases")
    if args.cases:
        t0 = time.monotonic()
        rep = fuzz(real, port, seed=args.seed, max_examples=args.cases, shrink=False)
        out["fuzz"] = {"cases": rep.cases, "classes": {k: v.count for k, v in rep.classes.items()},
                       "seconds": round(time.monotonic() - t0, 1)}
        say(f"fuzz: {rep.cases:,} cases, {len(rep.classes)} classes")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
