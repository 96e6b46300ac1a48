"""`vmxaddr sources fetch NAME` and `vmxaddr sources list`: Debian's hypervisor sources in the cache."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from vmxaddr.cli import fail, print_json
from vmxaddr.realcode import sources

EPILOG = """examples:
  vmxaddr sources fetch linux-6.1
      download Debian's linux-source-6.1 (about 140 MB, deleted after use), keep nested.c and vmx.c
  vmxaddr sources fetch linux-6.1 && vmxaddr fuzz --model kvm-linux-6.1 --against sdm --time 30
      the shipping get_vmx_mem_address(), compiled, against the SDM
  vmxaddr sources list --json
      what is cached: package, version, SHA-256 of each download and file

The cache is $VMXADDR_CACHE (default ~/.cache/vmxaddr). Fetching uses apt-get download (binary
packages, from the suites apt is configured with) or apt-get source --download-only with a private
configuration under the cache (the system's apt configuration is never changed).
"""


def cmd_sources(args: argparse.Namespace) -> int:
    """`vmxaddr sources fetch|list`: fetch hypervisor sources into the cache, or list them."""
    if args.action == "list":
        if args.name:
            fail(f"sources list takes no name (got {' '.join(args.name)}); to fetch one: sources fetch NAME")
        got = {f.name: f for f in sources.cached()}
        if args.json:
            print_json({"cache": str(sources.cache_dir()),
                        "sources": [{"name": n, "package": s.package, "cached": n in got,
                                     **({"fetched": got[n].to_json()} if n in got else {})}
                                    for n, s in sources.SOURCES.items()]})
            return 0
        print(f"cache: {sources.cache_dir()}")
        for n, s in sources.SOURCES.items():
            f = got.get(n)
            state = f"{f.package} {f.version}" + ("" if f.pinned else " (not the pinned version)") if f else "not fetched"
            print(f"  {n:<12} {state:<40} {s.summary}")
        return 0
    if not args.name:
        fail("give the source to fetch: " + ", ".join(sources.SOURCES))
    out = []
    for name in args.name:
        if name not in sources.SOURCES:
            fail(f"unknown source {name!r} (known: {', '.join(sources.SOURCES)})")
        t0 = time.monotonic()
        try:
            f = sources.fetch(name, progress=None if args.quiet else _say(name), force=args.force)
        except sources.SourceError as e:
            fail(f"{name}: {e}")
        out.append(f)
        if not args.json:
            dl = ", ".join(f"{k} sha256 {v}" for k, v in f.downloads.items())
            print(f"{name}: {f.package} {f.version}{'' if f.pinned else ' (newest offered; not the pinned version)'} "
                  f"in {f.root} ({time.monotonic() - t0:.1f} s; download {f.seconds.get('download', 0):.1f} s, "
                  f"unpack {f.seconds.get('extract', 0):.1f} s)\n  {dl}")
    if args.json:
        print_json({"fetched": [f.to_json() for f in out]})  # one object, as every --json (README)
    return 0


def _say(name: str) -> Callable[[str], None]:
    return lambda m: print(f"{name}: {m}", file=sys.stderr)


def _intermixed(p: argparse.ArgumentParser) -> None:
    """Let `p` take its options between its positionals (`sources fetch --force NAME`): argparse
    otherwise gives the empty NAME list to `fetch` at once and refuses the NAME after an option."""
    plain = p.parse_known_args
    inside = False

    def parse_known_args(args: Any = None, namespace: Any = None) -> Any:
        nonlocal inside
        if inside:  # parse_known_intermixed_args calls parse_known_args itself
            return plain(args, namespace)
        inside = True
        try:
            return p.parse_known_intermixed_args(args, namespace)
        finally:
            inside = False

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def register(sub: Any) -> None:
    """Register `vmxaddr sources` (listed in cli.SUBCOMMANDS)."""
    p = sub.add_parser("sources", help="fetch hypervisor sources from Debian's archive; list the cache",
                       description="Fetch the hypervisor sources the real-code models compile (kvm-linux-6.1, "
                       "kvm-linux-6.12, ...) into the cache, or list what is cached.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("fetch", "list"))
    p.add_argument("name", nargs="*", help=f"with fetch: {', '.join(sources.SOURCES)}")
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object (package, version, SHA-256 of what was used)")
    p.set_defaults(func=cmd_sources)
    _intermixed(p)
