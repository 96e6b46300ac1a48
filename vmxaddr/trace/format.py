"""The trace format's vocabulary (docs/trace-format.md): keys, exit reasons, and the records a
line becomes once parsed (`ExitRecord`, with the hypervisor's answer as `Recorded`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NotRequired, TypedDict

from vmxaddr.isa import SPECS
from vmxaddr.layouts import INSTRUCTION_INFO, IO_QUALIFICATION, field
from vmxaddr.models.base import OK
from vmxaddr.state import CpuState

MASK64 = (1 << 64) - 1
MAX_LINE = 1 << 20  # longer lines are reported as malformed and skipped without being held
DEFAULT_MAX_STATES = 4096
VECTORS = ("UD", "GP", "SS")

# basic exit reason -> the instructions reporting it (SDM Vol. 3D Appendix C); 46 and 47 are
# shared, and bits 29:28 of the instruction-information field say which one it was.
REASON_INSTRUCTIONS: dict[int, tuple[str, ...]] = {}
for _m, _s in SPECS.items():
    REASON_INSTRUCTIONS.setdefault(_s.exit_reason, ())
    REASON_INSTRUCTIONS[_s.exit_reason] += (_m,)
_IDENTITY = {s.exit_reason: {} for s in SPECS.values() if s.identity is not None}
for _m, _s in SPECS.items():
    if _s.identity is not None:
        _IDENTITY[_s.exit_reason][_s.identity] = _m

# Linux's names for these exit reasons (VMX_EXIT_REASONS in arch/x86/include/uapi/asm/vmx.h),
# as the kvm_exit / kvm_nested_vmexit tracepoints print them.
KVM_REASON_NAMES = {"VMCLEAR": 19, "VMPTRLD": 21, "VMPTRST": 22, "VMREAD": 23, "VMWRITE": 25, "VMON": 27,
                    "GDTR_IDTR": 46, "LDTR_TR": 47, "INVEPT": 50, "INVVPID": 53, "RDRAND": 57, "INVPCID": 58,
                    "RDSEED": 61, "XSAVES": 63, "XRSTORS": 64}

EXIT_KEYS = frozenset(("type", "exit_reason", "instruction", "rip", "bytes", "code_size", "instruction_info",
                       "extended_instruction_info", "exit_qualification", "length", "state", "state_ref", "result",
                       "vcpu", "source"))
STATE_KEYS = frozenset(("type", "id", "state", "state_ref", "source"))
RESULT_KEYS = frozenset(("kind", "vector", "error_code", "linear_address"))


class RecordError(ValueError):
    """A line that is not a valid trace record; the message says why."""


# -- verdicts ------------------------------------------------------------------------------------
class HardwareVerdict(StrEnum):
    """check-trace's verdict on what the processor reported (docs/trace-format.md)."""

    CONSISTENT = "consistent"
    EXPLAINED = "explained"  # a documented departure of the processor the record names
    INCONSISTENT = "inconsistent"
    NOT_CHECKABLE = "not-checkable"

class HypervisorVerdict(StrEnum):
    """check-trace's verdict on the hypervisor's answer against the reference model."""

    CORRECT = "correct"
    WRONG = "wrong"
    NOT_CHECKABLE = "not-checkable"

class FingerprintVerdict(StrEnum):
    """check-trace's verdict on which registered models give the recorded answer."""

    MATCHED = "matched"
    UNMATCHED = "unmatched"
    NOT_CHECKABLE = "not-checkable"
    SKIPPED = "skipped"  # no registered model besides the reference, or fingerprints turned off


# The same values as types (tests/test_enums.py holds each Literal equal to its enum): the checker
# builds one of each dict per exit record, so they stay plain dicts of plain strings.

HardwareVerdictName = Literal["consistent", "explained", "inconsistent", "not-checkable"]
HypervisorVerdictName = Literal["correct", "wrong", "not-checkable"]
FingerprintVerdictName = Literal["matched", "unmatched", "not-checkable", "skipped"]


