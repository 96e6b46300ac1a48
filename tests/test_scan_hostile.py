"""`vmxaddr scan` on hostile input (issue 13, item 6): bounded decompression and reads, findings
streamed (memory flat with --summary-only), names from the file escaped in text mode, every
problem with the arguments on one line with the documented exit status, progress on long runs,
^C that prints the counts so far."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from vmxaddr import scancli, scanio
from vmxaddr.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_util import AS, assemble  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOMB = 64 << 20  # bytes of zeros in each bomb
CAP = "4M"

pytestmark = pytest.mark.skipif(AS is None, reason="needs GNU as")  # fails under CI=true (tests/ci_policy.py)


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble(tmp_path_factory.mktemp("hostile"), "small",
                    ".globl fESCAPE1\nfESCAPE1:\n vmptrld (%rax)\n vmread %rax, %rbx\n ret\n")


def scan_rss(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `vmxaddr scan ARGS` in a child; its result and its peak resident memory in KiB."""
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr); "
            "sys.stderr.write('\\nRSS %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(p.returncode)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "vmxaddr.cli", "scan", *args],
                       capture_output=True, text=True, timeout=timeout, env=env)
    body, _, rss = p.stderr.rpartition("\nRSS ")
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout, body.strip() + "\n"), int(rss)


def _bomb(path: Path, kind: str, head: bytes = b"") -> Path:
    """`head` then BOMB bytes of zeros, compressed as `kind`, written in 1 MiB pieces."""
    zero = bytes(1 << 20)
    comp = {"gz": lambda: zlib.compressobj(9, zlib.DEFLATED, 31), "xz": lambda: lzma.LZMACompressor(),
            "zst": lambda: __import__("zstandard").ZstdCompressor().compressobj()}[kind]()
    with open(path, "wb") as fh:
        fh.write(comp.compress(head))
        for _ in range(BOMB >> 20):
            fh.write(comp.compress(zero))
        fh.write(comp.flush())
    return path


@pytest.fixture(scope="module")
def baseline(obj: Path) -> int:
    p, rss = scan_rss("--quiet", str(obj))
    assert p.returncode == 0, p.stderr
    return rss


@pytest.mark.parametrize("kind", ["gz", "xz", "zst"])
@pytest.mark.parametrize("elf_headed", [False, True], ids=["zeros", "elf-headed"])
def test_decompression_bombs_stop_at_the_cap(tmp_path: Path, obj: Path, baseline: int, kind: str,
                                             elf_headed: bool) -> None:
    head = obj.read_bytes()[:64] if elf_headed else b""
    bomb = _bomb(tmp_path / f"bomb.ko.{kind}", kind, head)
    p, rss = scan_rss("--quiet", "--max-size", CAP, str(obj), str(bomb))
    assert p.returncode == 1, p.stderr
    [line] = p.stderr.splitlines()
    assert line.startswith(f"vmxaddr scan: {bomb}: ") and "cap" in line and "--max-size" in line
    assert "2 VMX-family instructions in 1 files (1 failed)" in p.stdout  # the good file still scanned
    assert rss - baseline < 32 << 10, (rss, baseline)  # KiB: far below the 64 MiB the bomb holds


def test_a_plain_file_over_the_cap_is_not_read(tmp_path: Path, obj: Path) -> None:
    big = tmp_path / "big.o"
    big.write_bytes(obj.read_bytes() + bytes(5 << 20))
    assert main(["scan", "--quiet", "--max-size", CAP, str(big)]) == 1
    data, _ = scanio.read_image(str(obj), 1 << 20)
    with pytest.raises(scanio.ScanError, match="cap"):
        scanio.read_image(str(big), 4 << 20)
    assert data == obj.read_bytes()


def test_gzip_below_the_cap_still_reads(tmp_path: Path, obj: Path) -> None:
    z = tmp_path / "small.o.gz"
    z.write_bytes(gzip.compress(obj.read_bytes()))
    assert scanio.read_image(str(z), 1 << 20) == (obj.read_bytes(), "gzip")


