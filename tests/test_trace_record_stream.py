"""`trace record --bochs` without Bochs (issue 21 §3): the cases are planned a boot at a time
(a billion cases must not be planned before the first runs), ^C keeps what was recorded and prints
the summary, and Bochs dying mid-run is one line saying what happened, exit 2 (1 means "found
something"). Bochs is replaced by a stand-in `boot` that reports a VMREAD exit (basic reason 23)
for every case; what is recorded is not the point here (tests/test_trace_record.py runs Bochs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from vmxaddr import cli, gen
from vmxaddr.models import get
from vmxaddr.oracles import bochs
from vmxaddr.trace import record_bochs


def _fake_boot(log: list[int], fail_at: int | None = None, error: BaseException | None = None) -> Any:
    def boot(cases: Sequence[bochs.Case], timeout: float = 300.0, keep_dir: Any = None) -> bochs.BochsRun:
        log.append(len(cases))
        if fail_at is not None and len(log) == fail_at:
            raise error if error is not None else KeyboardInterrupt
        recs: list[bochs.Record | None] = [bochs.Record(23, 0, 0, 0x1000, len(c.code), 0) for c in cases]
        return bochs.BochsRun(recs, [], "", 0.01, "", [0] * len(cases))

    return boot


def test_cases_are_planned_a_boot_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    boots: list[int] = []
    planned: list[int] = []
    real = gen.gen_encoding
    monkeypatch.setattr(gen, "gen_encoding", lambda *a, **k: planned.append(1) or real(*a, **k))
    seen_at_first_boot: list[int] = []

    def boot(cases: Sequence[bochs.Case], **kw: Any) -> bochs.BochsRun:
        seen_at_first_boot.append(len(planned))
        return _fake_boot(boots)(cases)

    monkeypatch.setattr(bochs, "boot", boot)
    it = record_bochs.record_bochs(get("sdm"), "sdm", 20_000, seed=1, batch=10)
    next(it)
    # 10 cases for the first boot (and a few encodings the decoder refused), not 20,000
    assert boots == [10] and seen_at_first_boot[0] < 40


def test_streaming_gives_the_trace_planning_first_gave(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same seed, same trace: the cases drawn a batch at a time are the cases drawn all at once.
    monkeypatch.setattr(bochs, "boot", _fake_boot([]))
    streamed = list(record_bochs.record_bochs(get("sdm"), "sdm", 25, seed=3, batch=7))
    monkeypatch.setattr(bochs, "boot", _fake_boot([]))
    whole = list(record_bochs.record_bochs(get("sdm"), "sdm", 25, seed=3, batch=25))
    assert [r.get("bytes") for r in streamed if r["type"] == "exit"] == [r.get("bytes") for r in whole
                                                                          if r["type"] == "exit"]
    assert sum(r["type"] == "exit" for r in streamed) == 25


def test_interrupt_keeps_what_was_recorded_and_prints_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bochs, "boot", _fake_boot([], fail_at=3))  # ^C during the third boot
    monkeypatch.setattr(bochs, "missing_tools", lambda: [])
    monkeypatch.setattr(record_bochs, "BATCH", 4)
    out = tmp_path / "t.jsonl"
    status = cli.main(["trace", "record", "--bochs", "-n", "1000", "--json", "--out", str(out)])
    cap = capsys.readouterr()
    assert status == 130
    exits = [json.loads(x) for x in out.read_text().splitlines() if json.loads(x)["type"] == "exit"]
    assert len(exits) == 8  # the two boots that finished
    summary = json.loads(cap.out.splitlines()[-1])
    assert summary["type"] == "summary" and summary["interrupted"] is True
    assert summary["exit_records"] == 8 and summary["cases"] == 8
    assert "interrupted" in cap.err and "recorded 8 exits" in cap.err


def test_synth_json_prints_its_summary_on_interrupt(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from vmxaddr.trace import commands

    real = commands.synth

    def synth(*a: Any, **k: Any) -> Any:
        for i, rec in enumerate(real(*a, **k)):
            if i == 50:
                raise KeyboardInterrupt
            yield rec

    monkeypatch.setattr(commands, "synth", synth)
    status = cli.main(["trace", "synth", "--model", "sdm", "-n", "1000", "--json", "-q"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 130
    summary = json.loads(lines[-1])
    assert summary["type"] == "summary" and summary["interrupted"] is True
    assert summary["exit_records"] + summary["state_records"] == len(lines) - 1 == 50


@pytest.mark.parametrize("said,expect", [("", "bochs exited with status 1 and printed nothing"),
                                         ("PANIC: cpu exploded\n", "PANIC: cpu exploded")])
def test_bochs_dying_mid_run_says_what_happened_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], said: str,
                                                       expect: str) -> None:
    err = bochs.BochsError(bochs.did_not_finish(said, b"", 1))
    monkeypatch.setattr(bochs, "boot", _fake_boot([], fail_at=2, error=err))
    monkeypatch.setattr(bochs, "missing_tools", lambda: [])
    monkeypatch.setattr(record_bochs, "BATCH", 4)
    out = tmp_path / "t.jsonl"
    status = cli.main(["trace", "record", "--bochs", "-n", "100", "-q", "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and expect in lines[0] and not lines[0].endswith("said:"), lines
    assert "4 cases recorded" in lines[0] or "recorded 4" in lines[0], lines  # what the file holds
    assert sum(json.loads(x)["type"] == "exit" for x in out.read_text().splitlines()) == 4


def test_did_not_finish_names_a_signal() -> None:
    assert "killed by SIGKILL" in bochs.did_not_finish("", b"", -9)
