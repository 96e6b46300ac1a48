"""One validator for every surface (issue 13, items 2 and 6): --reg, --seg, --rip, --cpl, --state
files and trace state records share the ranges of vmxaddr.state, and every bad value is one line
naming the field and its range, exit status 2.

The ranges are the widths of the VMCS guest-state fields, SDM Vol. 3C §25.4.1 "Guest Register
State": selector 16 bits; base address 64 bits; segment limit 32 bits; access rights: segment type
bits 3:0 (0…15), S bit 4, DPL bits 6:5 (0…3), P bit 7, L bit 13, D/B bit 14, G bit 15, segment
unusable bit 16 (one bit each); RIP 64 bits. CPL is 0…3 (Vol. 3A §5.5 "Privilege Levels"); CR4.LA57
and CR4.LAM_SUP, CR3.LAM_U48/LAM_U57 are single bits (Vol. 3A §2.5 "Control Registers").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmxaddr.cli import main
from vmxaddr.state import CpuState, StateError
from vmxaddr.trace import state_from_json

ROOT = Path(__file__).resolve().parent.parent
BASE = ["explain", "--mode", "32"]
HEX = "0f7845d8"  # VMREAD [EBP-0x28], EAX


def run(argv, capsys):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("vmxaddr "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


# -- command-line values out of range ----------------------------------------------------------

@pytest.mark.parametrize("opts,field,allowed", [
    (["--seg", "ds.limit=-1"], "ds.limit", "0…0xffffffff"),  # 32-bit limit field
    (["--seg", "ds.limit=0x1ffffffff"], "ds.limit", "0…0xffffffff"),
    (["--seg", "ds.type=-1"], "ds.type", "0…15"),  # type bits 3:0
    (["--seg", "ds.type=16"], "ds.type", "0…15"),
    (["--seg", "ss.dpl=4"], "ss.dpl", "0…3"),  # DPL bits 6:5
    (["--seg", "ss.p=2"], "ss.p", "0 or 1"),
    (["--seg", "cs.l=-1"], "cs.l", "0 or 1"),
    (["--seg", "ds.unusable=2"], "ds.unusable", "0 or 1"),
    (["--seg", "fs.selector=0x10000"], "fs.selector", "0…0xffff"),
    (["--seg", "fs.base=0x10000000000000000"], "fs.base", "0…0xffffffffffffffff"),
    (["--seg", "fs.base=-1"], "fs.base", "0…0xffffffffffffffff"),
    (["--rip", str(1 << 64)], "--rip", "0…0xffffffffffffffff"),  # was wrapped to 0
    (["--rip", "-1"], "--rip", "0…0xffffffffffffffff"),
    (["--reg", "rax=0x10000000000000000"], "--reg rax", "0xffffffffffffffff"),
    (["--reg", "ebp=-0x80000001"], "--reg ebp", "-0x80000000…0xffffffff"),
])
def test_out_of_range_option_is_one_line(opts, field, allowed, capsys):
    code, out, err = run(BASE + opts + [HEX], capsys)
    one_line_error(code, err, field, allowed, "out of range")
    assert out == ""


@pytest.mark.parametrize("value", ["4", "-1", "0x10", "three", str(1 << 64)])
def test_cpl_goes_through_the_validator(value, capsys):
    code, _, err = run(BASE + ["--cpl", value, HEX], capsys)
    one_line_error(code, err, "--cpl")
    assert "allowed 0…3" in err or "decimal or 0x" in err


def test_cpl_3_gives_gp0(capsys):
    """VMREAD at CPL 3: #GP(0) (SDM Vol. 3C, VMREAD "Operation": ELSIF CPL > 0 THEN #GP(0))."""
    code, out, _ = run(["explain", "--json", "--mode", "32", "--cpl", "0x3", HEX], capsys)
    assert code == 0 and json.loads(out)["outcome"]["vector"] == "GP"


@pytest.mark.parametrize("opts", [
    ["--seg", "ds.limit=0xffffffff", "--seg", "ds.type=15", "--seg", "ds.dpl=3", "--seg", "fs.selector=0xffff"],
    ["--rip", "0xffffffffffffffff"], ["--seg", "gs.base=0xffffffffffffffff"],
    ["--reg", "ebp=-0x80000000"], ["--seg", "ds.unusable=true"],
])
def test_range_ends_are_accepted(opts, capsys):
    code, out, err = run(BASE + opts + [HEX], capsys)
    assert code == 0, err


