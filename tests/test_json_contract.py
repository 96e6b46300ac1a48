"""The --json contract the README states, for every command the parser registers.

Every command takes --json. It prints either ONE JSON object (the whole of standard output), or,
for the commands whose output is a stream, JSON Lines: one object per line, the last one the
summary (`"type": "summary"`), no other line of that type. The test walks the parser, so a
command added without a contract here fails until its case is written down.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from vmxaddr.cli import build_parser, main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_util import AS, assemble  # noqa: E402

DATA = Path(__file__).parent / "data" / "traces"

OBJECT, LINES = "one object", "JSON Lines, summary last"

# command path -> (contract, arguments; {elf} is replaced by a small assembled object file)
CONTRACT: dict[tuple[str, ...], tuple[str, list[str]]] = {
    ("decode",): (OBJECT, ["--mode", "32", "0f7845d8"]),
    ("explain",): (OBJECT, ["--mode", "32", "--reg", "ebp=0x1000", "0f7845d8"]),
    ("models",): (OBJECT, []),
    ("diff",): (OBJECT, ["--models", "sdm,kvm-f9eb4af6", "--mode", "32", "--reg", "ebx=0xfffffff0", "0f c7 73 20"]),
    ("cross",): (OBJECT, ["--encoder", "vbox-iem", "--model", "sdm", "--mode", "32", "0f c7 34 b3"]),
    ("fuzz",): (OBJECT, ["--model", "kvm-f9eb4af6", "--max-examples", "200", "--hypothesis-examples", "0", "--quiet"]),
    ("crosscheck",): (OBJECT, ["--oracle", "iced", "-n", "50", "--quiet"]),
    ("scan",): (OBJECT, ["{elf}"]),
    ("sources",): (OBJECT, ["list"]),  # `sources fetch` downloads: see test_sources_fetch_json_is_one_object
    ("check-trace",): (LINES, [str(DATA / "good.jsonl"), "--quiet"]),
    ("trace", "synth"): (LINES, ["--model", "sdm", "-n", "20", "--quiet"]),
    ("trace", "import"): (LINES, ["--from", "ftrace", str(DATA / "kvm_exit.txt"), "--quiet"]),
    ("trace", "record"): (LINES, ["--bochs", "-n", "20", "--quiet"]),  # needs bochs (CI installs it)
    ("live",): (OBJECT, ["status"]),
    ("prove",): (OBJECT, ["--model", "kvm-703d794c", "--form", "vmread/protected32/a32/[base+index*4+disp32]/ds",
                          "--timeout", "120"]),  # build/save/run download and boot: tests/test_live.py
}


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable command path (subcommands of subcommands too)."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                below = leaf_commands(sub, (*prefix, name))
                out.update(below or {(*prefix, name): sub})
    return out


COMMANDS = leaf_commands(build_parser())


def test_every_registered_command_has_a_contract() -> None:
    unknown = sorted(" ".join(c) for c in set(COMMANDS) - set(CONTRACT))
    assert not unknown, f"commands without a --json contract in tests/test_json_contract.py: {unknown}"
    assert set(CONTRACT) <= set(COMMANDS), sorted(set(CONTRACT) - set(COMMANDS))


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p))
def test_command_takes_json(path: tuple[str, ...]) -> None:
    assert any("--json" in a.option_strings for a in COMMANDS[path]._actions), f"{' '.join(path)} has no --json"


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if AS is None:  # fails under CI=true (tests/ci_policy.py)
        pytest.skip("needs GNU as")
    return assemble(tmp_path_factory.mktemp("json"), "x", "f:\n vmptrld (%rax)\n vmread %rax, %rbx\n ret\n")


@pytest.mark.parametrize("path", sorted(CONTRACT), ids=lambda p: " ".join(p))
def test_json_output_keeps_the_contract(path: tuple[str, ...], elf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kind, args = CONTRACT[path]
    argv = [*path, *[a.replace("{elf}", str(elf)) for a in args], "--json"]
    code = main(argv)
    out = capsys.readouterr().out
    assert code in (0, 1), (argv, code)
    if kind == OBJECT:
        obj = json.loads(out)  # the whole output is one JSON value …
        assert isinstance(obj, dict), f"{' '.join(path)} --json printed a {type(obj).__name__}, not an object"
    else:
        lines = out.splitlines()
        objs = [json.loads(line) for line in lines]  # … or one JSON object per line
        assert objs and all(isinstance(o, dict) for o in objs)
        assert objs[-1].get("type") == "summary", f"{' '.join(path)} --json: the last line is not the summary"
        assert [o.get("type") for o in objs[:-1]].count("summary") == 0


def test_readme_states_the_contract() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "`--json`" in readme and "JSON Lines" in readme and '"type": "summary"' in readme
    for path, (kind, _) in CONTRACT.items():
        if kind == LINES:
            assert f"`vmxaddr {' '.join(path)}`" in readme.split("## JSON output", 1)[1].split("\n## ", 1)[0], path


def test_sources_fetch_json_is_one_object(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from vmxaddr.realcode import sources

    name = next(iter(sources.SOURCES))

    class Fetched:
        package, version, pinned, root, downloads, seconds = "pkg", "1", True, "/tmp", {}, {}

        def to_json(self) -> dict[str, str]:
            return {"name": name, "package": "pkg"}

    monkeypatch.setattr(sources, "fetch", lambda *a, **k: Fetched())
    assert main(["sources", "fetch", name, "--quiet", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert isinstance(obj, dict) and obj["fetched"] == [{"name": name, "package": "pkg"}]


def _json_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    main([*argv, "--json"])
    return json.loads(capsys.readouterr().out)


def test_json_objects_say_what_was_asked(capsys: pytest.CaptureFixture[str]) -> None:
    # The contract test above checks the shape; these check the content, each value worked by hand.
    # VMREAD [EBP-0x28], EAX in 32-bit code (0f 78 45 d8): SDM Vol. 3C §28.2.5 instruction
    # information = address size 32 (1 << 7) | segment SS (2 << 15) | index invalid (1 << 22) |
    # base EBP (5 << 23) = 0x02c10080; the exit qualification is the displacement -0x28, in 32 bits
    # 0xffffffd8 (zero-extended above: the default policy). EBP = 0: EA = 0xffffffd8 (32-bit wrap),
    # SS flat: linear the same.
    d = _json_of(["decode", "--mode", "32", "0f7845d8"], capsys)
    assert (d["mnemonic"], d["exit_reason"], d["instruction_info"], d["exit_qualification"]) == \
        ("vmread", 23, 0x02C10080, 0xFFFFFFD8)
    assert (d["effective_address"], d["linear_address"], d["segment"]) == (0xFFFFFFD8, 0xFFFFFFD8, "ss")
    # explain with EBP = 0x1000: EA = 0x1000 - 0x28 = 0xfd8.
    e = _json_of(["explain", "--mode", "32", "--reg", "ebp=0x1000", "0f7845d8"], capsys)
    assert (e["effective_address"], e["linear_address"], e["segment"]) == (0xFD8, 0xFD8, "ss")
    # VMPTRLD [EBX+0x20] (0f c7 73 20: ModRM 73 = mod 01, /6, rm EBX; disp8 0x20), EBX = 0xfffffff0:
    # the SDM wraps the sum at the 32-bit address size to 0x10; KVM f9eb4af6 (2015) does not mask
    # it (0x100000010): they first differ in the effective address.
    f = _json_of(["diff", "--models", "sdm,kvm-f9eb4af6", "--mode", "32", "--reg", "ebx=0xfffffff0", "0f c7 73 20"],
                 capsys)
    assert f["results"]["sdm"]["effective_address"] == 0x10
    assert f["results"]["kvm-f9eb4af6"]["effective_address"] == 0x1_0000_0010
    assert (f["agree"], f["first_difference"]) == (False, "effective-address")
    # counts asked for are the counts done
    assert _json_of(["fuzz", "--model", "kvm-f9eb4af6", "--max-examples", "200", "--hypothesis-examples", "0",
                     "--quiet"], capsys)["cases"] == 200
    c = _json_of(["crosscheck", "--oracle", "iced", "-n", "50", "--quiet"], capsys)
    assert (c["cases"], c["unexplained_cases"]) == (50, 0)  # iced agrees but for documented departures
    from vmxaddr.realcode import sources

    s = _json_of(["sources", "list"], capsys)
    assert s["cache"] == str(sources.cache_dir())
    assert {x["name"] for x in s["sources"]} == {"linux-6.1", "linux-6.12", "xen-4.17"}
    m = _json_of(["models"], capsys)
    listed = {(x["name"], x["kind"]) for x in m["models"]}
    # sdm is both: the reference consumer and the encoder of what a processor reports
    assert {("sdm", "consumer"), ("sdm", "encoder"), ("kvm-f9eb4af6", "consumer"), ("vbox-iem", "encoder")} <= listed


def test_json_lines_count_what_they_say(capsys: pytest.CaptureFixture[str]) -> None:
    # trace synth -n 20 writes 20 exit records, and its summary says so.
    main(["trace", "synth", "--model", "sdm", "-n", "20", "--quiet", "--json"])
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sum(o.get("type") == "exit" for o in objs[:-1]) == objs[-1]["exit_records"] == 20
    assert sum(o.get("type") == "state" for o in objs[:-1]) == objs[-1]["state_records"]
    # check-trace of good.jsonl: one verdict per exit record of the file, counted here from the
    # file itself (a record without "type" is an exit record: docs/trace-format.md), none wrong.
    lines = [json.loads(x) for x in (DATA / "good.jsonl").read_text().splitlines() if x.strip()]
    exits = sum(o.get("type", "exit") == "exit" for o in lines)
    main(["check-trace", "--quiet", "--json", str(DATA / "good.jsonl")])
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(objs) - 1 == objs[-1]["exit_records"] == exits
    assert objs[-1]["wrong_records"] == 0 and objs[-1]["lines"] == len((DATA / "good.jsonl").read_text().splitlines())
