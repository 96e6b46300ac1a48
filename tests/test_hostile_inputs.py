"""Hostile inputs of issue 21 §3: each is one clear line (exit 2 for a usage or environment
error), never a traceback, and nothing is lost or silently ignored."""

from __future__ import annotations

import pytest

from vmxaddr import cli


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    status = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("model", ["c:~nosuchuser/x.c:f", "kvm-tree:~nosuchuser/l"])
def test_tilde_of_an_unknown_user_is_one_line(capsys: pytest.CaptureFixture[str], model: str) -> None:
    _one_line_error(capsys, ["diff", "--models", f"{model},sdm", "0f7800"], "~nosuchuser", "no user")
