"""Replay corpus/curated/issue16.json (hand-derived: each case's 'derivation') through decode ->
encode -> SDM model, including the APX extended field and the INS/OUTS guest-linear address."""

import pytest
from corpus_util import load, make_case, outcome_text

from vmxaddr.models import sdm

CASES = load("curated/issue16.json")


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_case(c):
    case = make_case(c)
    exit = case.exit
    result = case.run(sdm, explain=True)
    got = {
        "mnemonic": case.instruction.mnemonic,
        "instruction_info": exit.instruction_info,
        "extended_instruction_info": exit.extended_info,
        "guest_linear_address": exit.guest_linear_address,
        "exit_qualification": exit.exit_qualification,
        "segment": result.segment,
        "effective_address": result.effective_address,
        "linear_address": result.linear_address,
    }
    for key, want in c["expect"].items():
        if key == "outcome":
            assert outcome_text(result.outcome) == want, result.outcome
        elif isinstance(want, str) and want.startswith("0x"):
            assert got[key] == int(want, 16), f"{key}: {got[key]} != {want}"
        else:
            assert got[key] == want, key
    assert c["rule"] in {s.rule for s in result.steps} | {result.outcome.rule}
