"""The compiled models (setup.py, mypyc) answer exactly as the pure-Python ones, and a build
made from another source is never used. Passes under VMXADDR_PURE=1 too (the compiled copies
are then loaded directly, and the registry must hold the pure-Python models); after an edit to
models/sdm.py or kvm.py it fails saying to reinstall."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

import vmxaddr.models.native as N
import vmxaddr.models.registry as M
from vmxaddr.diff import exit_and_access
from vmxaddr.exitinfo import Policy
from vmxaddr.fuzz import gen_case
from vmxaddr.gen import VMX_MNEMONICS, RandomChooser, gen_policy
from vmxaddr.models import kvm as kvm_pure
from vmxaddr.models.base import InvalidExitInfo

sdm_pure = N._sdm_pure


def _outcome_of(model, exit, state, access, explain):
    try:
        return model(exit, state, access, explain=explain)
    except InvalidExitInfo as e:
        return ("invalid", str(e))


def _compiled_or_skip(name: str):
    mod, problem = M.compiled(name)
    if mod is None:
        pytest.skip(problem)  # fails under CI=true (tests/ci_policy.py)
    if problem:
        pytest.fail(problem)
    return mod


def test_native_models_answer_as_the_pure_ones():
    sdm_c, kvm_c = _compiled_or_skip("sdm"), _compiled_or_skip("kvm")
    assert sdm_c.sdm is not sdm_pure.sdm and sdm_c.sdm.__module__ == "vmxaddr._native.sdm"
    natives = {name: f for name, (f, _) in kvm_c.REGISTERED.items()} | {"sdm": sdm_c.sdm}
    pures = {name: f for name, (f, _) in kvm_pure.REGISTERED.items()} | {"sdm": sdm_pure.sdm}
    assert natives.keys() == pures.keys()
    ch = RandomChooser(random.Random(11))
    for i in range(1500):
        policy = gen_policy(ch) if i % 3 == 0 else Policy()
        case = gen_case(ch, VMX_MNEMONICS, policy)
        exit, access = exit_and_access(case.instruction, case.state.rip, policy)
        for name, native in natives.items():
            for explain in (False, True):
                assert _outcome_of(native, exit, case.state, access, explain) == \
                    _outcome_of(pures[name], exit, case.state, access, explain), (name, case.instruction.raw.hex())


def _expected_native() -> tuple[str, ...]:
    """Which models should run compiled, found without vmxaddr.models.compiled(): those whose
    compiled extension vmxaddr._native.<name> (a .so) holds in its bytes the SHA-256 of today's
    models/<name>.py (setup.py appends it to the copy it compiles, as SOURCE_SHA256), unless
    VMXADDR_PURE is set."""
    import importlib.util

    if os.environ.get("VMXADDR_PURE"):
        return ()
    out = []
    for name in ("sdm", "kvm"):
        digest = hashlib.sha256((Path(M.__file__).parent / f"{name}.py").read_bytes()).hexdigest().encode()
        try:  # where Python finds the compiled copy (an editable install may put it elsewhere)
            spec = importlib.util.find_spec(f"vmxaddr._native.{name}")
        except ImportError:
            spec = None
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is None or origin.suffix not in (".so", ".pyd"):
            continue
        # mypyc compiling several modules puts their code (and literals) in one shared library,
        # <hash>__mypyc.*.so, beside the top package; the module's own .so only loads it
        code = [origin, *origin.parents[2].glob("*__mypyc*")]
        if any(digest in f.read_bytes() for f in code):
            out.append(name)
    return tuple(out)


def test_the_registry_runs_what_the_environment_asks():
    expected = _expected_native()
    assert M.NATIVE == expected
    assert (M.get("sdm") is sdm_pure.sdm) == ("sdm" not in expected)
    assert M.get("sdm").__module__ == ("vmxaddr._native.sdm" if "sdm" in expected else "vmxaddr.models.sdm")
    kvm_current = M.get("kvm-current")
    assert (kvm_current is kvm_pure.REGISTERED["kvm-current"][0]) == ("kvm" not in expected)


def test_a_build_from_another_source_is_not_used(monkeypatch, tmp_path):
    # _native() compares the compiled copy's SOURCE_SHA256 with the source beside the package
    monkeypatch.delenv("VMXADDR_PURE", raising=False)

    class Fake:
        __file__ = str(tmp_path / "sdm.cpython-311-x86_64-linux-gnu.so")
        SOURCE_SHA256 = hashlib.sha256(b"an older sdm.py").hexdigest()

    monkeypatch.setattr(N.importlib, "import_module", lambda name: Fake)
    assert N.native("sdm") is None
    # the message tells the user what to do, not a bare set comparison
    problem = M.compiled("sdm")[1]
    assert problem and "models/sdm.py changed" in problem and "reinstall" in problem
    Fake.SOURCE_SHA256 = hashlib.sha256((N.Path(N.__file__).with_name("sdm.py")).read_bytes()).hexdigest()
    assert N.native("sdm") is Fake and M.compiled("sdm") == (Fake, None)
    monkeypatch.setenv("VMXADDR_PURE", "1")
    assert N.native("sdm") is None
