"""Encoder x consumer: run a consumer model on exit information from any encoder, compare with
the reference on the SDM's exit information, and say which side caused a divergence.

    got = consumer(encoder(instr, rip, policy), state, access)       # e.g. KVM on VirtualBox
    ref = reference(sdm_encoder(instr, rip, policy), state, access)  # the SDM on real hardware

Attribution, in this order:
  1. the encoder: its exit information differs from the SDM encoder's on a bit the SDM defines
     (class "encoder <name>: <field> differs from the SDM", with "(address and faults unaffected)"
     when the two answers agree). This counts even when they agree: a wrong reg1/reg2 or operand
     size misleads the hypervisor in ways the address computation does not show (which register
     VMREAD writes, which VMCS field it reads). When the answers differ, the encoder is blamed
     only if the consumer is right on the SDM's information and a field the address uses
     (ADDRESS_FIELDS) is wrong; a consumer wrong on its own keeps its own class (3);
  2. the consumer reading undefined bits: the consumer agrees with the reference when given the
     SDM encoder's information, so only bits the SDM leaves undefined differ, and the consumer
     read them (class "consumer reads ... (written by <name>)");
  3. the consumer: it already diverges on the SDM encoder's information (class "consumer: " + the
     consumer's own class; just the consumer's class when the encoder is the SDM's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmxaddr.case import Case, run_model
from vmxaddr.encoders import get_encoder
from vmxaddr.exitinfo import MASK64, ExitInfo, fields
from vmxaddr.models.base import FAULT, IMPL, Access, Model, Result
from vmxaddr.state import CpuState

# Fields in the order a consumer uses them; "exit qualification" is the defined low bits.
_ORDER = ("exit qualification", "mem/reg", "address size", "segment", "base invalid", "base", "index invalid",
          "index", "scaling", "reg1", "reg", "reg2", "identity", "operand size", "cleared to 0")

# Fields that take part in the address computation (the others name registers or sizes).
ADDRESS_FIELDS = frozenset(("exit qualification", "mem/reg", "address size", "segment", "base invalid", "base",
                            "index invalid", "index", "scaling"))

ENCODER = "encoder"
CONSUMER = "consumer"
CONSUMER_UNDEFINED = "consumer-undefined"


def agree(ref: Result, other: Result) -> bool:
    """Same acceptance rule as the differential engine: outcomes first, then linear addresses."""
    a, b = ref.outcome, other.outcome
    if a.kind == IMPL or b.kind == IMPL:
        ok = a.accepts(b) if a.kind == IMPL else b.accepts(a)
    else:
        ok = a.same_as(b)
    if not ok:
        return False
    if FAULT in (a.kind, b.kind):
        return True
    return ref.linear_address is None or other.linear_address is None or ref.linear_address == other.linear_address


def qualification_mask(case: Case) -> int:
    """Bits of the exit qualification the SDM defines for this instruction: those within the
    address size ("in all cases, bits of this field beyond the instruction's address size are
    undefined", RIP-relative included); none for a register operand (the SDM stores zero there,
    but no consumer needs it)."""
    op = case.instruction.operand
    if op is None:
        return 0
    return (1 << op.address_size) - 1


def defined_differences(case: Case, got: ExitInfo, sdm: ExitInfo) -> list[str]:
    """The SDM-defined fields where `got` differs from the SDM encoder's `sdm`, in _ORDER."""
    diffs: set[str] = set()
    qmask = qualification_mask(case)
    if (got.exit_qualification ^ sdm.exit_qualification) & qmask:
        diffs.add("exit qualification")
    cs = case.instruction.code_size
    mine = {(f.name, f.lo): f.value for f in fields(got.instruction_info, got.instruction, cs)}
    for f in fields(sdm.instruction_info, sdm.instruction, cs):
        if f.defined and mine.get((f.name, f.lo)) != f.value:
            diffs.add(f.name)
    return sorted(diffs, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER))


def undefined_differences(case: Case, got: ExitInfo, sdm: ExitInfo) -> list[str]:
    """Which undefined parts of the exit information the encoder wrote differently from the SDM
    encoder (bits above the address size, undefined info bits)."""
    out = []
    if (got.exit_qualification ^ sdm.exit_qualification) & ~qualification_mask(case) & MASK64:
        out.append("exit-qualification bits above the address size")
    if got.instruction_info != sdm.instruction_info:
        out.append("undefined instruction-information bits")
    return out


@dataclass(frozen=True)
class Cross:
    """One case through an encoder and a consumer, beside the reference on the SDM encoder's information, with the side blamed."""
    encoder: str
    exit: ExitInfo  # from the encoder, given to the consumer
    sdm_exit: ExitInfo  # from the SDM encoder, given to the reference
    got: Result  # consumer on the encoder's information
    ref: Result  # reference on the SDM's information
    mid: Result | None  # consumer on the SDM's information (computed for a consumer-side divergence)
    side: str | None  # None when they agree; else ENCODER, CONSUMER_UNDEFINED or CONSUMER
    klass: str | None
    fields: tuple[str, ...] = ()  # the defined fields the encoder got wrong (side ENCODER)


ConsumerClassifier = Callable[[ExitInfo, CpuState, Access, Result, Result], str]


def attribute(case: Case, encoder: str, exit: ExitInfo, sdm_exit: ExitInfo, got: Result, ref: Result, model: Model,
              classify_consumer: ConsumerClassifier | None = None) -> tuple[str | None, str | None, tuple[str, ...], Result | None]:
    """(side, class, wrong fields, consumer-on-SDM-result) for answers already computed: `got` is
    the consumer on `exit` (the encoder's), `ref` the reference on `sdm_exit`."""
    wrong = defined_differences(case, exit, sdm_exit) if encoder != "sdm" else []
    same = agree(ref, got)
    if wrong and same:
        return ENCODER, f"encoder {encoder}: {wrong[0]} differs from the SDM (address and faults unaffected)", tuple(wrong), None
    if same:
        return None, None, (), None
    mid = run_model(model, sdm_exit, case.state, case.access)
    right_on_sdm = agree(ref, mid)
    if right_on_sdm and set(wrong) & ADDRESS_FIELDS:
        # The consumer is right on the SDM's bits and a field the address uses is wrong.
        first = next(f for f in wrong if f in ADDRESS_FIELDS)
        return ENCODER, f"encoder {encoder}: {first} differs from the SDM", tuple(wrong), mid
    if right_on_sdm:
        what = undefined_differences(case, exit, sdm_exit)
        return (CONSUMER_UNDEFINED, f"consumer reads {what[0] if what else 'undefined bits'} (as written by {encoder})",
                (), mid)
    own = classify_consumer(sdm_exit, case.state, case.access, ref, mid) if classify_consumer else "differs"
    # With the SDM as encoder there is only one side; the prefix is for the cross product.
    return CONSUMER, own if encoder == "sdm" else f"consumer: {own}", (), mid


def cross(case: Case, encoder: str, model: Model, reference: Model,
          classify_consumer: ConsumerClassifier | None = None) -> Cross:
    """Run `model` on `encoder`'s exit information for `case` and `reference` on the SDM's."""
    instr, state = case.instruction, case.state
    sdm_exit = get_encoder("sdm")(instr, state.rip, case.policy)
    exit = get_encoder(encoder)(instr, state.rip, case.policy)
    access = case.access
    got = run_model(model, exit, state, access)
    ref = run_model(reference, sdm_exit, state, access)
    side, klass, wrong, mid = attribute(case, encoder, exit, sdm_exit, got, ref, model, classify_consumer)
    return Cross(encoder, exit, sdm_exit, got, ref, mid, side, klass, wrong)
