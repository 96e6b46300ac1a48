"""LLVM 19's x86 disassembler through its C API (`LLVMCreateDisasm`/`LLVMDisasmInstruction` in
libLLVM-19.so, Debian's `libllvm19`, a dependency of `llvm-19`), loaded with ctypes, and its
Intel-syntax text parsed into the fields vmxaddr compares.

Why the C API and not `llvm-mc --disassemble`: one call decodes one instruction at one address and
returns its length, so cases cannot merge or resynchronise into each other, and it is ~20 times
faster (measured in docs/oracles.md: ~100 000 decodes/s against ~5 000 cases/s through llvm-mc).
"""

from __future__ import annotations

import ctypes
import re
from functools import cache
from typing import Any

from vmxaddr.isa import reg_number

LIBRARIES = ("libLLVM-19.so", "libLLVM.so.19.1", "libLLVM-19.so.1")
TRIPLES = {16: b"i386-unknown-unknown-code16", 32: b"i386-unknown-unknown", 64: b"x86_64-unknown-unknown"}
OPTION_INTEL = 4  # LLVMDisassembler_Option_AsmPrinterVariant: variant 1, Intel syntax
PC = 0x1000  # where each instruction is said to sit (only RIP-relative *targets* would use it)


class LLVMUnavailable(RuntimeError):
    """libLLVM-19 cannot be loaded or has no x86 disassembler."""


class _Disasm:
    def __init__(self) -> None:
        lib = None
        errors = []
        for name in LIBRARIES:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError as e:
                errors.append(str(e))
        if lib is None:
            raise LLVMUnavailable("libLLVM-19.so not found (Debian: apt-get install llvm-19; scripts/system-deps.sh)")
        for f in ("LLVMInitializeX86TargetInfo", "LLVMInitializeX86TargetMC", "LLVMInitializeX86Disassembler"):
            getattr(lib, f)()
        lib.LLVMCreateDisasm.restype = ctypes.c_void_p
        lib.LLVMCreateDisasm.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_void_p]
        lib.LLVMSetDisasmOptions.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        lib.LLVMDisasmInstruction.restype = ctypes.c_size_t
        lib.LLVMDisasmInstruction.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64,
                                              ctypes.c_char_p, ctypes.c_size_t]
        self.lib = lib
        self.ctx: dict[int, int] = {}
        for cs, triple in TRIPLES.items():
            c = lib.LLVMCreateDisasm(triple, None, 0, None, None)
            if not c or not lib.LLVMSetDisasmOptions(c, OPTION_INTEL):
                raise LLVMUnavailable(f"libLLVM-19 has no x86 disassembler for {triple.decode()}")
            self.ctx[cs] = c
        self.buf = ctypes.create_string_buffer(256)
        self.version = _version(lib)

    def text(self, raw: bytes, code_size: int) -> tuple[int, str]:
        """(length, Intel text); length 0 when LLVM cannot decode the bytes."""
        buf = self.buf
        buf[0] = 0
        n = self.lib.LLVMDisasmInstruction(self.ctx[code_size], raw, len(raw), PC, buf, 256)
        return n, (buf.value.decode() if n else "")


def _version(lib: Any) -> str:
    try:
        f = lib.LLVMGetVersion
    except AttributeError:
        return "19"
    a, b, c = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
    f.argtypes = [ctypes.POINTER(ctypes.c_uint)] * 3
    f(ctypes.byref(a), ctypes.byref(b), ctypes.byref(c))
    return f"{a.value}.{b.value}.{c.value}"


@cache
def disasm() -> _Disasm:
    """The process's one LLVM disassembler (libLLVM-19 loaded at the first call)."""
    return _Disasm()


def missing() -> str | None:
    """Why the LLVM oracle cannot run here, or None."""
    try:
        disasm()
    except LLVMUnavailable as e:
        return str(e)
    return None


# -- the text, parsed ---------------------------------------------------------------------------