@pytest.mark.parametrize("what", ["/dev/zero", "fifo", "missing"])
def test_bad_arguments_one_line_exit_2(tmp_path: Path, obj: Path, what: str) -> None:
    path = what
    if what == "fifo":
        path = str(tmp_path / "pipe")
        os.mkfifo(path)
    elif what == "missing":
        path = str(tmp_path / "missing.o")
    p, _ = scan_rss(str(obj), path, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    [line] = p.stderr.splitlines()
    assert line.startswith("vmxaddr scan: error: ") and path in line
    assert ("No such file" in line) if what == "missing" else ("not a regular file" in line)


def test_a_fifo_inside_a_directory_is_passed_over(tmp_path: Path, obj: Path) -> None:
    d = tmp_path / "tree"
    d.mkdir()
    os.mkfifo(d / "pipe.ko")
    (d / "m.ko").write_bytes(obj.read_bytes())
    p, _ = scan_rss("--quiet", str(d), timeout=60)
    assert p.returncode == 0 and "2 VMX-family instructions in 1 files" in p.stdout


@pytest.mark.parametrize("jobs", ["-3", "-1"])
def test_negative_jobs_refused(obj: Path, jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--jobs", jobs, str(obj)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--jobs" in err


def test_unreadable_directory_is_reported(tmp_path: Path, obj: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # (root reads any directory, so the refusal is simulated where the walk meets it)
    d = tmp_path / "locked"
    d.mkdir()
    real_walk = os.walk

    def walk(top: str, onerror=None, **kw):  # type: ignore[no-untyped-def]
        if onerror is not None:
            onerror(PermissionError(13, "Permission denied", str(d)))
            return iter(())
        return real_walk(top, **kw)

    monkeypatch.setattr(scanio.os, "walk", walk)
    code = main(["scan", "--quiet", "--json", str(d)])
    out, err = capsys.readouterr()
    assert code == 1
    assert err == f"vmxaddr scan: {d}: cannot read the directory: Permission denied\n"
    doc = json.loads(out)
    assert doc["errors"] == [{"file": str(d), "error": "cannot read the directory: Permission denied"}]
    assert doc["summary"]["failed"] == 1


def test_summary_only_memory_does_not_grow_with_findings(tmp_path: Path, baseline: int) -> None:
    many = assemble(tmp_path, "many", "f:\n.rept 30000\n vmread %rax, %rbx\n.endr\n ret\n")
    p, rss = scan_rss("--quiet", "--summary-only", str(many))
    assert p.returncode == 0 and "30000 VMX-family instructions in 1 files" in p.stdout
    assert "30000  vmread register" in p.stdout
    assert rss - baseline < 24 << 10, (rss, baseline)  # KiB; about 2 KiB a finding were kept before
    p, _ = scan_rss("--quiet", "--summary-only", "--json", str(many))
    doc = json.loads(p.stdout)
    assert "findings" not in doc and doc["summary"]["total"] == 30000


def test_json_streams_the_findings_into_one_object(obj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--quiet", "--json", str(obj), str(obj)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["mnemonic"] for f in doc["findings"]] == ["vmptrld", "vmread"] * 2
    assert doc["summary"]["total"] == 4 and doc["summary"]["interrupted"] is False


def test_names_from_the_file_are_escaped_in_text(tmp_path: Path, obj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.o"
    data = obj.read_bytes()
    assert data.count(b"fESCAPE1") == 1
    evil.write_bytes(data.replace(b"fESCAPE1", b"\x1b]0;\x07\xc2\x9bJ"))  # OSC, BEL, CSI (U+009B): same length
    assert main(["scan", "--quiet", str(evil)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "<\\x1b]0;\\x07\\x9bJ+0x0>" in out
    assert main(["scan", "--quiet", "--json", str(evil)]) == 0  # JSON escapes by itself; the name is kept
    assert json.loads(capsys.readouterr().out)["findings"][0]["symbol"] == "\x1b]0;\x07\x9bJ"


def test_progress_without_the_option_on_a_long_run(obj: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(scancli, "PROGRESS_AFTER", 0.0)  # every run is "long"
    assert main(["scan", str(obj), str(obj)]) == 0
    assert "vmxaddr scan [" in capsys.readouterr().err
    monkeypatch.setattr(scancli, "PROGRESS_AFTER", 3600.0)  # a short run without a terminal: silent
    assert main(["scan", str(obj), str(obj)]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(scancli, "PROGRESS_AFTER", 0.0)
    assert main(["scan", "--quiet", str(obj), str(obj)]) == 0
    assert capsys.readouterr().err == ""


def test_interrupt_prints_the_counts_so_far(obj: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = scancli.scan_file
    calls = []

    def scan_file(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(a[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scancli, "scan_file", scan_file)
    assert main(["scan", "--quiet", "--json", str(obj), str(obj), str(obj)]) == 130
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["interrupted"] is True and doc["summary"]["total"] == 2 and len(doc["findings"]) == 2
    calls.clear()
    assert main(["scan", "--quiet", str(obj), str(obj), str(obj)]) == 130
    assert "2 VMX-family instructions in 1 files  INTERRUPTED" in capsys.readouterr().out


def test_scan_workers_end_when_the_command_is_killed(tmp_path: Path) -> None:
    import signal

    from proc_util import alive, children, reap_all, wait_for

    many = assemble(tmp_path, "slow", "f:\n.rept 30000\n vmread %rax, %rbx\n.endr\n ret\n")
    files = []
    for i in range(6):
        (tmp_path / f"m{i}.o").write_bytes(many.read_bytes())
        files.append(str(tmp_path / f"m{i}.o"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "vmxaddr.cli", "scan", "--quiet", "--summary-only", "--jobs", "2",
                          *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    workers: set[int] = set()
    try:
        assert wait_for(lambda: len(children(p.pid)) >= 2, 30), "no workers started"
        workers = children(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        assert wait_for(lambda: not any(alive(w) for w in workers), 10), "scan workers outlived their parent"
    finally:
        p.kill()
        p.communicate()
        reap_all(workers)
