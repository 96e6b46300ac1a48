"""The StrEnums that name vmxaddr's closed sets of strings — state.Mode, isa.SegmentName,
instruction.DecodeErrorKind and trace.format's verdicts — are the strings the code uses: every
literal passed as a DecodeError kind, and every verdict check-trace writes, is a member; the data
holds the plain strings (MODES, SEGMENTS), which a member equals and serialises as, so JSON output
is what it was; the verdict Literal types equal their enums."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import get_args

from vmxaddr.instruction import DecodeErrorKind
from vmxaddr.isa import SEGMENTS, SegmentName
from vmxaddr.state import MODES, CpuState, Mode
from vmxaddr.trace.format import (
    FingerprintVerdict,
    FingerprintVerdictName,
    HardwareVerdict,
    HardwareVerdictName,
    HypervisorVerdict,
    HypervisorVerdictName,
)

PKG = Path(__file__).resolve().parent.parent / "vmxaddr"


def _decode_error_kinds() -> set[str]:
    """The first argument of every `DecodeError("...", ...)` in the package's source."""
    kinds = set()
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "DecodeError"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                kinds.add(node.args[0].value)
    return kinds


def test_every_decode_error_kind_raised_is_a_member():
    kinds = _decode_error_kinds()
    assert "not-vmx" in kinds and "too-long" in kinds  # the scan found the raise sites
    assert kinds - set(DecodeErrorKind) == set()


def _verdicts(path: Path) -> set[str]:
    """The string values given to a "verdict" key in a dict display of `path`, or assigned to
    hv["verdict"]/verdict (the ones written as literals or `"a" if c else "b"`)."""
    out = set()

    def strings(v: ast.AST) -> list[str]:
        if isinstance(v, ast.Constant) and isinstance(v.value, str):
            return [v.value]
        if isinstance(v, ast.IfExp):
            return strings(v.body) + strings(v.orelse)
        return []

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "verdict":
                    out.update(strings(v))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "verdict"
                   or isinstance(t, ast.Name) and t.id == "verdict" for t in targets) and node.value is not None:
                out.update(strings(node.value))
    return out


def test_check_trace_writes_only_enum_verdicts():
    trace = PKG / "trace"
    assert _verdicts(trace / "hardware.py") <= set(HardwareVerdict)
    assert _verdicts(trace / "hypervisor.py") <= set(HypervisorVerdict)
    assert _verdicts(trace / "checker.py") <= set(FingerprintVerdict) | set(HypervisorVerdict)
    assert {"consistent", "inconsistent", "not-checkable"} <= _verdicts(trace / "hardware.py")  # the scan works


def test_the_verdict_types_are_the_enums():
    assert set(get_args(HardwareVerdictName)) == set(HardwareVerdict)
    assert set(get_args(HypervisorVerdictName)) == set(HypervisorVerdict)
    assert set(get_args(FingerprintVerdictName)) == set(FingerprintVerdict)


def test_a_member_is_its_string():
    """The SDM's names, as the state format writes them (docs/state-format.md), not the enum's."""
    assert MODES == ("real", "virtual-8086", "protected", "compatibility", "64-bit")
    assert SEGMENTS == ("es", "cs", "ss", "ds", "fs", "gs") == tuple(SegmentName)
    assert json.dumps({"mode": Mode.LONG}) == '{"mode": "64-bit"}'
    assert {"64-bit": 1}[Mode.LONG] == 1 and f"{Mode.COMPATIBILITY}" == "compatibility"


def test_a_state_holds_the_plain_string():
    """Not the member: hashing a CpuState and looking its mode up are on the per-case paths."""
    st = CpuState.from_json({"mode": "compatibility"})
    assert st.mode == Mode.COMPATIBILITY and type(st.mode) is str
    assert type(CpuState.for_code_size(64).mode) is str and type(MODES[0]) is str
    assert json.loads(st.dumps())["mode"] == "compatibility"
    assert '"mode": "compatibility"' in st.dumps()
