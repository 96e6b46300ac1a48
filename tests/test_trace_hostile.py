"""check-trace, trace import and trace synth on hostile or broken input (issue 13, item 6; the
trace parts of item 4): one line and a clear exit status for each, nothing lost before the fault.

Each test names the failure it guards against, as it was before the fix.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmxaddr import cli
from vmxaddr.exitinfo import ExitInfo
from vmxaddr.models import REGISTRY, get, register
from vmxaddr.models.base import Access, Result
from vmxaddr.state import CpuState
from vmxaddr.trace import Checker, checker, jsonline, reader
from vmxaddr.trace.synth import covered, synth

DATA = Path(__file__).parent / "data" / "traces"
GOOD = (DATA / "good.jsonl").read_bytes()  # 7 exit records, all right (test_trace.py derives them)


def _json_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]], str]:
    status = cli.main(argv)
    cap = capsys.readouterr()
    return status, [json.loads(ln) for ln in cap.out.splitlines()], cap.err


# -- nesting ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["top", "source", "state", "result"])
def test_deep_nesting_is_one_malformed_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    # Before: json.loads raised RecursionError out of the checker and every later record was lost.
    deep = "[" * 1500 + "]" * 1500
    line = {"top": deep,
            "source": '{"instruction": "vmread", "source": ' + deep + "}",
            "state": '{"instruction": "vmread", "state": {"registers": ' + deep + "}}",
            "result": '{"instruction": "vmread", "result": {"kind": ' + deep + "}}"}[where]
    path = tmp_path / "t.jsonl"
    path.write_bytes(line.encode() + b"\n" + GOOD)
    status, objs, _ = _json_run(["check-trace", "-q", "--json", str(path)], capsys)
    assert status == 1
    assert objs[0] == {"type": "malformed", "line": 1, "reason": "not JSON (nested too deeply)"}
    assert objs[-1]["exit_records"] == 7 and objs[-1]["malformed_lines"] == 1


# -- broken compression -----------------------------------------------------------------------------

def _compressed_trace() -> bytes:
    """4000 exits as the SDM answers them (no wrong record), varied enough that every part of
    the compressed stream carries records."""
    return "".join(jsonline.dumps(r) + "\n" for r in synth(get("sdm"), 4000, 8)).encode()


def _zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["gz-truncated", "zst-truncated", "gz-corrupt", "zst-corrupt"])
def test_broken_compressed_stream_is_a_decompression_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            kind: str) -> None:
    # Before: a truncated .zst passed for a "truncated final line" (exit 1 with no word of the
    # compression), a truncated or corrupt .gz raised EOFError/BadGzipFile as a traceback and
    # lost the summary.
    data = _compressed_trace()
    packed = gzip.compress(data) if kind.startswith("gz") else _zst(data)
    if kind.endswith("truncated"):
        packed = packed[: len(packed) * 2 // 3]
    else:
        mid = len(packed) * 2 // 3
        packed = packed[:mid] + bytes(b ^ 0x5A for b in packed[mid:mid + 64]) + packed[mid + 64:]
    path = tmp_path / ("t.jsonl." + kind[:kind.index("-")])
    path.write_bytes(packed)
    status, objs, err = _json_run(["check-trace", "-q", "--json", str(path)], capsys)
    summary = objs[-1]
    assert status == 1 and summary["type"] == "summary"
    assert summary["input_error"].startswith(f"{path}: decompression failed after line ")
    assert "compressed bytes read" in summary["input_error"]
    # every record before the break was checked and counted, up to the line the break cut
    verdicts = [o for o in objs[:-1] if o["type"] == "verdict"]
    assert summary["exit_records"] == len(verdicts) > 1000
    if kind.endswith("truncated"):  # (corrupt deflate data may decode to garbage lines before zlib sees it)
        assert summary["lines"] - verdicts[-1]["line"] <= 1
    assert f"after line {summary['lines']}," in summary["input_error"]
    assert summary["wrong_records"] == 0 and summary["truncated_final_line"] is None
    assert err.count("\n") == 1 and str(path) in err and "decompression failed" in err


def test_no_newline_in_256_mb_ends_the_reading(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: /dev/zero was read for ever (an over-long line is skipped up to its newline).
    monkeypatch.setattr(reader, "MAX_SKIP", 4 << 20)
    status = cli.main(["check-trace", "-q", "/dev/zero"])
    cap = capsys.readouterr()
    assert status == 1
    assert "input broke off: /dev/zero: after line 0: no newline in 4 MB" in cap.out
    assert cap.err.count("\n") == 1


# -- state records ----------------------------------------------------------------------------------

def test_state_records_are_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: segment fields of state records were not range-checked; a state with a 4000-digit
    # base was kept (1,500 of them with million-digit bases took 874 MB).
    lines = [{"type": "state", "id": "a", "state": {"segments": {"ss": {"limit": "0x1ffffffff"}}}},
             {"type": "state", "id": "b", "state": {"segments": {"ds": {"base": int("9" * 4000)}}}},
             {"type": "state", "id": "c", "state": {"cr4": {"la57": 2}}},
             {"state_ref": "a", "instruction": "vmread", "instruction_info": "0x02c10080",
              "exit_qualification": "0xffffffd8", "result": {"kind": "ok"}}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    status, objs, _ = _json_run(["check-trace", "-q", "--json", str(path)], capsys)
    assert status == 1
    reasons = [o["reason"] for o in objs if o["type"] == "malformed"]
    assert len(reasons) == 3
    assert "ss.limit" in reasons[0] and "0xffffffff" in reasons[0]
    assert "ds.base" in reasons[1] or "Exceeds the limit" in reasons[1]
    assert "la57" in reasons[2]
    assert objs[3]["hypervisor"]["verdict"] == "not-checkable"  # "a" was never defined
    assert objs[-1]["state_records"] == 0


# -- a reference model that cannot answer ------------------------------------------------------------

def _raises(exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    raise ZeroDivisionError("no answer")


@pytest.fixture
def raising_model() -> Iterator[str]:
    saved = dict(REGISTRY)
    register("test-raises", _raises, "raises on every case")
    try:
        yield "test-raises"
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)


def test_reference_model_that_raises_is_not_success(capsys: pytest.CaptureFixture[str], raising_model: str) -> None:
    # Before: every verdict became "not checkable" and the exit status was 0. (good.jsonl: 6 of
    # its 7 exit records have what the model needs; the 7th has no state.)
    status = cli.main(["check-trace", "-q", "--against", raising_model, str(DATA / "good.jsonl")])
    out = capsys.readouterr().out
    assert status == 1
    assert "the reference model test-raises failed on 6 records (it raised, crashed or hung), which are not checked " \
           "(first: line 2: an answer from test-raises (ZeroDivisionError: no answer))" in out  # line 1: a state
    status, objs, _ = _json_run(["check-trace", "-q", "--json", "--against", raising_model, str(DATA / "good.jsonl")],
                                capsys)
    assert status == 1 and objs[-1]["reference_errors"] == 6 and objs[-1]["exit_status"] == 1


# -- ^C ---------------------------------------------------------------------------------------------

def test_interrupted_json_prints_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: ^C ended `check-trace --json` without a summary.
    path = tmp_path / "t.jsonl"
    path.write_bytes(GOOD + b"".join(GOOD.splitlines(True)[1:]) * 40000)  # more than one block
    feed = Checker.feed_batch
    calls = 0

    def interrupted(self: Checker, *a: Any, **kw: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return feed(self, *a, **kw)

    monkeypatch.setattr(Checker, "feed_batch", interrupted)
    status, objs, err = _json_run(["check-trace", "-q", "--json", str(path)], capsys)
    summary = objs[-1]
    assert status == 130 and summary["type"] == "summary" and summary["interrupted"] is True
    assert summary["exit_records"] == len(objs) - 1 > 1000  # what was checked before ^C, counted
    assert "interrupted" in err


# -- trace import ------------------------------------------------------------------------------------

LINE = "  qemu-1234  [001] .... 100.000001: kvm_exit: vcpu {vcpu} reason VMREAD rip 0x{rip} info1 0x{info1} " \
       "info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000\n"


def _import(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, Any]], str]:
    return _json_run(["trace", "import", "--from", "ftrace", str(path)], capsys)


def test_import_validates_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: a 4301-digit vcpu raised ValueError and stopped the import; a 200-digit rip or
    # info1 was imported, and check-trace rejected it later.
    good = LINE.format(vcpu=1, rip="401000", info1="ffffffffffffffd8")
    lines = [good, LINE.format(vcpu="7" * 4301, rip="401000", info1="0"), good,
             LINE.format(vcpu=2, rip="f" * 200, info1="0"), LINE.format(vcpu=2, rip="1", info1="1" * 200),
             LINE.format(vcpu=4294967296, rip="1", info1="0"), LINE.format(vcpu=4294967295, rip="0" * 30 + "1", info1="0")]
    path = tmp_path / "log.txt"
    path.write_text("".join(lines))
    status, recs, err = _import(path, capsys)
    assert status == 1
    assert [r["source"]["line"] for r in recs] == [1, 3, 7]
    assert recs[2]["vcpu"] == 4294967295 and recs[2]["rip"] == "0x1"
    problems = [ln for ln in err.splitlines() if ln.startswith("line ")]
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 4", "line 5", "line 6"]
    assert "4301 digits" in problems[0] and "200 hex digits" in problems[1] and "info1" in problems[2]
    assert all(len(p) < 200 for p in problems)


def test_import_caps_line_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: no cap (a 500 MB line took 1 GB).
    good = LINE.format(vcpu=1, rip="401000", info1="0")
    path = tmp_path / "log.txt"
    path.write_text(good + "x" * (3 << 20) + "\n" + good)
    status, recs, err = _import(path, capsys)
    assert status == 1 and [r["source"]["line"] for r in recs] == [1, 3]
    assert "line 2: longer than 1048576 bytes: skipped" in err


def test_import_dev_zero_is_bounded(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: /dev/zero was read past 4 GB.
    monkeypatch.setattr(reader, "MAX_SKIP", 4 << 20)
    status, recs, err = _json_run(["trace", "import", "--from", "ftrace", "/dev/zero"], capsys)
    assert status == 1 and recs == []
    assert "error: /dev/zero: after 0 exits: no newline in 4 MB" in err


def test_fifo_without_a_writer_does_not_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: opening a FIFO nobody writes to blocked for ever.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.extend([cli.main(["trace", "import", "--from", "ftrace", str(fifo)]),
                                                       cli.main(["check-trace", "-q", str(fifo)])]), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "blocked on the FIFO"
    assert result == [0, 0]
    assert "checked 0 exit records" in capsys.readouterr().out


# -- synth covers what the model covers ------------------------------------------------------------

def test_synth_uses_only_what_the_model_handles() -> None:
    # Before: synth --model kvm-... wrote RDRAND, LGDT, ... records, which KVM's models do not
    # handle (vmxaddr.models.kvm: MNEMONICS), and check-trace called half of them wrong.
    model = get("kvm-current")
    allowed = set(model.mnemonics)  # type: ignore[attr-defined]
    assert allowed and allowed < set(covered(get("sdm")))
    for shape in ("random", "realistic"):
        names = {r["instruction"] for r in synth(model, 400, 3, shape) if r["type"] == "exit"}
        assert names <= allowed and len(names) > 3


def test_synth_from_a_model_checks_clean_against_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    assert cli.main(["trace", "synth", "-q", "--model", "kvm-current", "-n", "2000", "--out", str(out)]) == 0
    assert cli.main(["check-trace", "-q", "--against", "kvm-current", str(out)]) == 0
    assert " 0 wrong" in capsys.readouterr().out.splitlines()[0]


def test_synth_wrong_fraction_is_what_the_checker_finds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    assert cli.main(["trace", "synth", "-q", "--model", "sdm", "--shape", "realistic", "--wrong", "0.1", "-n", "3000",
                     "--seed", "4", "--out", str(out)]) == 0
    status, objs, _ = _json_run(["check-trace", "-q", "--json", str(out)], capsys)
    wrong = objs[-1]["wrong_records"]
    assert status == 1 and 200 < wrong < 400  # 10% of 3000, give or take the binomial spread


# -- the memos never change an answer ---------------------------------------------------------------

def test_a_repeated_line_under_a_redefined_state_is_checked_again() -> None:
    exit_line = json.dumps({"state_ref": "s", "instruction": "vmread", "instruction_info": "0x02c10080",
                            "exit_qualification": "0xffffffd8", "result": {"kind": "ok", "linear_address": "0x1000"}})
    # [ebp-0x28] with DS/SS flat: rbp 0x1028 gives 0x1000 (right), rbp 0x2028 gives 0x2000 (wrong)
    lines = [json.dumps({"type": "state", "id": "s", "state": {"registers": {"rbp": "0x1028"}}}), exit_line,
             json.dumps({"type": "state", "id": "s", "state": {"registers": {"rbp": "0x2028"}}}), exit_line,
             json.dumps({"type": "state", "id": "s", "state": {"registers": {"rbp": "0x1028"}}}), exit_line]
    c = Checker()
    verdicts = [c.feed(n, ln.encode()) for n, ln in enumerate(lines, 1)]
    assert [v["hypervisor"]["verdict"] for v in verdicts if v] == ["correct", "wrong", "correct"]


def test_a_repeated_line_under_a_redefined_state_is_checked_again_through_check_stream() -> None:
    # The command line reads through check_stream, which feeds whole batches (Checker.feed_batch):
    # the same memo check as Checker.feed must hold there. One exit line, three times, under a
    # state "s" redefined between them: rbp 0x1028 makes [ebp-0x28] = 0x1000 (the recorded answer:
    # correct), rbp 0x2028 makes it 0x2000 (wrong), then 0x1028 again (correct). The state lines
    # differ in a second register too, so that no line repeats but the exit line.
    import io

    from vmxaddr.trace import check_stream

    exit_line = json.dumps({"state_ref": "s", "instruction": "vmread", "instruction_info": "0x02c10080",
                            "exit_qualification": "0xffffffd8", "result": {"kind": "ok", "linear_address": "0x1000"}})
    lines = []
    for i, rbp in enumerate(("0x1028", "0x2028", "0x1028", "0x2028")):
        lines += [json.dumps({"type": "state", "id": "s", "state": {"registers": {"rbp": rbp, "rax": hex(i)}}}),
                  exit_line, exit_line]
    verdicts: list[dict[str, Any]] = []
    summary = check_stream(io.BytesIO(("\n".join(lines) + "\n").encode()), Checker(), verdicts.append)
    assert [v["hypervisor"]["verdict"] for v in verdicts] == ["correct", "correct", "wrong", "wrong",
                                                              "correct", "correct", "wrong", "wrong"]
    assert [v["line"] for v in verdicts] == [2, 3, 5, 6, 8, 9, 11, 12]
    assert summary["wrong_records"] == 4


@pytest.mark.parametrize("value", ["true", "1.0", "\"1\"", "1"])
def test_equal_python_values_of_different_json_do_not_share_a_memo(value: str) -> None:
    # 1 == True == 1.0 in Python; in a record they mean different things (true and 1.0 are not integers)
    base = '{"instruction": "vmread", "instruction_info": "0x02c10080", "exit_qualification": "0xffffffd8", ' \
           '"state": {"registers": {"rbp": "0x1028"}}, "result": {"kind": "ok"}, "length": %s, "vcpu": %d}'
    c = Checker()
    first = c.feed(1, (base % ("1", 0)).encode())
    again = c.feed(2, (base % (value, 1)).encode())  # another line: the record memo, not the line memo
    assert first is not None and first["type"] == "verdict"
    assert again is not None and again["type"] == ("verdict" if value in ("1", "\"1\"") else "malformed")


def test_fast_json_output_is_the_standard_librarys() -> None:
    samples: list[Any] = [{"a": "…\x7f\n\x00é\U0001f600", "b": [1, None, True, 2**70, -5]}, {"reason": "x" * 100},
                          [{"k": "\u2028"}]]
    for line in GOOD.splitlines():
        c = Checker()
        samples.append(c.feed(1, line))
    for s in samples:
        assert jsonline.dumps(s) == json.dumps(s, separators=(",", ":"))
    assert checker.MEMO_LINES >= 1024
