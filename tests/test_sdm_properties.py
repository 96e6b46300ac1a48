"""Properties of the SDM reference model over generated cases."""

from dataclasses import replace

from hypothesis import given, settings

from vmxaddr.exitinfo import Policy
from vmxaddr.models import sdm
from vmxaddr.strategies import cases


@settings(max_examples=600, deadline=None)
@given(cases())
def test_effective_address_fits_address_size(case):
    r = case.run(sdm)
    if r.effective_address is not None:
        assert 0 <= r.effective_address < 1 << case.instruction.operand.address_size
    if r.linear_address is not None and case.state.mode != "64-bit":
        assert r.linear_address < 1 << 32


@settings(max_examples=600, deadline=None)
@given(cases())
def test_outcome_ignores_undefined_bits_and_upper_qualification_bits(case):
    """The SDM makes those bits undefined, so no answer may depend on them."""
    plain = case.run(sdm)
    for seed in (1, 2):
        for eq in ("sign-extend", "random-upper"):
            noisy = replace(case, policy=Policy(exit_qual=eq, undefined_bits="random", seed=seed)).run(sdm)
            assert noisy.outcome.same_as(plain.outcome)
            assert noisy.effective_address == plain.effective_address
            assert noisy.linear_address == plain.linear_address


@settings(max_examples=500, deadline=None)
@given(cases())
def test_explain_does_not_change_the_answer(case):
    quiet, loud = case.run(sdm), case.run(sdm, explain=True)
    assert quiet.outcome.same_as(loud.outcome) and quiet.outcome.rule == loud.outcome.rule
    assert quiet.linear_address == loud.linear_address
    assert quiet.steps == ()
