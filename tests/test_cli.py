"""The command line: the README's example, JSON keys, and one-line errors with status 2."""

import json
import subprocess
import sys

import pytest

from vmxaddr.cli import main


def run(*argv, capsys):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_readme_example_prints_steps(capsys):
    code, out, _ = run("explain", "--mode", "32", "--reg", "ebp=0x1000", "0f7845d8", capsys=capsys)
    assert code == 0
    assert "0x02c10080" in out and "EA = ebp 0x1000 + displacement -0x28 = 0xfd8" in out
    assert "Result: effective address 0xfd8, linear address 0xfd8, no fault" in out


def test_explain_json_keys(capsys):
    code, out, _ = run("explain", "--json", "--mode", "64", "--seg", "fs.base=0x100000000",
                       "--reg", "rax=0xfffffff0", "64 67 0f c7 30", capsys=capsys)
    obj = json.loads(out)
    for key in ("mnemonic", "length", "operand", "instruction_info", "exit_qualification",
                "effective_address", "linear_address", "outcome", "steps"):
        assert key in obj
    for key in ("segment", "base", "index", "scale", "displacement", "address_size", "rip_relative",
                "access_size", "access"):
        assert key in obj["operand"]
    assert obj["operand"]["segment"] == "fs" and obj["operand"]["address_size"] == 32
    assert obj["linear_address"] == 0x1FFFFFFF0  # 0x100000000 + 0xfffffff0, hand-derived
    assert obj["outcome"]["kind"] == "ok"


def test_decode_json(capsys):
    code, out, _ = run("decode", "--json", "--mode", "16", "66 0f c7 76 f0", capsys=capsys)
    obj = json.loads(out)
    assert obj["mnemonic"] == "vmclear" and obj["operand"]["segment"] == "ss"
    assert obj["operand"]["displacement"] == -0x10


def test_state_file(tmp_path, capsys):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"mode": "protected", "segments": {"ss": {"unusable": True}}}))
    code, out, _ = run("explain", "--json", "--mode", "32", "--state", str(p), "0fc77500", capsys=capsys)
    obj = json.loads(out)
    assert obj["outcome"]["vector"] == "SS"


@pytest.mark.parametrize("argv,needle", [
    (["explain", "--mode", "32", "zz"], "not hexadecimal"),
    (["explain", "--mode", "32", "0f7"], "odd number"),
    (["explain", "--mode", "32", "90"], "cannot decode"),
    (["explain", "--mode", "32", "--reg", "ebp", "0f7845d8"], "NAME=VALUE"),
    (["explain", "--mode", "32", "--reg", "xyz=1", "0f7845d8"], "unknown register"),
    (["explain", "--mode", "32", "--reg", "ebp=0x100000000", "0f7845d8"], "out of range"),
    (["explain", "--mode", "32", "--seg", "qs.base=1", "0f7845d8"], "unknown segment"),
    (["explain", "--mode", "32", "--seg", "ds.color=1", "0f7845d8"], "unknown segment field"),
    (["explain", "--mode", "32", "--state", "/nonexistent.json", "0f7845d8"], "cannot read"),
    (["explain", "0f7845d8"], "--mode"),
    (["explain", "--mode", "32", "--model", "nope", "0f7845d8"], "unknown model"),
])
def test_bad_arguments_one_line_status_2(argv, needle, capsys):
    code, out, err = run(*argv, capsys=capsys)
    assert code == 2
    assert needle in err and err.count("\n") == 1, err


def test_argparse_error_is_one_line():
    p = subprocess.run([sys.executable, "-m", "vmxaddr.cli", "explain", "--mode", "33", "0f"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "invalid choice" in p.stderr


# The models the README and docs/history.md name, by kind (written out here, not read from the registry)
ENCODER_NAMES = {"sdm", "bochs-2.7", "vbox-iem"}
CONSUMER_NAMES = {"sdm", "kvm-064aea77", "kvm-f9eb4af6", "kvm-946c522b", "kvm-8570f9e8", "kvm-34333cc6",
                  "kvm-c1a9acbc", "kvm-fdb28619", "kvm-6694e480", "kvm-82277eee", "kvm-current", "xen-c447b730"}


def test_models_lists_each_model_under_its_kind(capsys):
    code, out, _ = run("models", capsys=capsys)
    assert code == 0
    listed: dict[str, set[str]] = {}
    heading = None
    for line in out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            heading = line[:-1]
            listed[heading] = set()
        elif line.startswith("  ") and heading:
            name, summary = line.split(None, 1)
            assert summary.strip(), line  # every model says what it is
            listed[heading].add(name)
    assert ENCODER_NAMES <= listed["encoders"] and CONSUMER_NAMES <= listed["consumers"]
    assert not ENCODER_NAMES - {"sdm"} & listed["consumers"]  # an encoder is not offered as a consumer


def test_models_json_is_one_object(capsys):
    code, out, _ = run("models", "--json", capsys=capsys)
    obj = json.loads(out)
    assert code == 0 and isinstance(obj, dict) and set(obj) == {"models", "compiled"}
    kinds = {(m["name"], m["kind"]) for m in obj["models"]}
    assert {(n, "encoder") for n in ENCODER_NAMES} <= kinds and {(n, "consumer") for n in CONSUMER_NAMES} <= kinds
    assert set(obj["compiled"]) <= {"sdm", "kvm"}


def test_user_model_by_path(capsys):
    code, out, _ = run("explain", "--json", "--mode", "32", "--model", "vmxaddr.models.sdm:sdm", "0fc730", capsys=capsys)
    assert code == 0 and json.loads(out)["outcome"]["kind"] == "ok"


def test_subcommand_table_matches_what_each_module_registers():
    """`vmxaddr --help` lists commands from cli.SUBCOMMANDS without importing their modules;
    each line must be the one its module registers, and each module must register its name."""
    import argparse

    from vmxaddr import cli

    for name, (module, help_line) in cli.SUBCOMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        cli._register_function(module)(sub)
        assert name in sub.choices, f"{module}.register does not add {name!r}"
        registered = {a.dest: a.help for a in sub._choices_actions}
        assert registered[name] == help_line, name


def test_one_command_imports_only_its_own_module():
    """`vmxaddr decode` must not import the fuzzer, the trace checker, the scanner or the oracles
    (start-up time: issue 24); `vmxaddr fuzz --help` imports the fuzzer."""
    code = ("import sys\nfrom vmxaddr.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('vmxaddr.fuzz', 'vmxaddr.trace', "
            "'vmxaddr.scan', 'vmxaddr.oracles', 'vmxaddr.diff'))), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code, "decode", "--mode", "32", "0f7845d8"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "[]"
    p = subprocess.run([sys.executable, "-c", code, "fuzz", "--help"], capture_output=True, text=True)
    assert "'vmxaddr.fuzz.cli'" in p.stderr.strip().splitlines()[-1]
