"""Replay the hand-derived cases of corpus/curated/sdm.json through decode -> encode -> SDM model.

Every expected value there was worked by hand (the 'derivation' field of each case)."""

import pytest
from corpus_util import load, make_case, outcome_text

from vmxaddr.models import sdm

CASES = load("curated/sdm.json")


@pytest.mark.parametrize("c", CASES, ids=[c["id"] for c in CASES])
def test_case(c):
    case = make_case(c)
    exit = case.exit
    result = case.run(sdm, explain=True)
    exp = c["expect"]
    got = {
        "mnemonic": case.instruction.mnemonic,
        "instruction_info": exit.instruction_info,
        "exit_qualification": exit.exit_qualification,
        "segment": result.segment,
        "effective_address": result.effective_address,
        "linear_address": result.linear_address,
    }
    for key, want in exp.items():
        if key == "outcome":
            assert outcome_text(result.outcome) == want, result.outcome
        elif isinstance(want, str) and want.startswith("0x"):
            assert got[key] == int(want, 16), f"{key}: {got[key]:#x} != {want}"
        else:
            assert got[key] == want, key
    assert result.steps or result.outcome.reason, "explain=True must record the steps"