@pytest.mark.parametrize("value", ["0o17", "0b101", "+5", "1e3", "5.0", "010", "0x", "ten", " 0x10 x"])
def test_reg_accepts_only_decimal_and_0x(value, capsys):
    """Decimal and 0x hexadecimal are the documented forms (docs/state-format.md); 0o/0b and
    the rest of Python's int() syntax are refused, on every surface alike."""
    code, _, err = run(BASE + ["--reg", f"ebp={value}", HEX], capsys)
    one_line_error(code, err, "--reg ebp", "decimal or 0x hexadecimal")
    with pytest.raises(StateError, match="decimal or 0x"):
        CpuState.from_json({"registers": {"rbp": value}})


def test_documented_forms_still_work():
    st = CpuState.from_json({"registers": {"rax": "0xffff_8000_0000_0000", "ebx": -1, "rcx": "4096"}})
    assert st.regs[0] == 0xFFFF800000000000 and st.regs[3] == 0xFFFFFFFF and st.regs[1] == 4096


# -- the same ranges in a state file and a trace record ------------------------------------------

@pytest.mark.parametrize("obj,field", [
    ({"segments": {"ds": {"limit": -1}}}, "segments.ds.limit"),
    ({"segments": {"ds": {"limit": 0x1FFFFFFFF}}}, "segments.ds.limit"),
    ({"segments": {"ds": {"type": -1}}}, "segments.ds.type"),
    ({"segments": {"ss": {"db": 2}}}, "segments.ss.db"),
    ({"segments": {"ss": {"g": "2"}}}, "segments.ss.g"),
    ({"rip": 1 << 64}, "rip"),
    ({"cr4": {"la57": 2}}, "cr4.la57"),
    ({"cr3": {"lam_u48": -1}}, "cr3.lam_u48"),
    ({"cpl": 4}, "cpl"),
    ({"registers": {"rax": 1 << 64}}, "registers.rax"),
    ({"registers": {"ax": 0x10000}}, "registers.ax"),
])
def test_state_file_values_out_of_range(obj, field, tmp_path, capsys):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(obj))
    code, out, err = run(BASE + ["--state", str(p), HEX], capsys)
    one_line_error(code, err, field, "out of range")
    with pytest.raises(StateError, match="out of range"):  # a trace record's state: same check
        state_from_json(obj, CpuState.for_code_size(32))


def test_million_digit_base_is_refused_without_converting_it():
    """check-trace took 874 MB on 1,500 states with a million-digit ss.base: the validator refuses
    the text by its length before converting it."""
    from vmxaddr.state import json_loads

    obj = json_loads('{"segments": {"ss": {"base": ' + "9" * 1_000_000 + "}}}")
    with pytest.raises(StateError, match=r"segments\.ss\.base: a 1000000-digit number is out of range"):
        state_from_json(obj, CpuState.for_code_size(32))
    with pytest.raises(StateError, match="too long"):
        state_from_json({"segments": {"ss": {"base": "0x" + "f" * 1_000_000}}}, CpuState.for_code_size(32))


def test_check_int_is_the_shared_range_check():
    from vmxaddr.state import check_int, json_loads

    assert check_int("0x10", "vcpu", 0, 2**32 - 1) == 16
    with pytest.raises(StateError, match=r"vcpu: a 5000-digit number is out of range \(allowed 0…0xffffffff\)"):
        check_int(json_loads("9" * 5000), "vcpu", 0, 2**32 - 1)


# -- hostile state files ------------------------------------------------------------------------