# Tokens LLVM prints before the mnemonic (prefixes it shows as words); `addr32`/`addr16` tell the
# address size when no register does.
_PREFIX_WORDS = frozenset(("rep", "repne", "repe", "lock", "data16", "data32", "addr16", "addr32", "rex64",
                           "notrack", "xacquire", "xrelease", "rex", "rex2"))
_SIZES = {"byte": 1, "word": 2, "dword": 4, "qword": 8, "fword": 6, "tbyte": 10, "xmmword": 16}
_MEM = re.compile(r"^(?:(\w+) ptr )?(?:([cdefgs]s):)?\[(.*)\]$")
_SUFFIXED = {"sgdt", "sidt", "lgdt", "lidt"}  # LLVM adds w/d outside 64-bit mode: the operand size
_STRING = {"ins": 0, "outs": 0}
_ALIASES = {"xsaves64": "xsaves", "xrstors64": "xrstors"}


def _reg_width(name: str) -> int | None:
    try:
        return reg_number(name)[1]
    except KeyError:
        return None


def parse(n: int, text: str) -> dict[str, Any]:
    """LLVM's decode in our vocabulary: length, mnemonic (aliases mapped), operand size where the
    mnemonic says it, register operands in LLVM's (Intel) order, and the memory operand."""
    words = text.split()
    view: dict[str, Any] = {"length": n, "text": text.strip(), "mnemonic": None, "operand_size": "n/a",
                            "registers": [], "memory": None, "addr_hint": None, "prefix_only": False}
    if not n or not words:
        return view
    i = 0
    while i < len(words) - 1 and words[i] in _PREFIX_WORDS:
        if words[i] in ("addr32", "addr16"):
            view["addr_hint"] = 32 if words[i] == "addr32" else 16
        i += 1
    m = words[i]
    view["prefix_only"] = i == len(words) - 1 and (m in _PREFIX_WORDS or m in ("cs", "ds", "es", "fs", "gs", "ss"))
    rest = text.strip().split(None, i + 1)
    ops_text = rest[i + 1] if len(rest) > i + 1 else ""
    if m[:-1] in _SUFFIXED and m[-1] in "wdq":
        view["operand_size"] = {"w": 16, "d": 32, "q": None}[m[-1]]
        m = m[:-1]
    elif m in _SUFFIXED:
        view["operand_size"] = None  # 64-bit mode: no suffix (the size bit is undefined there)
    elif m[:-1] in _STRING and m[-1] in "bwd":
        view["operand_size"] = {"b": 8, "w": 16, "d": 32}[m[-1]]
        m = m[:-1]
    view["mnemonic"] = _ALIASES.get(m, m)
    for op in (o.strip() for o in ops_text.split(",") if o.strip()):
        mm = _MEM.match(op)
        if mm:
            view["memory"] = _memory(mm.group(1), mm.group(2), mm.group(3), view["addr_hint"])
        elif op != "dx" or view["mnemonic"] not in _STRING:
            view["registers"].append(op)
    return view


def _memory(size: str | None, seg: str | None, body: str, addr_hint: int | None) -> dict[str, Any]:
    base = index = None
    scale = 1
    disp = 0
    sign = 1
    for tok in body.split():
        if tok in "+-":
            sign = -1 if tok == "-" else 1
            continue
        if "*" in tok:
            k, reg = tok.split("*")
            index, scale = reg, int(k)
        elif tok.lstrip("-")[:1].isdigit():
            disp += sign * int(tok, 0)
        elif base is None:
            base = tok
        else:
            index = tok  # 16-bit [bx + si]: the second register is the index, scale 1
        sign = 1
    if index in ("riz", "eiz"):
        index = None  # LLVM's name for "SIB with no index"
    widths = {w for w in (_reg_width(r) for r in (base, index) if r is not None and r not in ("rip", "eip")) if w}
    asz = 64 if base == "rip" else 32 if base == "eip" else (widths.pop() if len(widths) == 1 else addr_hint)
    return {"segment": seg, "base": base, "index": index, "scale": scale, "displacement": disp,
            "access_size": _SIZES.get(size) if size else None, "address_size": asz}
