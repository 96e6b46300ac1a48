"""Under CI=true a test that skips (a missing oracle, build or tool) fails the run; the long
campaigns behind --run-slow still skip. Checked on a throw-away test file in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

BODY = '''
import pytest

def test_needs_a_tool():
    pytest.skip("needs a tool that is not installed")

@pytest.mark.skipif(True, reason="needs another tool")
def test_marked():
    pass

@pytest.mark.slow
def test_campaign():
    pass

@pytest.mark.slow
def test_campaign_without_its_tool():
    pytest.skip("needs bochs")
'''


def _run(tmp_path: Path, ci: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_probe.py").write_text(BODY)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir",
                           str(tmp_path), str(tmp_path / "test_probe.py"), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_skips_fail_under_ci(tmp_path: Path) -> None:
    p = _run(tmp_path, "true")
    assert p.returncode == 1, p.stdout
    assert "1 failed" in p.stdout and "1 error" in p.stdout, p.stdout  # skip() in the test; skipif at setup
    assert "2 skipped" in p.stdout  # the slow campaigns, not run
    p = _run(tmp_path, "true", "--run-slow")
    assert p.returncode == 1 and "2 failed" in p.stdout and "1 passed" in p.stdout, p.stdout
    assert "CI=true: this test may not skip" in p.stdout and "needs a tool that is not installed" in p.stdout


def test_skips_skip_outside_ci(tmp_path: Path) -> None:
    p = _run(tmp_path, None)
    assert p.returncode == 0 and "4 skipped" in p.stdout, p.stdout
    p = _run(tmp_path, "false")
    assert p.returncode == 0 and "4 skipped" in p.stdout, p.stdout


def test_ci_runs_ruff_then_the_readme_test_command() -> None:
    root = TESTS.parent
    lines = [ln.strip() for ln in (root / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    readme = (root / "README.md").read_text()
    command = "pip install -e '.[test,oracles]' && pytest"
    assert f"```sh\n{command}\n```" in readme  # the README's test command
    assert lines[-1] == command  # .ci/run runs it verbatim, last
    lint = [i for i, ln in enumerate(lines) if ln.split("&&")[-1].strip() == "ruff check"]
    assert lint and lint[0] < len(lines) - 1