def _state(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "s.json"
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("data,needle", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8"),
    (b'{"cpl": 0, "x": "\xff"}', "not UTF-8 text (byte 0xff"),
    ('{"cpl": 3}'.encode("utf-16"), "UTF-16"),
    ('{"cpl": 3}'.encode("utf-16-le"), "UTF-16"),
    (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    (b'{"registers": {"rax": ' + b"1" * 4301 + b"}}", "registers.rax: a 4301-digit number is out of range"),
    (b'{"rip": ' + b"1" * 5000 + b"}", "rip: a 5000-digit number"),
    (b'{"segments": {"ss": {"limit": 1e400}}}', "segments.ss.limit: expected an integer"),
    (b"", "is empty"),
    (b"{" + b" " * (2 << 20) + b"}", "larger than 1024 KiB"),
    (b'{"cpl": 0', "not valid JSON"),
])
def test_hostile_state_file_is_one_line(data, needle, tmp_path, capsys):
    code, out, err = run(BASE + ["--state", _state(tmp_path, data), HEX], capsys)
    one_line_error(code, err, needle)


def test_utf8_byte_order_mark_is_accepted(tmp_path, capsys):
    path = _state(tmp_path, b"\xef\xbb\xbf" + json.dumps({"cpl": 3}).encode())
    code, out, _ = run(BASE + ["--json", "--state", path, HEX], capsys)
    assert code == 0 and json.loads(out)["outcome"]["vector"] == "GP"  # CPL 3: #GP(0), the cpl rule


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a read to 4 GB fails fast


def test_state_from_dev_zero_is_capped():
    """/dev/zero was read until memory ran out: a subprocess with 2 GB of address space."""
    p = subprocess.run([sys.executable, "-m", "vmxaddr.cli", *BASE, "--state", "/dev/zero", HEX],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, preexec_fn=_limit_memory)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "larger than 1024 KiB" in p.stderr, p.stderr


def test_state_is_a_directory(tmp_path, capsys):
    code, _, err = run(BASE + ["--state", str(tmp_path), HEX], capsys)
    one_line_error(code, err, "directory")


def test_state_from_fifo_without_writer_does_not_block(tmp_path):
    fifo = tmp_path / "state.fifo"
    os.mkfifo(fifo)
    p = subprocess.run([sys.executable, "-m", "vmxaddr.cli", *BASE, "--state", str(fifo), HEX],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "is empty" in p.stderr, p.stderr


def test_state_from_a_pipe_with_a_writer_is_read(tmp_path):
    """`--state <(…)` is a pipe: it must still work."""
    script = (f"exec {sys.executable} -m vmxaddr.cli explain --json --mode 32 "
              f"--state <(echo '{{\"cpl\": 3}}') {HEX}")
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["outcome"]["vector"] == "GP"


# -- --mode and --cpu-mode -----------------------------------------------------------------------

@pytest.mark.parametrize("mode,cpu_mode", [
    ("64", "compatibility"), ("64", "protected"), ("64", "real"), ("64", "virtual-8086"),
    ("32", "64-bit"), ("16", "64-bit"), ("32", "virtual-8086"),
])
def test_contradicting_mode_and_cpu_mode_are_refused(mode, cpu_mode, capsys):
    """64-bit code runs only in 64-bit mode, virtual-8086 mode runs 16-bit code only (SDM Vol. 3A
    §2.2 "Modes of Operation"; Vol. 1 §3.6.1): such a pair is refused, not reinterpreted."""
    code, out, err = run(["decode", "--mode", mode, "--cpu-mode", cpu_mode, HEX], capsys)
    one_line_error(code, err, f"--mode {mode} contradicts --cpu-mode {cpu_mode}")


@pytest.mark.parametrize("mode,cpu_mode", [("64", "64-bit"), ("32", "compatibility"), ("16", "compatibility"),
                                           ("16", "virtual-8086"), ("16", "real"), ("32", "protected")])
def test_agreeing_mode_and_cpu_mode(mode, cpu_mode, capsys):
    code, out, err = run(["decode", "--json", "--mode", mode, "--cpu-mode", cpu_mode, "0fc730"], capsys)
    assert code == 0, err


def test_seg_that_changes_the_code_size_contradicts_mode(capsys):
    code, _, err = run(["decode", "--mode", "32", "--seg", "cs.db=0", HEX], capsys)
    one_line_error(code, err, "--mode 32 contradicts --seg cs.db")


@pytest.mark.parametrize("obj,needle", [
    ({"mode": "64-bit", "segments": {"cs": {"l": 0}}}, "mode 64-bit needs segments.cs.l = 1"),
    ({"mode": "64-bit", "segments": {"cs": {"db": 1}}}, "segments.cs.db = 0"),
    ({"mode": "compatibility", "segments": {"cs": {"l": 1}}}, "mode compatibility needs segments.cs.l = 0"),
])
def test_mode_and_cs_that_contradict_are_refused(obj, needle):
    """IA-32e mode is 64-bit mode when CS.L = 1 and compatibility mode when CS.L = 0; L = 1 with
    D = 1 is reserved (SDM Vol. 3A §5.2.1; VM entry checks it, Vol. 3C §27.3.1.2)."""
    with pytest.raises(StateError, match=needle):
        CpuState.from_json(obj)
    with pytest.raises(StateError, match=needle):  # also on top of a state that had it right
        CpuState.from_json({"segments": obj["segments"]}, CpuState.from_json({"mode": obj["mode"]}))


def test_cpu_mode_compatibility_on_a_64_bit_state_file_clears_cs_l(tmp_path, capsys):
    """--cpu-mode compatibility on a 64-bit state: compatibility mode *is* CS.L = 0, so CS.L is
    cleared (as "64-bit" sets it) and the code is 16-bit (CS.D = 0 in the 64-bit default state)."""
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"mode": "64-bit"}))
    code, out, err = run(["decode", "--json", "--state", str(p), "--cpu-mode", "compatibility", "0fc730"], capsys)
    assert code == 0, err
    assert json.loads(out)["operand"]["address_size"] == 16


