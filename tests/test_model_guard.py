"""User models (`--model package.module:function`, `--against`) in explain, diff and cross: whatever
the module or function does is one line naming the model, what it did and the case, exit status 2
(issue 13, item 6); `--debug` adds the traceback. vmxaddr.models.guard is the helper the fuzz and
trace commands share."""

from __future__ import annotations

import pickle
import textwrap

import pytest

from vmxaddr.case import Case
from vmxaddr.cli import main
from vmxaddr.models import UnknownModel, get, sdm
from vmxaddr.models.base import Access, Outcome, Result
from vmxaddr.state import CpuState

HEX = "0f7845d8"  # VMREAD [EBP-0x28], EAX

MODULE = '''
import sys
from vmxaddr.models import sdm
from vmxaddr.models.base import Outcome, Result

def raises(exit, state, access): return 1 // 0
def recurse(exit, state, access): return recurse(exit, state, access)
def memory(exit, state, access): raise MemoryError("no room")
def exits0(exit, state, access): sys.exit(0)
def exits_str(exit, state, access): sys.exit("bye")
def two_args(exit, state): return None
def keyword_only(*, exit, state, access): return None
def returns_none(exit, state, access): return None
def returns_str(exit, state, access): return "ok"
def returns_dict(exit, state, access): return {"outcome": "ok"}
def bad_address(exit, state, access): return sdm(exit, state, access)._replace(linear_address="0x10")
def huge_address(exit, state, access): return sdm(exit, state, access)._replace(linear_address=1 << 64)
def bad_kind(exit, state, access): return Result(Outcome("maybe"))
def bad_vector(exit, state, access): return Result(Outcome("fault", "XX"))
def bad_outcome(exit, state, access): return Result("ok")
def bad_segment(exit, state, access): return sdm(exit, state, access)._replace(segment="qs")
def good(exit, state, access): return sdm(exit, state, access)
def _classify_raises(*args): raise LookupError("no class")
def differs(exit, state, access): return Result(Outcome("fault", "UD"))
differs.classify = _classify_raises
def good_explain(exit, state, access, explain=False): return sdm(exit, state, access, explain)
'''


