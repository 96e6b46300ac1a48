"""`trace import --from ftrace`: exit records from kvm_exit / kvm_nested_vmexit tracepoint lines."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vmxaddr.trace.format import KVM_REASON_NAMES, MAX_LINE, REASON_INSTRUCTIONS

# kvm_exit (and kvm_nested_vmexit since Linux 6.12, which shares its format):
#   "vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info 0x%08x error_code 0x%08x"
# earlier kvm_exit: "vcpu %u reason %s rip 0x%lx info %llx %llx" (and without "vcpu %u" before ~3.x)
# earlier kvm_nested_vmexit:
#   "rip: 0x%016llx reason: %s%s%s ext_inf1: 0x%016llx ext_inf2: 0x%016llx ext_int: 0x%08x ext_int_err: 0x%08x"
_EVENT = re.compile(r"(?:^|\s)(kvm_exit|kvm_nested_vmexit):\s+(.*)$")
_TIME = re.compile(r"\s(\d+\.\d+):\s+kvm_(?:nested_vm)?exit:")
_NEW = re.compile(r"^(?:vcpu (?P<vcpu>\d+) )?reason (?P<reason>\S+)(?P<flags>(?: [A-Z_]+)*) rip 0x(?P<rip>[0-9a-fA-F]+) "
                  r"(?:info1 0x(?P<info1>[0-9a-fA-F]+) info2 0x(?P<info2>[0-9a-fA-F]+)"
                  r"(?: intr_info 0x(?P<intr>[0-9a-fA-F]+) error_code 0x(?P<err>[0-9a-fA-F]+))?"
                  r"|info (?P<oinfo1>[0-9a-fA-F]+) (?P<oinfo2>[0-9a-fA-F]+))")
_OLD_NESTED = re.compile(r"^rip: 0x(?P<rip>[0-9a-fA-F]+) reason: (?P<reason>\S+)(?P<flags>(?: [A-Z_]+)*) "
                         r"ext_inf1: 0x(?P<info1>[0-9a-fA-F]+) ext_inf2: 0x(?P<info2>[0-9a-fA-F]+)")


def _reason(name: str) -> int | None:
    if name.upper() in KVM_REASON_NAMES:
        return KVM_REASON_NAMES[name.upper()]
    try:  # __print_symbolic prints an unnamed value as a number
        n = int(name, 0)
    except ValueError:
        return None
    return n if n in REASON_INSTRUCTIONS else None


def _hex64(text: str, what: str) -> int:
    """A %llx / %lx field: at most 64 bits (the tracepoints print u64 values)."""
    digits = text.lstrip("0")
    if len(digits) > 16:
        raise ValueError(f"{what} 0x{text[:20]}{'…' if len(text) > 20 else ''} ({len(text)} hex digits) does not fit "
                         "in 64 bits")
    return int(digits or "0", 16)


def import_ftrace(lines: Iterable[str | None], problems: Callable[[int, str], None]) -> Iterator[dict[str, Any]]:
    """Exit records from the kvm_exit / kvm_nested_vmexit lines of a trace-cmd report or tracefs
    `trace` text; other events and exits of other reasons are skipped. The tracepoints carry the
    exit reason, RIP and exit qualification (info1), not the instruction-information field, the
    bytes or the state, so most checks of the result are "not checkable". A line given as None
    was too long to hold (reported, skipped); a field out of its range (vcpu %u: 32 bits; rip,
    info1, info2: 64 bits) is reported and its line skipped, so every record written is valid."""
    for n, text in enumerate(lines, 1):
        if text is None:
            problems(n, f"longer than {MAX_LINE} bytes: skipped")
            continue
        try:
            rec = _record(n, text)
        except ValueError as e:
            problems(n, str(e))
            continue
        if rec is not None:
            yield rec


def _record(n: int, line: str) -> dict[str, Any] | None:
    """The record of one line (None: not an exit of a VMX-family instruction); ValueError says
    what is wrong with a kvm_exit line that cannot be imported."""
    m = _EVENT.search(line.rstrip("\n"))
    if not m:
        return None
    event, body = m.group(1), m.group(2).strip()
    f = _NEW.match(body) or _OLD_NESTED.match(body)
    if not f:
        raise ValueError(f"{event} line in a format this importer does not know: {body[:80]!r}")
    g = f.groupdict()
    if g.get("flags", "").strip():
        return None  # FAILED_VMENTRY: not an exit caused by the instruction
    reason = _reason(g["reason"])
    if reason is None:
        return None
    info1 = g.get("info1") or g.get("oinfo1")
    info2 = g.get("info2") or g.get("oinfo2")
    rec: dict[str, Any] = {"type": "exit", "exit_reason": reason}
    names = REASON_INSTRUCTIONS[reason]
    if len(names) == 1:
        rec["instruction"] = names[0]
    rec["rip"] = hex(_hex64(g["rip"], "rip"))
    if info1 is not None:
        rec["exit_qualification"] = hex(_hex64(info1, "info1 (the exit qualification)"))
    source: dict[str, Any] = {"format": "ftrace", "line": n, "event": event}
    if g.get("vcpu") is not None:
        vcpu = g["vcpu"].lstrip("0") or "0"
        if len(vcpu) > 10 or int(vcpu) > 0xFFFFFFFF:
            raise ValueError(f"vcpu {vcpu[:12]}{'…' if len(vcpu) > 12 else ''} ({len(vcpu)} digits) is not a "
                             "32-bit number")
        rec["vcpu"] = int(vcpu)
    t = _TIME.search(line)
    if t:
        source["timestamp"] = t.group(1)
    if info2 is not None:
        source["info2"] = hex(_hex64(info2, "info2"))
    rec["source"] = source
    return rec