# -- the property ----------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.integers(-(1 << 70), 1 << 70) | st.floats() \
    | st.text(max_size=30) | st.sampled_from(["0x10", "0xffff_ffff", "-1", "0o7", "0b1", "1" * 80, "true"])
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
_seg = st.dictionaries(st.sampled_from(["base", "limit", "type", "s", "dpl", "p", "db", "g", "l", "unusable",
                                        "selector", "x"]), _scalars, max_size=5)
_state_obj = st.fixed_dictionaries({}, optional={
    "mode": st.sampled_from(["real", "virtual-8086", "protected", "compatibility", "64-bit", "long"]) | _scalars,
    "code_size": st.sampled_from([16, 32, 64, 48]) | _scalars,
    "cpl": _scalars, "rip": _scalars,
    "cr4": st.dictionaries(st.sampled_from(["la57", "lam_sup", "pae"]), _scalars) | _json,
    "cr3": st.dictionaries(st.sampled_from(["lam_u48", "lam_u57"]), _scalars) | _json,
    "registers": st.dictionaries(st.sampled_from(["rax", "eax", "ax", "r15d", "rip", "rbp", "xmm0"]), _scalars) | _json,
    "segments": st.dictionaries(st.sampled_from(["es", "cs", "ss", "ds", "fs", "gs", "tr"]), _seg | _json) | _json,
})


@settings(max_examples=400, deadline=None)
@given(st.one_of(_state_obj, st.dictionaries(st.text(max_size=10), _json, max_size=5)))
def test_any_json_object_loads_or_gives_one_line_error(obj):
    """Any JSON object given as a state either loads into a state every field of which is in
    range, or gives a StateError whose message is one line; nothing else escapes."""
    text = json.dumps(obj)
    try:
        state = CpuState.loads(text)
    except StateError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 400, msg
        return
    from vmxaddr.state import check_state

    check_state(state)
    assert state.code_size in (16, 32, 64)


_SEG_VALUE = st.one_of(st.integers(-2, 20), st.integers(0, 2**64 + 1), st.booleans(), st.sampled_from(["0x10", "1", "true", "x"]),
                       st.none(), st.just(1.0))


_SEG_KEYS = ["base", "limit", "type", "s", "dpl", "p", "db", "g", "l", "unusable", "selector"]


@given(st.fixed_dictionaries({k: st.integers(0, 1) for k in _SEG_KEYS}),
       st.dictionaries(st.sampled_from([*_SEG_KEYS, "bogus"]), _SEG_VALUE, max_size=2),
       st.lists(st.sampled_from(_SEG_KEYS), max_size=1))
@settings(max_examples=500, deadline=None)
def test_whole_segment_fast_path_reads_as_the_loop_does(valid: dict[str, Any], changes: dict[str, Any],
                                                        dropped: list[str]) -> None:
    # state._whole_segment takes the form to_json writes without the per-field loop; whatever it
    # accepts must come out as the loop makes it, and whatever it declines the loop still judges
    import vmxaddr.state as state_mod

    seg = {**valid, **changes}
    for k in dropped:
        seg.pop(k, None)
    obj = {"segments": {"ds": seg}}

    def read() -> Any:
        try:
            return CpuState.from_json(obj)
        except StateError as e:
            return str(e)

    fast = read()
    real = state_mod._whole_segment
    try:
        state_mod._whole_segment = lambda sv: None  # type: ignore[assignment]
        assert read() == fast
    finally:
        state_mod._whole_segment = real
