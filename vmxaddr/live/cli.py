"""`vmxaddr live build|save|run|status`: Debian's KVM running nested under Bochs 2.7."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from vmxaddr.errors import LiveError, ToolMissing, fail
from vmxaddr.live.batch import generate
from vmxaddr.live.bochsrun import require_bochs, saved_state, state_dir
from vmxaddr.live.campaign import Comparison, RunStats, compare, run_live
from vmxaddr.live.images import RELEASES, build, lookup, require
from vmxaddr.models import UnknownModel, get

EPILOG = """examples:
  vmxaddr live build linux-6.1        # Debian's kernel, KVM modules, busybox, isolinux, xorriso -> ISO
  vmxaddr live save linux-6.1         # boot it once under Bochs (~110 CPU-s), save the state with KVM loaded
  vmxaddr live run linux-6.1 -n 20000 # 20,000 cases through the live KVM vs the compiled kvm-linux-6.1
  vmxaddr trace record --kvm linux-6.1 -n 1000 | vmxaddr check-trace -
Needs bochs, gcc with a static libc, apt-get and dpkg (scripts/system-deps.sh). Everything downloaded goes
to $VMXADDR_CACHE/live (docs/live-kvm.md).
"""


def _progress(quiet: bool) -> Any:
    return (lambda s: None) if quiet else (lambda s: print(f"vmxaddr live: {s}", file=sys.stderr))


def cmd_build(args: argparse.Namespace) -> int:
    """`vmxaddr live build RELEASE`: fetch Debian's packages and build the bootable ISO."""
    t0 = time.monotonic()
    info = build(args.release, _progress(args.json), force=args.force)
    if args.json:
        print(json.dumps(info))
    else:
        k = info["kernel"]
        print(f"{args.release}: {k['package']} {k['version']} (sha256 {k['sha256'][:16]}…), ISO sha256 "
              f"{info['iso_sha256'][:16]}…, built in {info['seconds']['total']} s"
              + (" (cached)" if time.monotonic() - t0 < 1 else ""))
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    """`vmxaddr live save RELEASE`: boot the ISO under Bochs to the client's prompt and save the
    state."""
    sdir = saved_state(args.release, _progress(args.json), force=args.force)
    meta = json.loads((sdir / "vmxaddr-state.json").read_text())
    if args.json:
        print(json.dumps({"state": str(sdir), **meta}))
    else:
        print(f"{args.release}: saved state {sdir} (boot {meta['boot_cpu_seconds']} Bochs CPU-s, "
              f"{meta['boot_wall_seconds']} s wall)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`vmxaddr live run RELEASE`: run random cases on the saved state and compare KVM's answers
    with a model."""
    against = args.against or f"kvm-{args.release}"
    try:
        model = get(against)
    except UnknownModel as e:
        fail(f"--against: {e}")
    if args.n <= 0 or args.batch <= 0:
        fail("-n and --batch must be positive")
    stats = RunStats()
    cmp = Comparison()
    say = _progress(args.json)
    t0 = time.monotonic()
    done = 0
    while done < args.n:
        k = min(args.batch, args.n - done)
        cases = generate(k, args.seed + done)  # each batch its own seed: S, S+B, S+2B, ...
        res = run_live(args.release, cases, probes=not args.no_probes, shadow=args.shadow_vmcs, stats=stats)
        compare(res, model, cmp)
        done += k
        say(f"{done}/{args.n} cases, {cmp.compared} compared, {cmp.compared - cmp.agree} disagreements, "
            f"{stats.job_cpu_s:.1f} CPU-s in cases")
    rate = stats.cases / stats.job_cpu_s if stats.job_cpu_s else 0.0
    summary = {"release": args.release, "against": against, "seed": args.seed, "cases": stats.cases,
               "compared": cmp.compared, "agree": cmp.agree, "disagree": cmp.compared - cmp.agree,
               "not_decoded_by_kvm": cmp.not_decoded, "observed_mismatch": cmp.observed_mismatch,
               "fault_delivery_failed": cmp.delivery_failed,
               "observed": dict(stats.observed), "runs": stats.runs,
               "restore_cpu_seconds": round(stats.restore_cpu_s, 2), "case_cpu_seconds": round(stats.job_cpu_s, 2),
               "bochs_cpu_seconds": round(stats.bochs_cpu_s, 2), "cases_per_cpu_second": round(rate),
               "wall_seconds": round(time.monotonic() - t0, 1), "client": stats.header,
               "disagreements": cmp.disagreements[:20]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"live KVM {args.release} vs {against}: {stats.cases} cases, {cmp.compared} decoded by KVM and "
              f"compared, {cmp.agree} agree, {cmp.compared - cmp.agree} disagree; {cmp.not_decoded} answered by KVM "
              f"before decoding; L1 observed {dict(stats.observed)}; {rate:.0f} cases per Bochs CPU-s "
              f"(restore {stats.restore_cpu_s:.1f} CPU-s)")
        for d in cmp.disagreements[:10]:
            print(f"  {d['code_size']}-bit {d['bytes']} {d['instruction']}: live {d['live']}, model {d['model']}, "
                  f"info {d['instruction_info']} qual {d['exit_qualification']}")
    return 1 if cmp.compared != cmp.agree or cmp.observed_mismatch else 0


def cmd_status(args: argparse.Namespace) -> int:
    """`vmxaddr live status`: what is built and saved for each release."""
    rows = []
    for name, rel in RELEASES.items():
        info = lookup(name)
        meta = state_dir(name) / "vmxaddr-state.json"
        rows.append({"release": name, "package": rel.package, "version": rel.version, "image": info is not None,
                     "saved_state": json.loads(meta.read_text()) if meta.is_file() else None})
    if args.json:
        print(json.dumps({"releases": rows}))
    else:
        for r in rows:
            st = r["saved_state"]
            print(f"{r['release']}: {r['package']} {r['version']}; image {'built' if r['image'] else 'not built'}; "
                  + (f"saved state (boot {st['boot_cpu_seconds']} CPU-s)" if st else "no saved state"))
    return 0


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except ToolMissing as e:
            fail(str(e))
        except (LiveError, RuntimeError) as e:
            print(f"vmxaddr live: error: {str(e).splitlines()[0]}", file=sys.stderr)
            return 1
    return run


ACTIONS = {"build": "download Debian's packages and build the bootable ISO (cached)",
           "save": "boot the ISO once under Bochs and save its state with KVM loaded (cached)",
           "run": "random cases through the live KVM, compared with --against (default the compiled kvm-RELEASE)",
           "status": "what is built and saved in the cache"}


def _dispatch(args: argparse.Namespace) -> int:
    if args.action != "status" and args.release is None:
        fail(f"live {args.action} needs a release: {', '.join(_releases())}")
    if args.action in ("save", "run"):
        try:  # before any download: a missing tool is one line and exit status 2
            require_bochs()
            require("gcc", "apt-get", "dpkg")
        except ToolMissing as e:
            fail(str(e))
    fn = {"build": cmd_build, "save": cmd_save, "run": cmd_run, "status": cmd_status}[args.action]
    return int(_guard(fn)(args))


def _releases() -> tuple[str, ...]:
    return tuple(RELEASES)


def register(sub: Any) -> None:
    """Register `vmxaddr live` (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("live", help="Debian's real KVM, nested under Bochs 2.7: build, save, run cases",
                       description="Run Debian's own kernel and kvm-intel (nested=1) under Bochs 2.7 with VMX, and "
                       "VMX instructions with memory operands in an L1 guest of a /dev/kvm client: KVM's real "
                       "answers, and the exit information Bochs handed it (kprobes). Actions: "
                       + "; ".join(f"{k}: {v}" for k, v in ACTIONS.items()) + ". docs/live-kvm.md.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=tuple(ACTIONS), help="build | save | run | status")
    p.add_argument("release", nargs="?", choices=_releases(), help="the Debian kernel (names as in `vmxaddr sources`)")
    p.add_argument("--force", action="store_true", help="build/save: redo even if the cache is current")
    p.add_argument("-n", type=int, default=1000, help="run: number of cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="run: random seed (default 0)")
    p.add_argument("--batch", type=int, default=100_000, help="run: cases per restored Bochs run (default 100000)")
    p.add_argument("--against", metavar="MODEL", help="run: model to compare with (default kvm-RELEASE, compiled)")
    p.add_argument("--shadow-vmcs", action="store_true",
                   help="run: reload kvm-intel with enable_shadow_vmcs=1 first (VMREAD/VMWRITE then bypass KVM)")
    p.add_argument("--no-probes", action="store_true", help="run: no kprobes (the bare rate; nothing is compared)")
    p.add_argument("--json", action="store_true", help="one JSON object on standard output")
    p.set_defaults(func=_dispatch)
