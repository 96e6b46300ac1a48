"""check-trace's own output failing (issue 21 §3): a full disk is a write error, exit 2, never
"FILE: reading failed"; a reader that stops early (`| head -1`) ends the run quietly. And a trace
whose lines end in CR only is not "clean"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "t.jsonl"
    subprocess.run([sys.executable, "-m", "vmxaddr.cli", "trace", "synth", "--model", "sdm", "-n", "3000", "-q",
                    "--out", str(path)], check=True, env=ENV, timeout=300)
    return path


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_a_write_error(trace: Path) -> None:
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "vmxaddr.cli", "check-trace", "--json", "--fingerprint", "all",
                            str(trace)], stdout=full, stderr=subprocess.PIPE, text=True, env=ENV, timeout=300)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert "cannot write the output" in err[0] and "No space left on device" in err[0]
    assert "reading failed" not in p.stderr and "Traceback" not in p.stderr


def test_a_reader_that_stops_early_ends_the_run_quietly(trace: Path) -> None:
    p = subprocess.run(f'"{sys.executable}" -m vmxaddr.cli check-trace --json -q "{trace}" | head -1; '
                       'echo "status=${PIPESTATUS[0]}" >&2', shell=True, executable="/bin/bash",
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert json.loads(p.stdout)["type"] == "verdict"
    assert p.stderr.strip() == "status=0", p.stderr  # nothing about reading, no traceback


def test_cr_only_line_ends_are_read_as_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmxaddr import cli

    good = (ROOT / "tests" / "data" / "traces" / "good.jsonl").read_bytes()
    (tmp_path / "lf.jsonl").write_bytes(good)
    (tmp_path / "cr.jsonl").write_bytes(good.replace(b"\n", b"\r"))  # classic Mac OS line ends
    (tmp_path / "crlf.jsonl").write_bytes(good.replace(b"\n", b"\r\n"))
    summaries = {}
    for name in ("lf", "cr", "crlf"):
        status = cli.main(["check-trace", "--json", "-q", str(tmp_path / f"{name}.jsonl")])
        summary = json.loads(capsys.readouterr().out.splitlines()[-1])
        summaries[name] = (status, summary["exit_records"], summary["malformed_lines"], summary["lines"])
    assert summaries["lf"][1] > 0
    assert summaries["cr"] == summaries["lf"] == summaries["crlf"]
