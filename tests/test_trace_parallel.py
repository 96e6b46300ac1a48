"""check-trace in pieces (--jobs, --dask, several files): the output must be the one a single
process prints, byte for byte, verdict stream and summary (vmxaddr/trace/chunks.py).

The traces are made to exercise what splitting could get wrong: state records redefined between
pieces (an exit must see the definition in force at its line), a state defined on top of another
(state_ref in a state record), an exit line repeated byte for byte under different definitions
(the memo must not reuse the old answer), malformed lines, a truncated final line, lines numbered
across pieces, and several files with their own state tables.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from vmxaddr import cli, parallel
from vmxaddr.models import get
from vmxaddr.trace import chunks
from vmxaddr.trace.synth import synth

GOOD_VMREAD = {"instruction": "vmread", "instruction_info": "0x02c10080", "exit_qualification": "0xffffffd8",
               "bytes": "0f7845d8", "code_size": 32}


def _trace(seed: int, n: int, tail: bytes = b"") -> bytes:
    """A realistic trace with state redefinitions, chained states and junk spliced in."""
    rng = random.Random(seed)
    lines = [json.dumps(r, separators=(",", ":")) for r in synth(get("sdm"), n, seed, "realistic", 0.05)]
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        if i % 97 == 50:
            out.append("{not json")
        if i % 131 == 70:  # redefine a state id: later exits naming it see the new one
            out.append(json.dumps({"type": "state", "id": "32-0", "state": {"mode": "protected",
                                   "registers": {"rbp": hex(rng.getrandbits(32))}}}))
            out.append(json.dumps({"state_ref": "32-0", "result": {"kind": "ok", "linear_address": "0x1000"},
                                   **GOOD_VMREAD}))
        if i % 211 == 5:
            out.append(json.dumps({"type": "state", "id": f"c{i}", "state_ref": "32-0",
                                   "state": {"registers": {"rbp": "0x2000"}}}))
            out.append(json.dumps({"state_ref": f"c{i}", "result": {"kind": "ok", "linear_address": "0x1fd8"},
                                   **GOOD_VMREAD}))
    return ("\n".join(out) + "\n").encode() + tail


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = cli.main(argv)
    return status, capsys.readouterr().out


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 40_000)  # many pieces from a small file


@pytest.mark.parametrize("mode", [[], ["--json"], ["--json", "--fingerprint", "all"]])
def test_jobs_output_is_byte_for_byte_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   small_chunks: None, mode: list[str]) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(_trace(3, 3000, tail=b'{"instruction": "vmread", "exit_qual'))  # cut off
    assert len(chunks.plan([str(path)], True)) > 10
    one = _run(["check-trace", "-q", *mode, str(path)], capsys)
    two = _run(["check-trace", "-q", "--jobs", "2", *mode, str(path)], capsys)
    assert one == two
    status, out = one
    assert status == 1
    text = out.splitlines()
    if mode:
        summary = json.loads(text[-1])
        assert summary["truncated_final_line"] == summary["lines"] and summary["malformed_lines"] > 20
        verdicts = [json.loads(t) for t in text[:-1]]
        # every exit line has its verdict, in order, numbered as in the file
        assert [v["line"] for v in verdicts] == sorted(v["line"] for v in verdicts)
        assert len(verdicts) == summary["exit_records"] + summary["malformed_lines"] + 1
        # the exits after each redefinition of 32-0 answered by the new state: rbp changed, so
        # the address 0x1000 recorded is wrong unless rbp - 0x28 happened to be 0x1000
        assert summary["wrong_records"] > 0


def test_jobs_many_files_and_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         small_chunks: None) -> None:
    d = tmp_path / "traces"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.jsonl").write_bytes(_trace(10 + i, 800))
    import gzip

    (d / "3.jsonl.gz").write_bytes(gzip.compress(_trace(20, 300)))
    (d / ".hidden").write_text("not a trace\n")
    one = _run(["check-trace", "-q", "--json", str(d)], capsys)
    two = _run(["check-trace", "-q", "--json", "--jobs", "2", str(d)], capsys)
    assert one == two
    objs = [json.loads(t) for t in one[1].splitlines()]
    summary = objs[-1]
    assert [f["file"] for f in summary["files"]] == [str(d / n) for n in ("0.jsonl", "1.jsonl", "2.jsonl", "3.jsonl.gz")]
    assert summary["lines"] == sum(f["lines"] for f in summary["files"])
    assert {o["file"] for o in objs[:-1]} == {f["file"] for f in summary["files"]}
    text_one = _run(["check-trace", "-q", str(d)], capsys)
    text_two = _run(["check-trace", "-q", "--jobs", "2", str(d)], capsys)
    assert text_one == text_two and text_one[1].startswith(str(d / "0.jsonl") + ": line ")


def test_more_states_than_the_table_holds_is_indexed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     small_chunks: None) -> None:
    # 60 ids with --max-states 16: eviction depends on every use, so the pieces after the first
    # start from a replay of the table operations before them (schedule.py, the index way)
    lines = []
    for i in range(60):
        lines.append({"type": "state", "id": i, "state": {"registers": {"rbp": hex(0x1028 + i)}}})
        for j in range(0, i + 1, 7):
            lines.append({"state_ref": j, "result": {"kind": "ok", "linear_address": hex(0x1000 + j)}, **GOOD_VMREAD})
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) * 20)
    one = _run(["check-trace", "--max-states", "16", "--json", str(path)], capsys)
    status = cli.main(["check-trace", "--max-states", "16", "--json", "--jobs", "2", str(path)])
    cap = capsys.readouterr()
    assert (status, cap.out) == one
    assert "indexed first" in cap.err
    assert json.loads(one[1].splitlines()[-1])["states_evicted"] > 0


def test_dask_local_cluster_gives_the_local_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    small_chunks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")  # in the test extra; CI=true has it
    # Robust under load: a scheduler on a busy 2-core machine may take longer than the CLI's 10 s
    # to answer (that limit is for a user's typo, not for this test). The workers import
    # vmxaddr.models afresh: they list the real-code models the parent lists, in the same order,
    # even after another test fetched one (test_registry_follows_cache checks that directly).
    monkeypatch.setattr(parallel, "DASK_TIMEOUT", 300.0)
    path = tmp_path / "t.jsonl"
    path.write_bytes(_trace(5, 1500))
    (tmp_path / "u.jsonl").write_bytes(_trace(6, 200))
    local = _run(["check-trace", "-q", "--json", str(path), str(tmp_path / "u.jsonl")], capsys)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        # the workers are separate processes: they get CHUNK_BYTES through the pieces the parent plans
        remote = _run(["check-trace", "-q", "--json", "--dask", cluster.scheduler_address, str(path),
                       str(tmp_path / "u.jsonl")], capsys)
    assert remote == local
    assert len(json.loads(local[1].splitlines()[-1])["files"]) == 2


def test_jobs_refuses_nonsense(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("\n")
    assert cli.main(["check-trace", "--jobs", "-2", str(tmp_path / "t.jsonl")]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert cli.main(["check-trace", "--dask", "tcp://127.0.0.1:9", "-"]) == 2
    assert "standard input" in capsys.readouterr().err


def _piece_summary(out: str) -> dict[str, Any]:
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


_PARENT = os.getpid()


def _dying_check(chunk: Any, options: Any) -> Any:
    if os.getpid() != _PARENT:
        os._exit(3)  # a worker killed (the OOM killer, say)
    return chunks.check_chunk(chunk, options)


def test_a_worker_that_dies_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], small_chunks: None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from vmxaddr.trace import schedule

    path = tmp_path / "t.jsonl"
    path.write_bytes(_trace(4, 600))
    monkeypatch.setattr(schedule, "check_chunk", _dying_check)
    assert cli.main(["check-trace", "-q", "--jobs", "2", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a check-trace task failed on a worker: BrokenProcessPool" in err[0]
