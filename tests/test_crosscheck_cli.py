"""`vmxaddr crosscheck`: one report for every oracle, --jobs capped, workers that end with the
command (even when it is killed), and ^C that prints the counts so far."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vmxaddr.cli import main
from vmxaddr.parallel import cpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_util import alive, children, reap_all, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ORACLES = ["iced", "unicorn", "bochs", "llvm"]
KEYS = {"oracle", "cases", "agreements", "skipped", "explained_cases", "unexplained_cases", "disagreements_by_field",
        "seconds", "interrupted", "details", "examples", "seed", "jobs"}


def _bochs_or_skip(oracle: str) -> None:
    if oracle == "llvm":
        from vmxaddr.oracles import llvm_lib

        if llvm_lib.missing():  # fails under CI=true (tests/ci_policy.py)
            pytest.skip(f"LLVM oracle: {llvm_lib.missing()}")
    if oracle == "bochs":
        from vmxaddr.oracles import bochs as B

        missing = B.missing_tools()
        if missing:  # fails under CI=true (tests/ci_policy.py)
            pytest.skip("Bochs oracle needs: " + ", ".join(missing))


@pytest.mark.parametrize("oracle", ORACLES)
def test_every_oracle_gives_the_same_json_report(oracle: str, capsys: pytest.CaptureFixture[str]) -> None:
    _bochs_or_skip(oracle)
    assert main(["crosscheck", "--oracle", oracle, "-n", "120", "--seed", "3", "--quiet", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj) == KEYS and obj["oracle"] == oracle and obj["cases"] == 120
    assert obj["interrupted"] is False
    # What the oracle says, not a sum that holds by construction: on these 120 cases it agrees
    # with vmxaddr except where a documented departure explains the difference (docs/oracles.md,
    # docs/known-oracle-issues.md), so nothing is unexplained, and each explanation counted names
    # a departure those documents describe. A wrong encoder would show as unexplained cases.
    assert obj["unexplained_cases"] == 0, obj["examples"]
    assert obj["agreements"] > obj["explained_cases"] + obj["skipped"]
    documented = (ROOT / "docs" / "oracles.md").read_text() + (ROOT / "docs" / "known-oracle-issues.md").read_text()
    for counts in obj["disagreements_by_field"].values():
        for why in counts:
            assert why.split(":")[0] in documented, why
    for ex in obj["examples"]:
        assert set(ex) == {"bytes", "code_size", "command", "note", "disagreements"} and ex["command"].startswith("vmxaddr ")
        for d in ex["disagreements"]:
            assert set(d) == {"field", "ours", "theirs", "explained"}
    for counts in obj["disagreements_by_field"].values():
        assert all(isinstance(v, int) for v in counts.values())


@pytest.mark.parametrize("oracle", ORACLES)
def test_every_oracle_gives_the_same_text_report(oracle: str, capsys: pytest.CaptureFixture[str]) -> None:
    _bochs_or_skip(oracle)
    assert main(["crosscheck", "--oracle", oracle, "-n", "120", "--seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"crosscheck against {oracle}: 120 cases in ")
    assert [ln.split()[0] for ln in lines[1:] if ln.startswith("  ") and ln.split()[0] in
            ("agreements", "explained", "unexplained")] == ["agreements", "explained", "unexplained"]
    assert "{'" not in out  # no raw Python dict
    assert not any(ln.lstrip().startswith(("{'", '{"')) for ln in lines)


def test_jobs_are_capped_to_the_cpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crosscheck", "--oracle", "iced", "-n", "200", "--jobs", "1000", "--quiet", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["jobs"] == min(cpus(), 200) and json.loads(out)["cases"] == 200
    assert "--jobs 1000: using" in err and err.count("\n") == 1


@pytest.mark.parametrize("jobs", ["-3", "-1"])
def test_negative_jobs_refused(jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crosscheck", "--oracle", "iced", "-n", "10", "--jobs", jobs]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--jobs" in err


def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "vmxaddr.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def test_workers_end_when_the_command_is_killed() -> None:
    p = _start(["crosscheck", "--oracle", "iced", "-n", "50000000", "--jobs", "2", "--quiet"])
    workers: set[int] = set()
    try:
        assert wait_for(lambda: len(children(p.pid)) >= 2, 30), "no workers started"
        workers = children(p.pid)
        os.kill(p.pid, signal.SIGKILL)  # no chance to clean up: the workers must notice by themselves
        p.wait(timeout=10)
        assert wait_for(lambda: not any(alive(w) for w in workers), 10), "workers outlived their parent"
    finally:
        p.kill()
        p.communicate()
        reap_all(workers)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_interrupt_prints_the_counts_so_far(jobs: str) -> None:
    p = _start(["crosscheck", "--oracle", "iced", "-n", "50000000", "--jobs", jobs, "--json", "--quiet"])
    workers: set[int] = set()
    try:
        want = 2 if jobs == "2" else 0
        assert wait_for(lambda: len(children(p.pid)) >= want, 30)
        workers = children(p.pid)
        import time

        time.sleep(3)  # some cases done
        os.killpg(p.pid, signal.SIGINT)  # ^C at a terminal: the whole process group
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
        reap_all(workers)
    assert p.returncode == 130, err
    obj = json.loads(out)
    assert obj["interrupted"] is True and 0 < obj["cases"] < 50000000
    assert obj["agreements"] + obj["skipped"] + obj["explained_cases"] + obj["unexplained_cases"] == obj["cases"]
    assert not any(alive(w) for w in workers)
