"""Hostile inputs of issue 21 §3: each is one clear line (exit 2 for a usage or environment
error), never a traceback, and nothing is lost or silently ignored."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

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


def _adapter(tmp_path: Path) -> Path:
    src = tmp_path / "flat.c"
    src.write_text('#include "vmxaddr.h"\n'
                   'int flat(const struct vmxaddr_exit *e, const struct vmxaddr_state *s,\n'
                   '         const struct vmxaddr_access *a, struct vmxaddr_result *o)\n'
                   '{\n\to->status = VMXADDR_OK;\n\to->linear_address = 0;\n'
                   '\to->valid = VMXADDR_HAVE_LINEAR_ADDRESS;\n\treturn 0;\n}\n')
    return src


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *a: object, **kw: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)


@pytest.mark.parametrize("kind", ["file", "under-a-file", "read-only"])
def test_unusable_cache_in_sources_fetch_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], kind: str) -> None:
    cache = tmp_path / "cache"
    if kind == "read-only":
        _read_only(monkeypatch)
    else:
        (tmp_path / "cache").write_text("not a directory\n")
        cache = cache / "sub" if kind == "under-a-file" else cache
    monkeypatch.setenv("VMXADDR_CACHE", str(cache))
    _one_line_error(capsys, ["sources", "fetch", "--quiet", "linux-6.1"], "VMXADDR_CACHE", str(cache))


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unusable_cache_in_a_c_build_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], kind: str) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")  # fails under CI (tests/ci_policy.py)
    src = _adapter(tmp_path)
    cache = tmp_path / "cache"
    if kind == "read-only":
        _read_only(monkeypatch)
    else:
        cache.write_text("not a directory\n")
    monkeypatch.setenv("VMXADDR_CACHE", str(cache))
    _one_line_error(capsys, ["diff", "--models", f"c:{src}:flat,sdm", "--mode", "32", "0fc77508"],
                    "VMXADDR_CACHE", str(cache))


@pytest.mark.parametrize("argv", [["sources", "fetch", "--force", "{name}"], ["sources", "fetch", "--json", "{name}"],
                                  ["sources", "--force", "--json", "fetch", "{name}"],
                                  ["sources", "fetch", "{name}", "--force", "--json"]])
def test_sources_fetch_options_wherever_users_put_them(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    from vmxaddr.realcode import sources

    name = next(iter(sources.SOURCES))
    calls: list[tuple[str, bool]] = []

    def fetch(n: str, progress: object = None, force: bool = False) -> sources.Fetched:
        calls.append((n, force))
        return sources.Fetched(n, "pkg", "1", True, {}, {}, "/nowhere")

    monkeypatch.setattr(sources, "fetch", fetch)
    assert cli.main([a.replace("{name}", name) for a in argv]) == 0, capsys.readouterr().err
    assert calls == [(name, "--force" in argv)]
    if "--json" in argv:
        assert json.loads(capsys.readouterr().out)["fetched"][0]["name"] == name


CASE = ["--mode", "32", "0f7845d8"]  # VMREAD [EBP-0x28], EAX


@pytest.mark.parametrize("command", ["decode", "explain"])
def test_svg_empty_name_is_refused(capsys: pytest.CaptureFixture[str], command: str) -> None:
    _one_line_error(capsys, [command, *CASE, "--svg", ""], "--svg")


@pytest.mark.parametrize("command", ["decode", "explain"])
def test_svg_dash_is_the_picture_alone_and_refuses_json(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert cli.main([command, *CASE, "--svg", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<svg ") and out.rstrip().endswith("</svg>")  # the picture, no text around it
    _one_line_error(capsys, [command, *CASE, "--svg", "-", "--json"], "--svg -", "--json")


@pytest.mark.parametrize("command", ["decode", "explain"])
def test_svg_to_a_fifo_without_reader_does_not_block(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     command: str) -> None:
    import threading

    fifo = tmp_path / "pic"
    os.mkfifo(fifo)
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(cli.main([command, *CASE, "--svg", str(fifo)])),
                              daemon=True)
    worker.start()
    worker.join(30)
    if not result:  # unblock the thread before failing
        with open(fifo, "rb") as r:
            r.read()
        worker.join(5)
        pytest.fail("--svg FIFO blocked waiting for a reader")
    err = capsys.readouterr().err.strip().splitlines()
    assert result == [2] and len(err) == 1 and str(fifo) in err[0] and "no reader" in err[0], err


def test_svg_to_a_fifo_with_a_reader_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pic"
    os.mkfifo(fifo)
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader is there first (the picture fits the pipe)
    try:
        assert cli.main(["decode", *CASE, "--svg", str(fifo)]) == 0
        got = os.read(r, 1 << 20)
    finally:
        os.close(r)
    assert got.startswith(b"<svg ") and got.rstrip().endswith(b"</svg>")
