"""The capstone guard: capstone 5 reads each operand form of a decode independently, and must
agree on the length and on the memory operand's base, index and scale (vmxaddr.decode).

Capstone 5 does not decode APX (REX2, 0xD5): REX2 forms are never handed to it (see
docs/known-decoder-issues.md); their expected values are derived by hand in tests/test_apx.py.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

from vmxaddr.instruction import DecodeError, Instruction


@cache
def _cs(code_size: int) -> Any:
    import capstone

    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[code_size]
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    md.detail = True
    return md


def capstone_view(raw: bytes, code_size: int) -> dict[str, Any] | None:
    """What capstone 5 makes of the bytes: mnemonic, length and memory operand (or None when it
    cannot decode them)."""
    from capstone import x86

    md = _cs(code_size)
    ins = next(md.disasm(raw, 0), None)
    if ins is None:
        return None
    view: dict[str, Any] = {"mnemonic": ins.mnemonic, "length": ins.size, "text": f"{ins.mnemonic} {ins.op_str}".strip(),
                            "memory": None}
    for o in ins.operands:
        if o.type == x86.X86_OP_MEM:
            m = o.mem
            view["memory"] = {
                "base": ins.reg_name(m.base) if m.base else None,
                "index": ins.reg_name(m.index) if m.index else None,
                "scale": m.scale,
                "segment": ins.reg_name(m.segment) if m.segment else None,
                "disp": m.disp,
            }
    return view


@lru_cache(maxsize=1 << 16)
def _capstone_shape(raw: bytes, code_size: int) -> tuple[int, str | None, str | None, int] | None:
    """(length, base, index, scale) of capstone 5's decode of `raw`: what `capstone_view` says,
    read straight from capstone's C structures (cs_disasm and the x86 detail through the
    binding's ctypes declarations) instead of through the Python CsInsn objects, which copy the
    whole instruction and detail and build every operand (about a tenth of the cost; the guard runs
    once per operand form, so cold decoding — a fuzzer's or a scan's first cases — pays it often).
    tests/test_decode_guard.py checks both readings agree."""
    md = _cs(code_size)
    insn_pointer, byref, cs_disasm, cs_free, op_mem = _c_api()
    insn = insn_pointer()
    count = cs_disasm(md.csh, raw, len(raw), 0, 1, byref(insn))
    if count <= 0:
        return None
    try:
        ins = insn[0]
        length = ins.size
        mem = None
        if ins.id:
            detail = ins.detail.contents.arch.x86
            operands = detail.operands
            for k in range(detail.op_count):
                op = operands[k]
                if op.type == op_mem:  # the last memory operand, as capstone_view keeps
                    m = op.value.mem
                    mem = (m.base, m.index, m.scale)
    finally:
        cs_free(insn, count)
    if mem is None:
        return (length, None, None, 0)
    base, index, scale = mem
    index_name = _reg_name(md, index)
    # capstone names "no index" with a non-1 SIB scale as the pseudo-registers riz/eiz.
    return (length, _reg_name(md, base), None if index_name in ("riz", "eiz") else index_name, scale)


@cache
def _c_api() -> tuple[Any, ...]:
    import ctypes

    import capstone
    from capstone import x86

    return ctypes.POINTER(capstone._cs_insn), ctypes.byref, capstone._cs.cs_disasm, capstone._cs.cs_free, x86.X86_OP_MEM


_REG_NAMES: dict[int, str | None] = {0: None}


def _reg_name(md: Any, reg: int) -> str | None:
    name = _REG_NAMES.get(reg, "")
    if name == "":
        name = _REG_NAMES[reg] = md.reg_name(reg)
    return name


def _capstone_shape_by_view(raw: bytes, code_size: int) -> tuple[int, str | None, str | None, int] | None:
    """`_capstone_shape` through the binding's Python objects (tests compare the two readings)."""
    v = capstone_view(raw, code_size)
    if v is None:
        return None
    m = v["memory"]
    if m is None:
        return (v["length"], None, None, 0)
    index = None if m["index"] in ("riz", "eiz") else m["index"]
    return (v["length"], m["base"], index, m["scale"])


@cache
def capstone_guard_on() -> bool:
    """Does the capstone guard run? Only where capstone cannot be imported is it off: in the
    browser under Pyodide, which has no build of capstone, vmxaddr's own decoder answers alone
    (the site's page says so). capstone is a dependency everywhere else, and
    tests/test_decode_guard.py fails if it is off there."""
    try:
        import capstone  # noqa: F401
    except ImportError:
        return False
    return True


def _capstone_guard(shape_raw: bytes, code_size: int, instr: Instruction) -> None:
    if not capstone_guard_on():
        return
    got = _capstone_shape(shape_raw, code_size)
    if got is None:
        # Known: capstone 5 cannot decode INVEPT/INVVPID/INVPCID in 16-bit code (66 0F 38 8x).
        return
    length, base, index, scale = got
    op = instr.operand
    problems = []
    if length != instr.length:
        problems.append(f"length {length} vs {instr.length}")
    if op is not None:
        want_base = op.base_name
        want_index = op.index_name
        if base != want_base:
            problems.append(f"base {base} vs {want_base}")
        if index != want_index:
            problems.append(f"index {index} vs {want_index}")
        if index is not None and scale != op.scale:
            problems.append(f"scale {scale} vs {op.scale}")
    if problems:
        raise DecodeError("decoder-disagreement",
                          f"capstone and vmxaddr read {shape_raw.hex()} ({code_size}-bit) differently: "
                          + ", ".join(problems) + " — please report it")
