"""Reading `objdump -d` listings: the yardstick the scanner is measured against (its tests,
benchmarks/scan_vs_objdump.py, corpus/real/fetch.py). The scanner itself never uses this."""

from __future__ import annotations

import re

_OBJDUMP_MNEMONIC = re.compile(r"^(vmread|vmwrite|vmptrld|vmptrst|vmclear|vmxon|invept|invvpid|invpcid|rdrand|"
                               r"rdseed|lgdt|lidt|sgdt|sidt|lldt|ltr|sldt|str|xsaves|xrstors|tpause|umwait|"
                               r"loadiwkey)(?:[lwq]|64)?$")
_OBJDUMP_STRING_IO = re.compile(r"^(ins|outs)[bwl]$")  # with `scan --string-io` only
_OBJDUMP_PREFIX_WORDS = re.compile(r"^(lock|rep[nez]*|cs|ds|es|ss|fs|gs|data16|data32|addr16|addr32|notrack|bnd|"
                                   r"rex(\.[WRXB]+)?|\{[a-z0-9]+\})$")


def parse_objdump(text: str, names: dict[str, str] | None = None,
                  string_io: bool = False) -> set[tuple[str, str, int, str]]:
    """(file, section, address, mnemonic) of every VMX-family instruction in `objdump -d` output;
    `names` maps the paths objdump prints to the names to report."""
    found: set[tuple[str, str, int, str]] = set()
    current = section = ""
    for line in text.splitlines():
        if "file format" in line and not line.startswith(" "):
            path = line.split(":     file format")[0].strip()
            current = (names or {}).get(path, path)
            continue
        if line.startswith("Disassembly of section "):
            section = line[len("Disassembly of section "):].rstrip(":")
            continue
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        words = parts[2].split()
        while len(words) > 1 and _OBJDUMP_PREFIX_WORDS.match(words[0]):
            words.pop(0)
        m = _OBJDUMP_MNEMONIC.match(words[0]) if words else None
        if m is None and string_io and words:
            m = _OBJDUMP_STRING_IO.match(words[0])
        if m:
            found.add((current, section, int(parts[0].strip()[:-1], 16), m.group(1)))
    return found


_LLVM_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(?:[0-9a-f]{2} )+\s*\t(.*)$")


def parse_llvm_objdump(text: str, string_io: bool = False) -> set[tuple[str, str, int, str]]:
    """The same from `llvm-objdump-19 -d` (AT&T syntax), whose lines are `addr: bytes<TAB>mnemonic
    <TAB>operands`; it decodes APX's REX2 (vmreadq %r17, (%r20)), which binutils 2.40 cannot."""
    found: set[tuple[str, str, int, str]] = set()
    current = section = ""
    for line in text.splitlines():
        if ":\tfile format" in line:
            current = line.split(":\tfile format")[0].strip()
            continue
        if line.startswith("Disassembly of section "):
            section = line[len("Disassembly of section "):].rstrip(":")
            continue
        m = _LLVM_LINE.match(line)
        if not m:
            continue
        words = m.group(2).split()
        while len(words) > 1 and _OBJDUMP_PREFIX_WORDS.match(words[0]):
            words.pop(0)
        mm = _OBJDUMP_MNEMONIC.match(words[0]) if words else None
        if mm is None and string_io and words:
            mm = _OBJDUMP_STRING_IO.match(words[0])
        if mm:
            found.add((current, section, int(m.group(1), 16), mm.group(1)))
    return found
