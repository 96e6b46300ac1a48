"""check-trace against the speed of reading its input: records per CPU-second of check-trace and of
`json.loads` over the same lines, their ratio, peak memory, and what --jobs N gains.

    python benchmarks/bench_trace.py                      # realistic and worst-case 50-MB traces
    python benchmarks/bench_trace.py --size-mb 1024       # the 1-GB runs (synthesis takes minutes)
    python benchmarks/bench_trace.py --trace FILE         # an existing trace instead
    python benchmarks/bench_trace.py --jobs 2 --repeat 5  # also --jobs 1 vs 2, five times each (the
                                                          # realistic one repeated to 1 GB for that)

The traces are `vmxaddr trace synth` output, synthesised in full (not a block repeated):
  realistic  --shape realistic --wrong 0.01: six states, 48 instructions at fixed addresses that
             recur, four vCPUs, about 1% wrong answers (the memos' good case);
  worst      --shape random --wrong 0.5: every case new, many states, about half wrong (each
             wrong record is fingerprinted: every registered model runs on it).
Each measurement runs in a child process, so that its peak RSS (getrusage ru_maxrss) is its own.
Rates are per CPU-second of that process (user + system), so that other load on the machine
matters less; json.loads and check-trace are timed in the same child, one after the other. The
--jobs comparison is wall time (that is what more cores buy), alternating 1 and N jobs, with the
CPU seconds each run used (the cost of splitting: N jobs do more work in all than one); its
spread over --repeat runs is printed. One JSON object on standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

SHAPES = {"realistic": ("realistic", 0.01), "worst": ("random", 0.5)}


def make_trace(path: Path, size_mb: float, model: str, shape: str, wrong: float, seed: int) -> dict[str, float]:
    from vmxaddr.models import get
    from vmxaddr.trace.jsonline import dumps
    from vmxaddr.trace.synth import synth

    t0 = time.monotonic()
    target = int(size_mb * (1 << 20))
    written = 0
    with open(path, "w") as f:
        for rec in synth(get(model), 1 << 62, seed, shape, wrong):  # one stream, stopped at the size
            line = dumps(rec) + "\n"
            f.write(line)
            written += len(line)
            if written >= target:
                break
    return {"synth_seconds": round(time.monotonic() - t0, 1), "file_bytes": written}


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(path: Path, fingerprint: str, what: str) -> None:
    """In a child: json.loads over every line, or check-trace (one process) over the file."""
    if what == "json":
        lines = 0
        t0 = _cpu()
        with open(path, "rb") as f:
            for line in f:
                json.loads(line)
                lines += 1
        print(json.dumps({"lines": lines, "cpu_seconds": _cpu() - t0}))
        return
    from vmxaddr.trace import Checker, check_stream

    t0, w0 = _cpu(), time.monotonic()
    with open(path, "rb") as f:
        s = check_stream(f, Checker(fingerprint=fingerprint), lambda v: None, findings_only=True)
    print(json.dumps({"lines": s["lines"], "exit_records": s["exit_records"], "wrong_records": s["wrong_records"],
                      "cpu_seconds": _cpu() - t0, "wall_seconds": time.monotonic() - w0,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child(path: Path, fingerprint: str, what: str) -> dict[str, float]:
    r = subprocess.run([sys.executable, __file__, "--child", what, "--trace", str(path), "--fingerprint", fingerprint],
                       capture_output=True, text=True, env=JOBS_ENV)  # with bytecode caches, as installed
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


# The --jobs runs start as an installed vmxaddr does: with bytecode caches (kept out of the tree),
# even where the environment says PYTHONDONTWRITEBYTECODE (compiling every module on every start
# adds 0.3 s to each run, which would be measured as part of the fixed cost --jobs cannot share).
JOBS_ENV = {k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
    "PYTHONPYCACHEPREFIX": os.path.join(os.environ.get("TMPDIR", "/tmp"), "vmxaddr-bench-pycache")}


def jobs_run(path: Path, jobs: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the run and its workers) of check-trace --jobs `jobs`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "vmxaddr.cli", "check-trace", "-q", "--jobs", str(jobs), str(path)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=JOBS_ENV)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):
        raise SystemExit(r.stderr)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def repeated(path: Path, size_mb: float, dir: Path) -> Path:
    """`path` written over and over up to `size_mb` (a realistic trace for --jobs: synthesising a
    gigabyte takes minutes; its states are defined again at each repetition, as a recorder
    restarted would)."""
    out = dir / f"{path.stem}-x{size_mb:g}mb.jsonl"
    target = int(size_mb * (1 << 20))
    if out.exists() and out.stat().st_size >= target:
        return out
    data = path.read_bytes()
    with open(out, "wb") as f:
        written = 0
        while written < target:
            f.write(data)
            written += len(data)
    return out


def bench(path: Path, fingerprint: str, jobs: int, repeat: int, jobs_path: Path | None = None) -> dict[str, object]:
    out: dict[str, object] = {"file_bytes": path.stat().st_size}
    ratios, checks, loads = [], [], []
    for _ in range(repeat):
        j = child(path, fingerprint, "json")
        c = child(path, fingerprint, "check")
        loads.append(j["lines"] / j["cpu_seconds"])
        checks.append(c["lines"] / c["cpu_seconds"])
        ratios.append(checks[-1] / loads[-1])
        out.update(lines=c["lines"], exit_records=c["exit_records"], wrong_records=c["wrong_records"],
                   peak_rss_mb=round(max(c["peak_rss_mb"], float(out.get("peak_rss_mb", 0))), 1))  # type: ignore[arg-type]
    out["json_loads_lines_per_cpu_second"] = [round(x) for x in loads]
    out["check_lines_per_cpu_second"] = [round(x) for x in checks]
    out["ratio"] = [round(x, 2) for x in ratios]
    out["ratio_median"] = round(statistics.median(ratios), 2)
    if jobs > 1:
        jobs_path = jobs_path or path
        speedups, one, many, cpu_one, cpu_many = [], [], [], [], []
        for _ in range(repeat):  # alternating, so that a machine whose speed drifts affects both alike
            w, c = jobs_run(jobs_path, 1)
            one.append(w)
            cpu_one.append(c)
            w, c = jobs_run(jobs_path, jobs)
            many.append(w)
            cpu_many.append(c)
            speedups.append(one[-1] / many[-1])
        out["jobs_trace_bytes"] = jobs_path.stat().st_size
        out["jobs_1_seconds"] = [round(x, 2) for x in one]
        out[f"jobs_{jobs}_seconds"] = [round(x, 2) for x in many]
        out["jobs_1_cpu_seconds"] = [round(x, 2) for x in cpu_one]
        out[f"jobs_{jobs}_cpu_seconds"] = [round(x, 2) for x in cpu_many]
        out[f"speedup_jobs_{jobs}"] = [round(x, 2) for x in speedups]
        out[f"speedup_jobs_{jobs}_median"] = round(statistics.median(speedups), 2)
    out["load_average"] = [round(x, 1) for x in os.getloadavg()]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", type=Path, help="measure this trace instead of the two synthetic ones")
    p.add_argument("--size-mb", type=float, default=50.0, help="size of each synthetic trace (default 50)")
    p.add_argument("--only", choices=tuple(SHAPES), help="make and measure only this synthetic trace")
    p.add_argument("--model", default="sdm", help="model whose answers the synthetic traces record (default sdm)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fingerprint", choices=("wrong", "all", "none"), default="wrong")
    p.add_argument("--jobs", type=int, default=0, help="also compare --jobs 1 with --jobs N (wall time)")
    p.add_argument("--jobs-size-mb", type=float, default=1024.0,
                   help="with --jobs, the realistic trace is repeated up to this size for the comparison "
                        "(default 1024: checking it takes seconds, of which start-up, the same for any N, "
                        "is a small part); the worst-case trace is compared as it is")
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    p.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the synthetic traces go (default /tmp)")
    p.add_argument("--child", choices=("json", "check"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        measure(args.trace, args.fingerprint, args.child)
        return 0
    results: dict[str, object] = {}
    if args.trace:
        results["trace"] = bench(args.trace, args.fingerprint, args.jobs, args.repeat)
    else:
        for name, (shape, wrong) in SHAPES.items():
            if args.only and name != args.only:
                continue
            path = args.dir / f"vmxaddr-bench-{name}-{args.size_mb:g}mb.jsonl"
            made = make_trace(path, args.size_mb, args.model, shape, wrong, args.seed)
            jobs_path = repeated(path, args.jobs_size_mb, args.dir) if args.jobs > 1 and name == "realistic" else None
            r = bench(path, args.fingerprint, args.jobs, args.repeat, jobs_path)
            r.update(made)
            results[name] = r
            print(json.dumps({name: r}), file=sys.stderr)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
