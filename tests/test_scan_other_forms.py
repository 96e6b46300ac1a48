"""`vmxaddr scan` on the instructions issue 16 added: TPAUSE, UMWAIT and LOADIWKEY are found
always; INS/OUTS with --string-io (their one-byte opcodes occur inside many other instructions).
Measured against `objdump -d`, as the rest of the scanner (tests/test_scan.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from scan_util import OBJDUMP, assemble, marked  # noqa: E402

from vmxaddr.objdump import parse_objdump  # noqa: E402
from vmxaddr.scan import scan_file  # noqa: E402

pytestmark = pytest.mark.skipif(OBJDUMP is None, reason="needs objdump")

CODE = ["tpause %ecx", "umwait %r9d", "loadiwkey %xmm1, %xmm2", "rep insb (%dx), %es:(%rdi)",
        "outsw %ds:(%rsi), (%dx)", "fs outsl %fs:(%rsi), (%dx)", "vmptrld (%rax)"]
FILLERS = ["nop", "mov $0x6c6d6e6f, %eax", "mov $0x0f6c, %cx"]  # 6C-6F inside immediates


def _objdump(obj: Path, string_io: bool) -> set[tuple[str, int, str]]:
    import subprocess

    text = subprocess.run([OBJDUMP, "-d", str(obj)], check=True, capture_output=True, text=True).stdout
    return {(s, a, m) for _, s, a, m in parse_objdump(text, string_io=string_io)}


@pytest.mark.parametrize("string_io", [False, True])
def test_matches_objdump(tmp_path: Path, string_io: bool) -> None:
    obj = assemble(tmp_path, "other", marked(CODE, FILLERS))
    res = scan_file(str(obj), string_io=string_io)
    assert res.error is None
    ours = {(f["section"], f["address"], f["mnemonic"]) for f in res.findings}
    assert ours == _objdump(obj, string_io)
    mnemonics = sorted(m for _, _, m in ours)
    want = ["loadiwkey", "tpause", "umwait", "vmptrld"] + (["ins", "outs", "outs"] if string_io else [])
    assert mnemonics == sorted(want)
    if string_io:
        forms = {f["mnemonic"]: f["form"] for f in res.findings}
        assert forms["ins"].startswith("string")