@pytest.fixture
def usermods(tmp_path, monkeypatch):
    (tmp_path / "g13models.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "g13boom.py").write_text("raise RuntimeError('boom at import')\n")
    (tmp_path / "g13exit.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "g13syntax.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run(argv, capsys):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


CASE_TEXT = "vmread (instruction information 0x02c10080, exit qualification 0xffffffd8; protected mode, 32-bit code)"

BAD = [
    ("raises", "raised ZeroDivisionError: integer division or modulo by zero"),
    ("recurse", "raised RecursionError: maximum recursion depth exceeded"),
    ("memory", "raised MemoryError: no room"),
    ("exits0", "exited (SystemExit 0)"),
    ("exits_str", "exited (SystemExit 'bye')"),
    ("returns_none", "returned None, not a vmxaddr.models.base.Result"),
    ("returns_str", "returned a str ('ok'), not a vmxaddr.models.base.Result"),
    ("returns_dict", "returned a dict ({'outcome': 'ok'})"),
    ("bad_address", "linear_address is str '0x10'"),
    ("huge_address", "linear_address is 0x10000000000000000, outside 0…2^64-1"),
    ("bad_kind", "outcome of kind 'maybe'"),
    ("bad_vector", "vector 'XX'"),
    ("bad_outcome", "outcome is a str, not an Outcome"),
    ("bad_segment", "segment is 'qs'"),
]


def _commands(spec: str) -> list[list[str]]:
    case = ["--mode", "32", "--reg", "ebp=0x1000", HEX]
    return [["explain", "--model", spec, *case], ["diff", "--models", f"sdm,{spec}", *case],
            ["diff", "--models", f"{spec},sdm", *case], ["cross", "--model", spec, *case],
            ["cross", "--model", "sdm", "--against", spec, *case]]


@pytest.mark.parametrize("fn,what", BAD)
def test_misbehaving_model_is_one_line_in_every_command(fn, what, usermods, capsys):
    spec = f"g13models:{fn}"
    for argv in _commands(spec):
        code, out, err = run(argv, capsys)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"error: model {spec} " in err and what in err, (argv, err)
        assert err.rstrip().endswith(f" on {CASE_TEXT}"), err


@pytest.mark.parametrize("spec,what", [
    ("g13boom:f", "importing g13boom raised RuntimeError: boom at import"),
    ("g13exit:f", "importing g13exit exited (SystemExit 0)"),
    ("g13syntax:f", "importing g13syntax raised SyntaxError"),
    (":", "give package.module:function, both parts non-empty"),
    ("g13models:", "both parts non-empty"),
    (":good", "both parts non-empty"),
    ("g13nosuchmodule:f", "no module named 'g13nosuchmodule'"),
    ("g13models:nope", "module g13models has no 'nope'"),
    ("g13models:sys", "it is a module, not a function"),
    ("g13models:two_args", "takes the wrong arguments"),
    ("g13models:keyword_only", "takes the wrong arguments"),
])
def test_unloadable_model_is_one_line(spec, what, usermods, capsys):
    for argv in _commands(spec):
        code, out, err = run(argv, capsys)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert what in err, (argv, err)
        assert out == ""


def test_a_well_behaved_user_model_runs(usermods, capsys):
    for fn in ("good", "good_explain"):
        for argv in _commands(f"g13models:{fn}"):
            code, out, err = run(argv, capsys)
            assert code == 0, (argv, err)
    # explain=True reaches a model that takes it: its steps are printed
    code, out, _ = run(["explain", "--model", "g13models:good_explain", "--mode", "32", "--reg", "ebp=0x1000", HEX], capsys)
    assert "EA = ebp 0x1000 + displacement -0x28 = 0xfd8" in out


def test_debug_adds_the_traceback(usermods, capsys):
    code, out, err = run(["explain", "--debug", "--mode", "32", "--model", "g13models:raises", HEX], capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err and "return 1 // 0" in err
    assert err.rstrip().splitlines()[-1].startswith("vmxaddr explain: error: model g13models:raises raised")


def test_guard_api_for_fuzz_and_trace(usermods):
    """The pieces the fuzz and trace commands use: a guarded model raises only ModelError, with
    .model, .what, .kind and .case; it pickles (process pools); `call` guards any callable."""
    from vmxaddr.models.guard import GuardedModel, ModelError, call

    m = get("g13models:raises")
    assert isinstance(m, GuardedModel)
    c = Case.from_bytes(bytes.fromhex(HEX), CpuState.for_code_size(32))
    with pytest.raises(ModelError) as info:
        c.run(m)
    e = info.value
    assert e.model == "g13models:raises" and e.kind == "raised ZeroDivisionError" and e.case == CASE_TEXT
    assert "ZeroDivisionError" in e.details
    assert pickle.loads(pickle.dumps(get("g13models:good")))(c.exit, c.state, c.access) == c.run(sdm)
    with pytest.raises(ModelError, match="returned None"):
        call(lambda exit, state, access: None, c.exit, c.state, c.access, name="lambda")
    with pytest.raises(KeyboardInterrupt):  # ^C is never swallowed
        call(lambda exit, state, access: (_ for _ in ()).throw(KeyboardInterrupt), c.exit, c.state, c.access)


def test_builtin_models_are_not_wrapped_and_pass_the_result_check():
    """The registry's models are returned as they are (no cost on the hot path), and every answer
    they give on a spread of cases satisfies the guard's result check."""
    import random

    from vmxaddr.exitinfo import DEFAULT_POLICY
    from vmxaddr.fuzz import gen_case
    from vmxaddr.gen import MEMORY_MNEMONICS, RandomChooser
    from vmxaddr.models import REGISTRY
    from vmxaddr.models.guard import result_problem
    from vmxaddr.state import check_state

    assert get("sdm") is sdm
    models = [m.function for m in REGISTRY.values() if m.kind == "consumer"]
    ch = RandomChooser(random.Random(13))
    for _ in range(300):
        case = gen_case(ch, MEMORY_MNEMONICS, DEFAULT_POLICY)
        check_state(case.state)  # the generator stays inside the validator's ranges
        for m in models:
            try:
                r = case.run(m)
            except Exception:  # noqa: BLE001 - InvalidExitInfo etc.: not what is checked here
                continue
            assert result_problem(r) is None, (m, r)


def test_result_problem_accepts_a_minimal_result():
    from vmxaddr.models.guard import result_problem

    assert result_problem(Result(Outcome("ok"))) is None
    assert result_problem(Result(Outcome("fault", "GP", 0), linear_address=0)) is None
    assert result_problem((Outcome("ok"),)) is not None


def test_unknown_model_is_still_unknown():
    with pytest.raises(UnknownModel):
        get("nope")
    assert Access(4, True).kind == "write"


def test_a_models_classify_is_guarded_too(usermods, capsys):
    """diff and cross ask a model's own `classify` to name a divergence; if it raises, that is one
    line too. #UD from `differs` vs the SDM's ok for VMREAD in protected mode: a divergence."""
    for argv in (["diff", "--models", "sdm,g13models:differs", "--mode", "32", HEX],
                 ["cross", "--model", "g13models:differs", "--mode", "32", HEX]):
        code, out, err = run(argv, capsys)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert "model g13models:differs classify() raised LookupError: no class" in err, err


def test_debug_shows_what_the_module_raised_on_import(usermods, capsys):
    code, _, err = run(["explain", "--debug", "--mode", "32", "--model", "g13boom:f", HEX], capsys)
    assert code == 2 and "Traceback (most recent call last)" in err and "boom at import" in err
    assert err.rstrip().splitlines()[-1] == ("vmxaddr explain: error: cannot load model 'g13boom:f': importing "
                                             "g13boom raised RuntimeError: boom at import")
