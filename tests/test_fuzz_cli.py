"""`vmxaddr fuzz` as a user meets it (issue 13): --quiet is quiet, --time bounds the whole run,
bad numbers and a bad --out are refused before the run, a full disk keeps the report, ^C keeps
what was found, and a model that fails is a finding with a minimal witness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vmxaddr.cli import main
from vmxaddr.models import get
from vmxaddr.models.base import Result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KVM2015 = get("kvm-f9eb4af6")
CALLS = [0]


# -- user models (module.path:function) ------------------------------------------------------------

def counting(exit, state, access):
    CALLS[0] += 1
    return KVM2015(exit, state, access)


def recursing_on_vmclear(exit, state, access):
    """KVM 2015, except that VMCLEAR recurses without end (a RecursionError)."""
    def down(n: int) -> int:
        return down(n + 1) + 1
    if exit.instruction == "vmclear":
        down(0)
    return KVM2015(exit, state, access)


def failing_by_instruction(exit, state, access):
    """SDM answers, except: VMPTRST raises MemoryError, VMREAD SystemExit(0), INVEPT returns None,
    VMWRITE a str, VMXON a Result whose linear address is a str."""
    ins = exit.instruction
    if ins == "vmptrst":
        raise MemoryError
    if ins == "vmread":
        raise SystemExit(0)
    if ins == "invept":
        return None
    if ins == "vmwrite":
        return "0x1000"
    r = get("sdm")(exit, state, access)
    if ins == "vmxon" and r.linear_address is not None:
        return r._replace(linear_address=hex(r.linear_address))
    return r


INTERRUPT_AFTER = [0]


def interrupted_after_2000(exit, state, access):
    """KVM 2015 until its 2,000th case, then ^C (KeyboardInterrupt), as a user pressing it."""
    INTERRUPT_AFTER[0] += 1
    if INTERRUPT_AFTER[0] == 2000:
        raise KeyboardInterrupt
    return KVM2015(exit, state, access)


def _run(capsys, *argv):
    code = main(["fuzz", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- --quiet, --time -----------------------------------------------------------------------------

def test_quiet_prints_nothing_on_stderr_not_even_shrinking(capsys):
    code, out, err = _run(capsys, "--model", "kvm-f9eb4af6", "--max-examples", "400", "--hypothesis-examples", "0",
                          "--quiet")
    assert code == 0 and "minimal witness" in out
    assert err == ""


def test_time_bounds_the_whole_run_shrinking_included(capsys):
    # KVM before f9eb4af6 against the SDM: a dozen classes, each given up to 5 s of hypothesis:
    # shrinking alone would take a minute. --time 3 must end the whole run near 3 s. (Imports are
    # warmed first: Python loading its modules is not part of the run.)
    import hypothesis  # noqa: F401

    import vmxaddr.fuzz.runner  # noqa: F401

    t0 = time.monotonic()
    code, out, _ = _run(capsys, "--model", "kvm-064aea77", "--time", "3", "--hypothesis-seconds", "5", "--quiet",
                        "--json")
    took = time.monotonic() - t0
    obj = json.loads(out)
    assert code == 0 and len(obj["classes"]) >= 3
    # (generous slack for a loaded CI machine; without the bound the run took 20 s and more)
    assert took < 3 + 8.0 and obj["seconds"] < 3 + 2.0, f"--time 3 took {took:.1f} s ({obj['seconds']} s by its own clock)"
    # every class still has a witness: shrunk, or its first one marked as such
    assert all("witness" in c and c["shrunk_by"] for c in obj["classes"])


@pytest.mark.parametrize("argv,message", [
    (["--time", "nan"], "--time must be a positive number"),
    (["--time", "inf"], "--time must be a positive number"),
    (["--time", "-1"], "--time must be a positive number"),
    (["--time", "0"], "--time must be a positive number"),
    (["--hypothesis-examples", "-1"], "--hypothesis-examples must be 0 or more"),
    (["--hypothesis-seconds", "-1"], "--hypothesis-seconds must be 0 or a positive number"),
    (["--hypothesis-seconds", "nan"], "--hypothesis-seconds must be 0 or a positive number"),
    (["--hypothesis-seconds", "inf"], "--hypothesis-seconds must be 0 or a positive number"),
    (["--jobs", "-3"], "--jobs must be 0"),
])
def test_bad_numbers_are_refused(capsys, argv, message):
    code, out, err = _run(capsys, "--model", "kvm-f9eb4af6", *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_python_m_vmxaddr_cli_gives_the_one_line_error_too():
    # The way the README's contributors run the CLI from a checkout: a usage error is one line, exit 2
    # (it was a traceback with exit 1: the module run as __main__ had its own UsageError class).
    p = subprocess.run([sys.executable, "-m", "vmxaddr.cli", "fuzz", "--model", "kvm-f9eb4af6", "--time", "nan"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == "vmxaddr fuzz: error: --time must be a positive number of seconds, not nan"


# -- --out ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["dir", "missing-parent", "fifo"])
def test_bad_out_is_refused_before_the_run(capsys, tmp_path, where):
    path = {"dir": tmp_path, "missing-parent": tmp_path / "no" / "such" / "w.json", "fifo": tmp_path / "fifo"}[where]
    if where == "fifo":  # a FIFO nobody reads: refused, not a hang
        os.mkfifo(path)
    CALLS[0] = 0
    code, out, err = _run(capsys, "--model", "test_fuzz_cli:counting", "--max-examples", "3000", "--out", str(path))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and str(path) in err
    assert CALLS[0] == 0, "the model ran before --out was checked"
    assert not (tmp_path / "no").exists()


def test_out_check_leaves_no_file_behind(capsys, tmp_path):
    # The check opens the file; when the run then cannot start (here: no scheduler at --dask's
    # address), no empty file is left behind.
    path = tmp_path / "w.json"
    code, out, err = _run(capsys, "--model", "kvm-f9eb4af6", "--out", str(path), "--dask", "not-an-address")
    assert code == 2 and "scheduler address" in err
    assert not path.exists()


def test_full_disk_at_the_end_keeps_the_report(capsys):
    # /dev/full accepts the open (the check before the run passes) and fails every write with ENOSPC.
    code, out, err = _run(capsys, "--model", "kvm-f9eb4af6", "--max-examples", "300", "--hypothesis-examples", "0",
                          "--quiet", "--json", "--out", "/dev/full")
    assert code == 1
    obj = json.loads(out)  # the report, whole
    assert obj["classes"] and all("witness" in c for c in obj["classes"])
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err


# -- ^C --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("as_json", [False, True])
def test_interrupt_prints_the_classes_found_so_far(capsys, tmp_path, as_json):
    INTERRUPT_AFTER[0] = 0
    out_file = tmp_path / "w.json"
    code, out, _ = _run(capsys, "--model", "test_fuzz_cli:interrupted_after_2000", "--max-examples", "100000",
                        "--quiet", "--out", str(out_file), *(["--json"] if as_json else []))
    assert code == 130
    if as_json:
        obj = json.loads(out)
        assert obj["interrupted"] is True and 1990 <= obj["cases"] < 2000
        assert obj["classes"] and all(c["shrunk_by"] == "not shrunk: interrupted" for c in obj["classes"])
        assert "displacement not sign-extended" in {c["name"] for c in obj["classes"]}
    else:
        assert "INTERRUPTED" in out and "displacement not sign-extended" in out
    corpus = json.loads(out_file.read_text())
    assert corpus["cases"] and "INTERRUPTED" in corpus["about"]


def test_sigint_during_a_parallel_run_keeps_the_classes(tmp_path):
    # A real ^C (SIGINT to the process) in the middle of a --jobs 2 run.
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from vmxaddr.cli import main; sys.exit(main(sys.argv[1:]))",
                             "fuzz", "--model", "kvm-f9eb4af6", "--time", "120", "--jobs", "2", "--quiet", "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # once its two workers exist (the run has started: imports take seconds on a loaded machine)
    deadline = time.monotonic() + 60
    children: list[str] = []
    while len(children) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = f.read().split()
        except OSError:
            pass
    time.sleep(3.0)  # into the first blocks, even on a loaded machine
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    obj = json.loads(out)
    assert obj["interrupted"] is True and obj["cases"] > 0 and obj["classes"]


# -- a model that fails is a finding ---------------------------------------------------------------

def test_a_recursing_model_is_a_class_with_a_minimal_witness(capsys):
    code, out, _ = _run(capsys, "--model", "test_fuzz_cli:recursing_on_vmclear", "--max-examples", "3000",
                        "--hypothesis-examples", "0", "--quiet", "--json")
    assert code == 0
    classes = {c["name"]: c for c in json.loads(out)["classes"]}
    # the model's other findings are all still there
    assert "displacement not sign-extended" in classes
    c = classes["model under test raised RecursionError"]
    w = c["witness"]
    # Minimal: VMCLEAR (66 0F C7 /6) with the simplest memory operand and the default state.
    assert w["answers"]["test_fuzz_cli:recursing_on_vmclear"]["raised"].startswith("RecursionError")
    assert w["bytes"].startswith("66 0f c7") and w["state"] == {}, w


def test_models_that_raise_or_answer_wrong_types_are_classes(capsys):
    code, out, _ = _run(capsys, "--model", "test_fuzz_cli:failing_by_instruction", "--max-examples", "3000",
                        "--hypothesis-examples", "0", "--quiet", "--json")
    assert code == 0
    names = {c["name"] for c in json.loads(out)["classes"]}
    assert {"model under test raised MemoryError", "model under test raised SystemExit",
            "model under test returned NoneType, not a Result", "model under test returned str, not a Result",
            "model under test returned a Result whose linear_address is str, not an int"} <= names, names


def test_a_failing_reference_is_named_as_such(capsys):
    code, out, _ = _run(capsys, "--model", "sdm", "--against", "test_fuzz_cli:failing_by_instruction",
                        "--max-examples", "2000", "--hypothesis-examples", "0", "--quiet", "--json")
    assert code == 0
    names = {c["name"] for c in json.loads(out)["classes"]}
    assert "reference model raised MemoryError" in names and "reference model raised SystemExit" in names


def test_a_model_module_that_fails_on_import_is_one_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "broken_port.py").write_text("raise SystemExit('oops')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = _run(capsys, "--model", "broken_port:f", "--max-examples", "10")
    assert code == 2 and out == "" and "cannot load model 'broken_port:f'" in err and len(err.strip().splitlines()) == 1


def test_result_type_is_checked():
    from vmxaddr.fuzz.failures import answer_problem
    from vmxaddr.models.base import OK, Outcome

    ok = Result(Outcome(OK, None, None, "r"), 1, 2, "ds", 0, 0)
    assert answer_problem(ok) is None
    assert answer_problem(ok._replace(effective_address=True)) == \
        "returned a Result whose effective_address is bool, not an int"
    assert answer_problem(ok._replace(segment=3)) == "returned a Result whose segment is int, not a str"
    assert answer_problem({"outcome": "ok"}) == "returned dict, not a Result"
