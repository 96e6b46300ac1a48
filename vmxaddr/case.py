"""One case: an instruction executed in a CPU state, seen through an encoder policy.

The steps every command shares: bytes -> Instruction (decode) -> ExitInfo (the
processor's report, exitinfo.encode) -> Result (a model, from the exit info and state only).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from vmxaddr.decode import Instruction, decode
from vmxaddr.exitinfo import DEFAULT_POLICY, ExitInfo, Policy, encode
from vmxaddr.models.base import Access, Model, Result
from vmxaddr.state import CpuState


@dataclass(frozen=True, slots=True)
class Case:
    """One case: a decoded instruction, the CPU state it runs in, and the policy for what the SDM leaves undefined."""
    instruction: Instruction
    state: CpuState
    policy: Policy = DEFAULT_POLICY

    @classmethod
    def from_bytes(cls, raw: bytes, state: CpuState, policy: Policy = DEFAULT_POLICY) -> Case:
        """Decode `raw` in the state's code size (DecodeError when it is not a VMX-family instruction)."""
        return cls(decode(raw, state.code_size), state, policy)

    @property
    def exit(self) -> ExitInfo:
        """The exit information the SDM's processor reports for this case (instruction information, qualification, length)."""
        return encode(self.instruction, self.state.rip, self.policy, self.state)

    @property
    def access(self) -> Access:
        """The memory access the instruction makes (size in bytes, read or write)."""
        return access_of(self.instruction)

    def run(self, model: Model, explain: bool = False) -> Result:
        """Run `model` on this case's exit information and state; with `explain`, ask for the steps too."""
        return run_model(model, self.exit, self.state, self.access, explain)


def access_of(instr: Instruction) -> Access:
    """The memory access of `instr`'s operand (size, read/write); Access(0, False) for a register form."""
    op = instr.operand
    if op is None:
        return Access(0, False)
    return Access(op.access_size, op.access == "write")


def takes_explain(model: Model) -> bool:
    """Does the model accept explain=True (the built-in ones do; a user's may not)?"""
    try:
        key = model
        cached = _TAKES_EXPLAIN.get(key)
    except TypeError:
        key, cached = None, None
    if cached is None:
        try:
            params = inspect.signature(model).parameters
            cached = "explain" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            cached = False
        if key is not None:
            _TAKES_EXPLAIN[key] = cached
    return cached


_TAKES_EXPLAIN: dict[Any, bool] = {}


def run_model(model: Model, exit: ExitInfo, state: CpuState, access: Access, explain: bool = False) -> Result:
    """Call `model` as a hypervisor would, passing `explain=True` only to a model whose signature takes it."""
    if explain and takes_explain(model):
        return model(exit, state, access, explain=True)
    return model(exit, state, access)


def case_json(case: Case, exit: ExitInfo, result: Result) -> dict[str, Any]:
    """The object `vmxaddr explain --json` prints."""
    ins = case.instruction
    obj = ins.to_json()
    obj.update({
        "instruction_info": exit.instruction_info,
        "exit_qualification": exit.exit_qualification,
        "exit_reason": exit.exit_reason,
        **({"extended_instruction_info": exit.extended_info} if exit.extended_info is not None else {}),
        **({"guest_linear_address": exit.guest_linear_address} if exit.guest_linear_address is not None else {}),
        "policy": {"exit_qual": case.policy.exit_qual, "undefined_bits": case.policy.undefined_bits,
                   "ignored_segment": case.policy.ignored_segment, "si_di": case.policy.si_di},
    })
    obj.update(result.to_json())
    return obj