class HardwareCheck(TypedDict):
    """The "hardware" verdict of an exit record (trace.hardware.check_hardware)."""

    verdict: HardwareVerdictName
    decoded: NotRequired[str]  # the instruction the bytes are
    missing: NotRequired[list[str]]  # not-checkable: what the record lacks
    differences: NotRequired[list[dict[str, Any]]]  # field, recorded, expected, detail or bits
    unchecked: NotRequired[list[str]]  # fields present but not checkable (e.g. RIP-relative without rip)


class HypervisorCheck(TypedDict):
    """The "hypervisor" verdict of an exit record (trace.hypervisor.check_hypervisor)."""

    verdict: HypervisorVerdictName
    against: NotRequired[str]  # the reference model
    recorded: NotRequired[dict[str, Any]]  # the record's result
    expected: NotRequired[dict[str, Any]]  # the reference's answer, with its reason
    missing: NotRequired[list[str]]


class FingerprintCheck(TypedDict):
    """The "fingerprint" verdict of an exit record: the registered models giving its answer."""

    verdict: FingerprintVerdictName
    models: NotRequired[list[str]]
    missing: NotRequired[list[str]]
    reason: NotRequired[str]


# -- records -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Recorded:
    """What the hypervisor did: went on with `linear_address` (kind "ok") or injected a fault."""

    kind: str
    vector: str | None = None
    error_code: int | None = None
    linear_address: int | None = None

    def short(self) -> str:
        """The recorded answer in short form: "ok 0x1000", "#GP(0)"."""
        if self.kind == OK:
            return "ok" if self.linear_address is None else f"ok {self.linear_address:#x}"
        code = "" if self.error_code is None else f"({self.error_code})"
        return f"#{self.vector}{code}"

    def to_json(self) -> dict[str, Any]:
        """The recorded answer as a trace's "result" object."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == OK:
            if self.linear_address is not None:
                d["linear_address"] = hex(self.linear_address)
        else:
            d["vector"] = self.vector
            if self.error_code is not None:
                d["error_code"] = self.error_code
        return d


@dataclass(frozen=True, slots=True)
class ExitRecord:
    """One exit record of a trace, parsed: what the processor reported, the bytes and state, the
    hypervisor's answer."""
    line: int
    exit_reason: int
    instruction: str | None  # None: reason 46/47 without the instruction-information field
    rip: int | None
    raw: bytes | None
    code_size: int | None
    instruction_info: int | None
    exit_qualification: int | None
    length: int | None
    state: CpuState | None
    state_problem: str | None  # why `state` is None although the record referred to one
    result: Recorded | None
    extended_info: int | None = None  # APX extended instruction-information field (vmxaddr.apx)
    processor: str | None = None  # source.processor: whose documented quirks the hardware check explains



def resolve_instruction(exit_reason: int, instruction_info: int | None,
                        exit_qualification: int | None = None) -> str | None:
    """The instruction an exit reason names, using the instruction information or qualification
    where the reason is shared; None when they do not say."""
    names = REASON_INSTRUCTIONS[exit_reason]
    if len(names) == 1:
        return names[0]
    if exit_reason == 30:  # I/O instruction: the qualification's direction bit says INS or OUTS
        if exit_qualification is None or not exit_qualification & _STRING.mask:
            return None  # not given, or IN/OUT (not a string instruction: no instruction information)
        return "ins" if exit_qualification & _DIRECTION.mask else "outs"
    if instruction_info is None:
        return None
    return _IDENTITY[exit_reason][(instruction_info & _IDENTITY_FIELD.mask) >> _IDENTITY_FIELD.lo]


_STRING = field(IO_QUALIFICATION, "string instruction")
_DIRECTION = field(IO_QUALIFICATION, "direction")  # 1 = IN
_IDENTITY_FIELD = field(INSTRUCTION_INFO["dt"], "identity")

