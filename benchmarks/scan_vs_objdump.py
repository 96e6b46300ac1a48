"""Time `vmxaddr scan` against `objdump -d | grep` on the same files and compare what they find.

    python benchmarks/scan_vs_objdump.py [--mode 64] [--jobs N] [--objdump-jobs N] PATH...

PATH is a file or a directory (searched as `vmxaddr scan` searches it). Both sides run as
separate processes from a cold start and are timed by wall clock:

* scanner: `python -m vmxaddr.scancli --json --jobs N PATH...`
  (`--jobs` 0 = the scanner's default: one process per CPU for 8 files or more);
* objdump: `objdump -d [-M x86-64] FILES | grep -E 'REGEX|file format|Disassembly of section'`,
  in `--objdump-jobs` pipelines over equal shares of the files (default 1, a plain run).
  The two extra grep alternatives keep the file and section headers so every match can be
  attributed; they cost nothing measurable. Compressed inputs are decompressed for objdump
  beforehand, outside the timing.

It prints both times, the ratio, and whether the two found the same set of
(file, section, address, mnemonic), once for the issue's narrow regex
(VMREAD/VMWRITE/VMPTRLD/VMPTRST/VMCLEAR/VMXON/INVEPT/INVVPID/INVPCID) and once for the whole
VMX family the scanner reports (adding RDRAND/RDSEED, the descriptor-table instructions and
XSAVES/XRSTORS). An instruction objdump shows that the core's decoder refuses (e.g. a LOCK
prefix: #UD, so no VM exit) is listed with the decoder's reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmxaddr.objdump import parse_objdump  # noqa: E402
from vmxaddr.scan import ScanError, expand_paths, read_image  # noqa: E402

NARROW = r"vm(read|write|ptrld|ptrst|clear|xon)|inv(ept|vpid|pcid)"
FAMILY = NARROW + r"|rdrand|rdseed|[ls][gi]dt|lldt|ltr|sldt|str|xsaves|xrstors"
_NARROW = re.compile(r"^(vm(read|write|ptrld|ptrst|clear|xon)|inv(ept|vpid|pcid))$")
def run_objdump(files: list[str], extra: list[str], jobs: int) -> tuple[float, str]:
    pattern = f"{FAMILY}|file format|^Disassembly of section"
    shares = [files[i::jobs] for i in range(jobs)] if jobs > 1 else [files]
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        t0 = time.perf_counter()
        for i, share in enumerate(shares):
            lst = Path(tmp, f"list{i}")
            lst.write_text("\0".join(share))
            cmd = (f"xargs -0 objdump -d {' '.join(extra)} < {lst} "
                   f"| grep -E '{pattern}' > {Path(tmp, f'out{i}')}")
            procs.append(subprocess.Popen(["sh", "-c", cmd]))
        for p in procs:
            p.wait()
        seconds = time.perf_counter() - t0
        text = "".join(Path(tmp, f"out{i}").read_text() for i in range(len(shares)))
    return seconds, text


# The scanner starts as an installed vmxaddr does: with bytecode caches, kept out of the tree, even
# where the environment says PYTHONDONTWRITEBYTECODE (compiling its modules costs each run 0.1-0.2 s).
SCANNER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
    "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": os.path.join(os.environ.get("TMPDIR", "/tmp"), "vmxaddr-bench-pycache")}


def run_scanner(paths: list[str], modes: list[str], jobs: int) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "vmxaddr.scancli", "--json", "--jobs", str(jobs)]
    for m in modes:
        cmd += ["--mode", m]
    t0 = time.perf_counter()
    out = subprocess.run(cmd + paths, check=False, capture_output=True, text=True, cwd=ROOT,
                         env=SCANNER_ENV)
    seconds = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        sys.exit(f"scanner failed ({out.returncode}): {out.stderr.strip()}")
    return seconds, json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--mode", choices=("16", "32", "64"), help="code size for every file")
    ap.add_argument("--jobs", type=int, default=0, help="scanner processes (0: its default)")
    ap.add_argument("--objdump-jobs", type=int, default=1, help="parallel objdump pipelines")
    ap.add_argument("--show", type=int, default=10, help="differences to list")
    args = ap.parse_args()

    paths = [os.path.abspath(p) for p in args.paths]
    files = expand_paths(paths)
    extra = {"64": ["-M", "x86-64"], "32": ["-M", "i386"], "16": ["-M", "i8086"]}.get(args.mode or "", [])
    with tempfile.TemporaryDirectory() as tmp:
        plain: list[str] = []
        names: dict[str, str] = {}
        for i, f in enumerate(files):
            try:
                data, how = read_image(f)
            except ScanError as exc:
                print(f"skipping {f}: {exc}", file=sys.stderr)
                continue
            if how:
                out = os.path.join(tmp, f"{i}.elf")
                Path(out).write_bytes(data)
                names[out] = f
                plain.append(out)
            else:
                plain.append(f)
        obj_s, obj_text = run_objdump(plain, extra, args.objdump_jobs)
    if files:  # untimed: writes the bytecode caches the timed run starts with
        run_scanner(files[:1], [args.mode] if args.mode else [], 1)
    scan_s, result = run_scanner(paths, [args.mode] if args.mode else [], args.jobs)

    theirs = parse_objdump(obj_text, names)
    ours = {(f["file"], f["section"], f["address"], f["mnemonic"]) for f in result["findings"]}
    refused = {(r["file"], r["section"], r["address"]): f"{r['kind']}: {r['message']}"
               for r in result.get("rejected", [])}
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    print(f"files: {len(files)} ({size / 1e6:.1f} MB), "
          f"scanner errors: {len(result['errors'])}")
    print(f"objdump -d | grep : {obj_s:8.2f} s  ({args.objdump_jobs} pipeline(s))")
    print(f"vmxaddr scan      : {scan_s:8.2f} s  (jobs={args.jobs or 'default'})")
    print(f"ratio             : {obj_s / scan_s:8.2f}x")
    same = True
    for label, keep in (("narrow (issue's regex)", lambda k: bool(_NARROW.match(k[3]))),
                        ("whole VMX family", lambda k: True)):
        a = {k for k in ours if keep(k)}
        b = {k for k in theirs if keep(k)}
        print(f"{label}: scanner {len(a)}, objdump {len(b)}, same set: {a == b}")
        same &= a == b
        for k in sorted(a - b)[:args.show]:
            print(f"   only scanner: {k}")
        for k in sorted(b - a)[:args.show]:
            why = refused.get(k[:3])
            print(f"   only objdump: {k}" + (f"  (decoder refused: {why})" if why else ""))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
