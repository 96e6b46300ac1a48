"""Public hypothesis strategies for testing your own hypervisor logic against vmxaddr.

    from hypothesis import given
    from vmxaddr.strategies import cases
    from vmxaddr.models import sdm

    @given(cases())
    def test_my_hypervisor(case):
        exit, state, access = case.exit, case.state, case.access
        mine = my_get_vmx_mem_address(exit, state, access)     # your port, same inputs
        ref = sdm(exit, state, access)
        assert ref.outcome.accepts(mine.outcome)
        if ref.outcome.kind == "ok":
            assert mine.linear_address == ref.linear_address

Strategies:
  encodings(code_sizes, mnemonics, rex2)
                                    -> (bytes, code_size) of a valid VMX-family instruction
                                       (mnemonics=ALL_MNEMONICS adds INS/OUTS, TPAUSE, UMWAIT,
                                       LOADIWKEY; rex2 > 0 gives that share of 64-bit encodings
                                       an APX REX2 prefix naming R16-R31)
  instructions(...)                 -> decoded vmxaddr.decode.Instruction
  cpu_states(code_size)             -> CpuState weighted toward edges (flat, expand-down,
                                       unusable, large bases, limits near the access, registers
                                       near 2^16/2^32/2^47/2^56, LA57)
  policies()                        -> exit-information policies (exit-qualification upper bits,
                                       undefined bits)
  cases(...)                        -> vmxaddr.case.Case (instruction + state + policy)
All shrink toward the plain case: no prefixes, small registers, flat segments.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from vmxaddr.case import Case
from vmxaddr.decode import Instruction, decode
from vmxaddr.exitinfo import DEFAULT_POLICY, Policy
from vmxaddr.gen import MEMORY_MNEMONICS, DrawChooser, gen_encoding, gen_policy, gen_state
from vmxaddr.state import CpuState


@st.composite
def encodings(draw: st.DrawFn, code_sizes: Sequence[int] = (16, 32, 64),
              mnemonics: Sequence[str] = MEMORY_MNEMONICS, rex2: float = 0.0) -> tuple[bytes, int]:
    """Hypothesis strategy: (bytes, code size) of a VMX-family instruction, shrinking toward the
    plain forms."""
    return gen_encoding(DrawChooser(draw), code_sizes, mnemonics, rex2=rex2)


@st.composite
def instructions(draw: st.DrawFn, code_sizes: Sequence[int] = (16, 32, 64),
                 mnemonics: Sequence[str] = MEMORY_MNEMONICS, rex2: float = 0.0) -> Instruction:
    """Hypothesis strategy: a decoded VMX-family instruction."""
    raw, cs = draw(encodings(code_sizes, mnemonics, rex2))
    return decode(raw, cs)


@st.composite
def cpu_states(draw: st.DrawFn, code_size: int = 32, weird_modes: float = 0.03) -> CpuState:
    """Hypothesis strategy: a CPU state for `code_size` code, leaning on edge values."""
    return gen_state(DrawChooser(draw), code_size, weird_modes)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Hypothesis strategy: an encoder policy."""
    return gen_policy(DrawChooser(draw))


@st.composite
def cases(draw: st.DrawFn, code_sizes: Sequence[int] = (16, 32, 64), mnemonics: Sequence[str] = MEMORY_MNEMONICS,
          policy: Policy | None = DEFAULT_POLICY, weird_modes: float = 0.03) -> Case:
    """A case; `policy=None` draws the policy too."""
    ch = DrawChooser(draw)
    raw, cs = gen_encoding(ch, code_sizes, mnemonics)
    state = gen_state(ch, cs, weird_modes)
    return Case(decode(raw, cs), state, policy if policy is not None else gen_policy(ch))
