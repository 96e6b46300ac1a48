"""The compiled models (setup.py, mypyc) answer exactly as the pure-Python ones, and a build
made from another source is never used."""

from __future__ import annotations

import hashlib
import random

import pytest

import vmxaddr.models as M
from vmxaddr.diff import exit_and_access
from vmxaddr.exitinfo import Policy
from vmxaddr.fuzz import gen_case
from vmxaddr.gen import VMX_MNEMONICS, RandomChooser, gen_policy
from vmxaddr.models import kvm as kvm_pure
from vmxaddr.models.base import InvalidExitInfo

sdm_pure = M._sdm_pure


def _outcome_of(model, exit, state, access, explain):
    try:
        return model(exit, state, access, explain=explain)
    except InvalidExitInfo as e:
        return ("invalid", str(e))


@pytest.mark.skipif(not M.NATIVE, reason="the models were not compiled (no mypyc or C compiler at install)")
def test_native_models_answer_as_the_pure_ones():
    assert set(M.NATIVE) == {"sdm", "kvm"}
    assert M.get("sdm") is not sdm_pure.sdm and M.get("sdm").__module__ == "vmxaddr._native.sdm"
    natives = {name: M.get(name) for name in kvm_pure.REGISTERED} | {"sdm": M.get("sdm")}
    pures = {name: f for name, (f, _) in kvm_pure.REGISTERED.items()} | {"sdm": sdm_pure.sdm}
    ch = RandomChooser(random.Random(11))
    for i in range(1500):
        policy = gen_policy(ch) if i % 3 == 0 else Policy()
        case = gen_case(ch, VMX_MNEMONICS, policy)
        exit, access = exit_and_access(case.instruction, case.state.rip, policy)
        for name, native in natives.items():
            for explain in (False, True):
                assert _outcome_of(native, exit, case.state, access, explain) == \
                    _outcome_of(pures[name], exit, case.state, access, explain), (name, case.instruction.raw.hex())


def test_a_build_from_another_source_is_not_used(monkeypatch, tmp_path):
    # _native() compares the compiled copy's SOURCE_SHA256 with the source beside the package
    class Fake:
        __file__ = str(tmp_path / "sdm.cpython-311-x86_64-linux-gnu.so")
        SOURCE_SHA256 = hashlib.sha256(b"an older sdm.py").hexdigest()

    monkeypatch.setattr(M.importlib, "import_module", lambda name: Fake)
    assert M._native("sdm") is None
    Fake.SOURCE_SHA256 = hashlib.sha256((M.Path(M.__file__).with_name("sdm.py")).read_bytes()).hexdigest()
    assert M._native("sdm") is Fake
    monkeypatch.setenv("VMXADDR_PURE", "1")
    assert M._native("sdm") is None
