"""`vmxaddr scan`: the command line of the ELF scanner (vmxaddr/scan.py).

Findings are streamed: printed (text), or written into the JSON object as they come, and with
--summary-only only counted; memory does not grow with the number of findings. Inputs are read
bounded (vmxaddr/scanio.py). Exit status: 0 every file scanned, 1 some file could not be scanned
(or a directory not read), 2 bad usage (a missing file, a FIFO or device, a bad option), 130 ^C
(the counts so far are printed, marked interrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import IO, Any, NoReturn

from vmxaddr.cli import main as cli_main
from vmxaddr.errors import fail
from vmxaddr.progress import Progress
from vmxaddr.scan import FileResult, scan_file
from vmxaddr.scanio import MAX_IMAGE, expand_paths, mib, printable, regular_file_problem

EPILOG = """examples:
  vmxaddr scan /lib/modules/$(uname -r)/kernel/arch/x86/kvm
      every VMX-family instruction in the KVM modules, at objdump's instruction boundaries
  vmxaddr scan --summary-only --json xen.gz
      counts only, as one JSON object
exit status: 0 every file scanned, 1 some file could not be scanned or a directory not read,
2 bad usage (a missing file, a FIFO or device, a bad option), 130 interrupted (counts so far printed)
"""

PROGRESS_AFTER = 10.0  # seconds: without a terminal, progress lines start once the run is this long


def _mode_arg(text: str) -> tuple[str | None, int]:
    name, sep, m = text.rpartition("=")
    if m not in ("16", "32", "64"):
        raise argparse.ArgumentTypeError(f"mode must be 16, 32 or 64 (optionally FILE=MODE), not {text!r}")
    return (name if sep else None), int(m)


def _mode_for(path: str, modes: list[tuple[str | None, int]]) -> int | None:
    chosen = None
    for name, m in modes:
        if name is None or name in (path, os.path.basename(path)):
            chosen = m
    return chosen


def _size_arg(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        n = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 2G, not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"the size must be positive, not {text!r}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add `vmxaddr scan`'s options to `p`."""
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="ELF files (may be .xz, .gz or .zst); a directory is searched for them")
    p.add_argument("--mode", type=_mode_arg, action="append", default=[], metavar="[FILE=]M",
                   help="code size 16, 32 or 64 instead of the ELF class; FILE=M for one file "
                        "(path or base name); may be repeated")
    p.add_argument("--json", action="store_true", help="print one JSON object (findings, files, summary, errors, "
                   "rejected); with --summary-only without the findings")
    p.add_argument("--jobs", "-j", type=int, default=0,
                   help="worker processes (default: one per CPU when there are 8 files or more); capped to the "
                   "CPUs this process may use")
    p.add_argument("--max-size", type=_size_arg, default=MAX_IMAGE, metavar="SIZE",
                   help=f"largest image read, after decompression (default {mib(MAX_IMAGE)}; e.g. 1G): "
                   "a larger file, or a compressed one that expands beyond it, is reported and skipped")
    p.add_argument("--progress", action="store_true", help="progress on stderr from the start (by default it "
                   f"shows on a terminal, and otherwise once the run takes more than {PROGRESS_AFTER:g} s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.add_argument("--summary-only", action="store_true", help="print only the counts (findings are not kept)")
    p.add_argument("--string-io", action="store_true",
                   help="also find INS/OUTS (6C-6F), which have an instruction-information field too; slower, "
                   "since those bytes occur inside many other instructions")
    apx = p.add_mutually_exclusive_group()
    apx.add_argument("--apx", dest="apx", action="store_const", const=True, default=None,
                     help="in 64-bit code always read D5 as the APX REX2 prefix (R16-R31), as llvm-objdump-19 "
                     "does; by default it is read so only in sections that look like APX code (REX2 MOV/LEA/ALU "
                     "forms, at least one per 2 KiB)")
    apx.add_argument("--no-apx", dest="apx", action="store_const", const=False,
                     help="never: D5 is '(bad)' as binutils 2.40's objdump shows it (#UD without APX)")
    p.set_defaults(func=run)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `scan` to the vmxaddr command line."""
    p = subparsers.add_parser("scan", help="find VMX-family instructions in ELF files",
                              description="Find the VMX-family instructions in ELF files at the "
                                          "instruction boundaries objdump -d uses, and show the "
                                          "VM-exit information each would produce.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def fmt_finding(f: dict[str, Any]) -> str:
    """One finding as a line of text; names from the file are escaped (scanio.printable)."""
    where = f"{printable(f['section'])}+{f['offset']:#x}"
    sym = f" <{printable(f['symbol'])}+{f['symbol_offset']:#x}>" if f["symbol"] else ""
    return (f"{printable(f['file'])}: {f['address']:#x} {where}{sym}  {f['bytes']:<24} "
            f"{f['instruction'].get('text', f['mnemonic'])}  info={f['instruction_info']:#010x} "
            f"qual={f['exit_qualification']:#x}")


def _discard(f: dict[str, Any]) -> None:
    pass


def _scan_job(job: tuple[int, str, int | None, bool, int, bool, bool | None]) -> tuple[int, FileResult]:
    i, path, mode, counts_only, limit, string_io, apx = job
    return i, scan_file(path, mode, _discard if counts_only else None, limit, string_io, apx)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def scan_files(jobs: list[tuple[str, int | None]], workers: int = 1, on_finding: Callable[[dict[str, Any]], None]
               | None = None, counts_only: bool = False, limit: int = MAX_IMAGE,
               string_io: bool = False, apx: bool | None = None) -> Iterator[FileResult]:
    """Scan files, in `workers` processes when more than one; results come in the order of
    `jobs`. In one process each finding goes to `on_finding` as it is found; from workers, a
    file's findings come with its result (none with counts_only). The largest files are handed
    out first so that one big file does not finish last. The workers ignore ^C and die with
    this process (vmxaddr.parallel); on ^C the queued files are dropped."""
    if workers <= 1 or len(jobs) < 2:
        for path, mode in jobs:
            yield scan_file(path, mode, _discard if counts_only and on_finding is None else on_finding, limit, string_io,
                            apx)
        return
    from vmxaddr.parallel import process_pool

    order = sorted(range(len(jobs)), key=lambda i: -_size(jobs[i][0]))
    done: dict[int, FileResult] = {}
    nxt = 0
    with process_pool(workers) as pool:
        pending: set[Future[tuple[int, FileResult]]] = set()
        queue = iter(order)
        try:
            while True:
                while len(pending) < 2 * workers:  # a bounded window: results do not pile up
                    i = next(queue, None)
                    if i is None:
                        break
                    pending.add(pool.submit(_scan_job, (i, jobs[i][0], jobs[i][1], counts_only, limit, string_io,
                                                        apx)))
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i, res = fut.result()
                    done[i] = res
                while nxt in done:
                    yield done.pop(nxt)
                    nxt += 1
        finally:
            for fut in pending:
                fut.cancel()
    while nxt in done:  # pragma: no cover - every job was yielded in order above
        yield done.pop(nxt)
        nxt += 1


class _Tally:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.files = self.failed = self.rejected_total = 0
        self.infos: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.rejected: list[dict[str, Any]] = []

    def summary(self, seconds: float, interrupted: bool, listed: int) -> dict[str, Any]:
        by_mnemonic: Counter[str] = Counter()
        by_form: Counter[str] = Counter()
        for (mn, form), n in self.counts.items():
            by_mnemonic[mn] += n
            by_form[form] += n
        return {"total": sum(self.counts.values()), "by_mnemonic": dict(sorted(by_mnemonic.items())),
                "by_form": dict(sorted(by_form.items())),
                "by_mnemonic_and_form": dict(sorted((f"{m} {f}", n) for (m, f), n in self.counts.items())),
                "files": listed, "scanned": self.files, "failed": self.failed, "rejected": self.rejected_total,
                "seconds": round(seconds, 3), "interrupted": interrupted}


def _fail(message: str) -> NoReturn:
    fail(message)


def run(args: argparse.Namespace) -> int:
    """`vmxaddr scan`: scan the files (in parallel when asked) and print the findings and the
    summary."""
    from vmxaddr.parallel import ParallelError, resolve_jobs

    bad = [(p, why) for p in args.files if not os.path.isdir(p) and (why := regular_file_problem(p))]
    if bad:
        _fail("; ".join(f"{printable(p)}: {why}" for p, why in bad))
    tally = _Tally()

    def dir_error(path: str, why: str) -> None:
        tally.failed += 1
        tally.errors.append({"file": path, "error": why})
        print(f"vmxaddr scan: {printable(path)}: {why}", file=sys.stderr)

    files = expand_paths(args.files, dir_error)
    jobs = [(path, _mode_for(path, args.mode)) for path in files]
    try:
        workers, note = resolve_jobs(args.jobs) if args.jobs else ((min(os.cpu_count() or 1, 8), None)
                                                                   if len(files) >= 8 else (1, None))
    except ParallelError as e:
        _fail(str(e))
    if note:
        print(f"vmxaddr scan: {note}", file=sys.stderr)
    out = sys.stdout
    t0 = time.monotonic()
    bar = Progress(len(files), "vmxaddr scan", enabled=not args.quiet, unit="files",
                   delay=0.0 if args.progress else PROGRESS_AFTER)
    stream_json = args.json and not args.summary_only
    first = [True]

    def emit(f: dict[str, Any]) -> None:
        if stream_json:
            out.write(("" if first[0] else ",") + json.dumps(f))
            first[0] = False
        elif not args.json and not args.summary_only:
            out.write(fmt_finding(f) + "\n")

    if stream_json:
        out.write('{"findings":[')
    interrupted = False
    try:
        for n, res in enumerate(scan_files(jobs, workers, None if args.summary_only else emit,
                                           counts_only=args.summary_only, limit=args.max_size,
                                           string_io=args.string_io, apx=args.apx), 1):
            _account(tally, res, emit)
            bar.update(n, f"{sum(tally.counts.values())} instructions")
    except KeyboardInterrupt:
        interrupted = True
    bar.close()
    summary = tally.summary(time.monotonic() - t0, interrupted, len(files))
    if args.json:
        rest = {"files": tally.infos, "summary": summary, "errors": tally.errors, "rejected": tally.rejected}
        # one line, by the C encoder (json's indenting encoder is pure Python and costs seconds here)
        out.write(("]," + json.dumps(rest)[1:]) if stream_json else json.dumps(rest))
        out.write("\n")
    else:
        _print_summary(out, tally, summary)
    if interrupted:
        return 130
    return 1 if tally.failed else 0


def _account(tally: _Tally, res: FileResult, emit: Callable[[dict[str, Any]], None]) -> None:
    if res.error is not None:
        tally.failed += 1
        tally.errors.append({"file": res.path, "error": res.error})
        print(f"vmxaddr scan: {printable(res.path)}: {printable(res.error)}", file=sys.stderr)
        return
    tally.files += 1
    for f in res.findings:  # from a worker process
        emit(f)
    tally.counts.update(res.counts)
    tally.infos.append({**res.info, "findings": res.total, "warnings": res.warnings, "rejected": res.rejected_total})
    more = res.warnings_total - len(res.warnings)
    for w in res.warnings + ([f"{more} more warnings"] if more else []):
        print(f"vmxaddr scan: {printable(res.path)}: warning: {printable(w)}", file=sys.stderr)
    tally.rejected_total += res.rejected_total
    room = 1000 - len(tally.rejected)
    tally.rejected.extend({"file": res.path, **r} for r in res.rejected[:max(0, room)])


def _print_summary(out: IO[str], tally: _Tally, summary: dict[str, Any]) -> None:
    failed = summary["failed"]
    out.write(f"{summary['total']} VMX-family instructions in {summary['scanned']} files"
              + (f" ({failed} failed)" if failed else "")
              + ("  INTERRUPTED: the counts of the files done so far" if summary["interrupted"] else "") + "\n")
    for k, v in summary["by_mnemonic_and_form"].items():
        out.write(f"  {v:6d}  {k}\n")
    for r in tally.rejected:
        out.write(f"  not decoded: {printable(r['file'])}: {printable(r['section'])}+{r['offset']:#x} {r['bytes']}: "
                  f"{r['kind']}: {r['message']}\n")
    if summary["rejected"] > len(tally.rejected):
        out.write(f"  ({summary['rejected'] - len(tally.rejected)} more not decoded)\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m vmxaddr.scancli ARGS`: the same as `vmxaddr scan ARGS`."""
    return cli_main(["scan", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
