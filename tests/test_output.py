"""Output robustness, handled once in vmxaddr.cli.main for every command (issue 13, item 6): a
full disk on stdout and a stdout encoding without the text's — and … give one line or readable
ASCII, never a traceback; `vmxaddr` and `vmxaddr trace` without a subcommand give one error line
naming the commands on stderr, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASE = ["--mode", "32", "--reg", "ebp=0x1000", "0f7845d8"]
COMMANDS = [
    ["explain", *CASE], ["explain", "--json", *CASE], ["decode", *CASE],
    ["diff", "--models", "sdm,xen-c447b730", *CASE], ["cross", "--model", "xen-c447b730", *CASE], ["models"],
    ["trace", "synth", "--model", "sdm", "-n", "50", "--seed", "1"],
    ["check-trace", "--quiet", "{trace}"], ["check-trace", "--quiet", "--json", "{trace}"],
]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 40-record trace as the sdm model handles it (for the check-trace rows)."""
    path = tmp_path_factory.mktemp("out") / "sample.jsonl"
    with open(path, "w") as f:
        subprocess.run([sys.executable, "-m", "vmxaddr.cli", "trace", "synth", "--model", "sdm", "-n", "40",
                        "--seed", "13"], stdout=f, stderr=subprocess.DEVNULL, check=True, timeout=120, cwd=ROOT)
    return str(path)


def vmxaddr(args: list[str], stdout: object = subprocess.PIPE, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmxaddr.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, **env})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_full_disk_on_stdout_is_one_line(args, trace):
    args = [a.replace("{trace}", trace) for a in args]
    with open("/dev/full", "w") as full:
        p = vmxaddr(args, stdout=full)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert lines[-1].endswith("error: cannot write the output: No space left on device"), p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_ascii_stdout_encoding(args, trace):
    # Under an ASCII stdout the output is the UTF-8 output with each character ASCII lacks
    # replaced by a readable stand-in, nothing else changed or lost: the stand-ins
    # docs/state-format.md names ("--" for an em dash, "..." for an ellipsis) exactly, any other
    # non-ASCII character by some non-empty ASCII text; every line kept, in order.
    import re

    args = [a.replace("{trace}", trace) for a in args]
    p = vmxaddr(args, PYTHONIOENCODING="ascii")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    p.stdout.encode("ascii")
    utf8 = vmxaddr(args, PYTHONIOENCODING="utf-8")
    assert utf8.returncode == 0, utf8.stderr
    documented = {"\u2014": "--", "\u2026": "..."}
    got, want = p.stdout.splitlines(), utf8.stdout.splitlines()
    assert len(got) == len(want)
    for ascii_line, line in zip(got, want, strict=True):
        pattern = "".join(re.escape(documented.get(c, c)) if c.isascii() or c in documented else "[ -~]+"
                          for c in line)
        assert re.fullmatch(pattern, ascii_line), (line, ascii_line)


def test_ascii_stand_ins_are_readable():
    """`explain` text uses — in its rule list; under ASCII it reads "--", not "\\u2014"."""
    p = vmxaddr(["explain", *CASE], PYTHONIOENCODING="ascii")
    assert " -- SDM Vol. 3C" in p.stdout and "\\u2014" not in p.stdout
    utf8 = vmxaddr(["explain", *CASE], PYTHONIOENCODING="utf-8")
    assert " — SDM Vol. 3C" in utf8.stdout


def test_model_error_under_ascii_stderr(tmp_path):
    (tmp_path / "g13uni.py").write_text("def f(exit, state, access):\n    raise ValueError('bad … value — here')\n")
    p = vmxaddr(["explain", "--model", "g13uni:f", *CASE], PYTHONIOENCODING="ascii",
                PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "raised ValueError: bad ... value -- here" in p.stderr


@pytest.mark.parametrize("args,prog,some", [([], "vmxaddr", ["decode", "check-trace", "trace"]),
                                            (["trace"], "vmxaddr trace", ["synth", "import", "record"])])
def test_no_subcommand_is_one_error_line_naming_the_commands(args, prog, some):
    p = vmxaddr(args)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr  # one line (issue 21 §3), not the usage and then the error
    assert lines[0].startswith(f"{prog}: error: give a command: ") and lines[0].endswith(f"(see {prog} --help)")
    for command in some:
        assert f" {command}," in lines[0] or f" {command} (" in lines[0], lines[0]
