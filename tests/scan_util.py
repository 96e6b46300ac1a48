"""Helpers for tests/test_scan.py: assemble small objects, read what the assembler recorded, and
parse `objdump -d` output (with vmxaddr.objdump, which the scanner does not use)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from elftools.elf.elffile import ELFFile

from vmxaddr.objdump import parse_objdump

AS = shutil.which("as")
OBJDUMP = shutil.which("objdump")

def assemble(tmp: Path, name: str, source: str, *, bits32: bool = False) -> Path:
    src = tmp / f"{name}.s"
    obj = tmp / f"{name}.o"
    src.write_text(source)
    assert AS
    subprocess.run([AS, *(["--32"] if bits32 else ["--64"]), "-o", str(obj), str(src)], check=True,
                   capture_output=True)
    return obj


def marked(instructions: list[str], fillers: list[str], *, code: str = "", func: str = "f") -> str:
    """Assembly for one function holding `instructions` separated by `fillers` (cycled), with a
    table in section .expect: for each instruction its offset from the function's start and its
    length, both computed by the assembler."""
    body = [f".text\n{code}\n.globl {func}\n.type {func},@function\n{func}:"]
    table = [".section .expect,\"a\""]
    for i, ins in enumerate(instructions):
        body.append(f"  {fillers[i % len(fillers)]}" if fillers else "")
        body.append(f".Ls{i}:\n  {ins}\n.Le{i}:")
        table.append(f"  .long .Ls{i} - {func}\n  .long .Le{i} - .Ls{i}")
    body.append(f"  ret\n.size {func}, . - {func}")
    return "\n".join(body) + "\n" + "\n".join(table) + "\n"


def expected_table(obj: Path) -> tuple[list[tuple[int, int]], bytes, int]:
    """(offset, length) pairs from .expect, the bytes of .text and the function's offset there
    (read with pyelftools)."""
    with open(obj, "rb") as fh:
        elf = ELFFile(fh)
        raw = elf.get_section_by_name(".expect").data()
        text = elf.get_section_by_name(".text").data()
        func = 0
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC":
                func = sym["st_value"]
    pairs = [(int.from_bytes(raw[i:i + 4], "little"), int.from_bytes(raw[i + 4:i + 8], "little"))
             for i in range(0, len(raw), 8)]
    return [(func + off, n) for off, n in pairs], text, func


def objdump_family(obj: Path, machine: str | None = None) -> set[tuple[str, int, str]]:
    """(section, address, mnemonic) of every VMX-family instruction in `objdump -d`."""
    assert OBJDUMP
    cmd = [OBJDUMP, "-d", *(["-M", machine] if machine else []), str(obj)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {(section, address, mnemonic) for _, section, address, mnemonic in parse_objdump(text)}
