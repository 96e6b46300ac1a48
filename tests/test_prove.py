"""`vmxaddr prove`: the rule language's symbolic backend against Python ints, the prover on a few
forms whose classes follow from the SDM and KVM's history (docs/kvm-divergences.md, the notes of
each fix), and prover and fuzzer holding each other honest. The full matrix is behind --run-slow."""

from __future__ import annotations

import json
import shlex

import pytest
import z3
from hypothesis import given, settings
from hypothesis import strategies as st

from vmxaddr import diff as D
from vmxaddr.cli import main
from vmxaddr.fuzz import fuzz
from vmxaddr.models import get
from vmxaddr.models import sdm as sdm_registered  # noqa: F401 - the registry (native when built)
from vmxaddr.prove.cli import symbolic_model
from vmxaddr.prove.engine import PROVED, UNKNOWN, prove_form
from vmxaddr.prove.forms import form_of, forms
from vmxaddr.prove.sym import Paths, term, var

sdm_mod = __import__("vmxaddr.models.sdm", fromlist=["sdm"])
M64 = (1 << 64) - 1


def _form(model: str, key: str):
    mn = key.split("/")[0]
    code_size = int(key.split("/")[1][-2:])
    for f in forms((mn,), (code_size,)):
        if f.key == key:
            return f
    raise AssertionError(f"no form {key}")


def _prove(model: str, key: str, timeout: float = 240.0, against: str = "sdm"):
    return prove_form(_form(model, key), (model, symbolic_model(model)), (against, symbolic_model(against)), timeout,
                      confirm=(get(model), get(against)))


# -- the rule language: the same rule on ints and on z3 bit-vectors ------------------------------

def _paths_of(fn, *names_bits):
    """Every path of fn over symbolic arguments: [(path condition, value)] and the variables."""
    args = [var(n, b) for n, b in names_bits]
    vs = [z3.BitVec(n, b) for n, b in names_bits]
    return list(Paths().run(lambda: fn(*args))), vs


def _eval_paths(paths, vs, values):
    sub = [(v, z3.BitVecVal(x, v.size())) for v, x in zip(vs, values, strict=True)]
    taken = [val for pc, val in paths if z3.is_true(z3.simplify(z3.substitute(pc, *sub)))]
    assert len(taken) == 1, "the path conditions must be disjoint and cover every input"
    val = taken[0]
    if isinstance(val, bool | int) or val is None:
        return val
    return z3.simplify(z3.substitute(term(val), *sub)).as_signed_long()


_DISP = _paths_of(lambda q: sdm_mod.displacement(q, 1), ("q", 64))
_EA = _paths_of(lambda b, i, q: sdm_mod.effective_address(b & 0xFFFFFFFF, i & 0xFFFFFFFF, 3,
                                                          sdm_mod.displacement(q, 1), 1), ("b", 64), ("i", 64), ("q", 64))
_NONCANON = _paths_of(lambda a, la57: sdm_mod.noncanonical(a, 16, la57), ("a", 64), ("la57", 1))
_EXPAND = _paths_of(lambda ea, lim, db: sdm_mod.expand_down_fault(ea, ea + 7, lim, db), ("ea", 32), ("lim", 32), ("db", 1))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, M64), st.integers(0, M64), st.integers(0, M64), st.integers(0, 1),
       st.sampled_from([0, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFF_8000_0000_0000, 0x00FF_FFFF_FFFF_FFF8]))
def test_rule_functions_equal_on_ints_and_bit_vectors(b: int, i: int, q: int, flag: int, edge: int) -> None:
    """Each rule function of models/sdm.py, run on Python ints (what the fuzzer and mypyc run) and
    on z3 terms then evaluated at the same values, gives the same answer on exactly one path."""
    assert _eval_paths(*_DISP, [q]) == sdm_mod.displacement(q, 1)
    assert _eval_paths(*_EA, [b, i, q]) == sdm_mod.effective_address(b & 0xFFFFFFFF, i & 0xFFFFFFFF, 3,
                                                                     sdm_mod.displacement(q, 1), 1)
    for a in (b, edge):
        assert _eval_paths(*_NONCANON, [a, flag]) == sdm_mod.noncanonical(a, 16, bool(flag))
    ea, lim = b & 0xFFFFFFFF, (i if edge == 0 else edge) & 0xFFFFFFFF
    assert _eval_paths(*_EXPAND, [ea, lim, flag]) == sdm_mod.expand_down_fault(ea, ea + 7, lim, flag)


class _Lam:
    """The state fields lam_untag reads."""

    def __init__(self, lam_sup: object, lam_u48: object, lam_u57: object, la57: object) -> None:
        self.lam_sup, self.lam_u48, self.lam_u57, self.la57 = lam_sup, lam_u48, lam_u57, la57


@pytest.mark.parametrize(("addr", "flags", "expected"), [
    # LAM_U57, a user pointer (bit 63 = 0): bits 62:57 take bit 56's value (0)
    (0x7E00_0000_0000_1000, dict(lam_u57=1), (0x1000, 56)),
    # LAM_U48: bits 62:48 take bit 47's value (0)
    (0x7E00_0000_0000_1000, dict(lam_u48=1), (0x1000, 47)),
    # LAM_SUP under 4-level paging, a supervisor pointer with bit 47 = 1: bits 62:48 become 1
    (0x8000_8000_0000_0000, dict(lam_sup=1), (0xFFFF_8000_0000_0000, 47)),
    # LAM_SUP with LA57: bit 56 = 1, so bits 62:57 become 1
    (0x8100_0000_0000_0000, dict(lam_sup=1, la57=1), (0xFF00_0000_0000_0000, 56)),
    # a supervisor pointer without LAM_SUP (LAM_U57 is for user pointers): not masked
    (0x8100_0000_0000_0000, dict(lam_u57=1), (0x8100_0000_0000_0000, None)),
])
def test_lam_untag_by_hand(addr: int, flags: dict[str, int], expected: tuple[int, int | None]) -> None:
    """Intel ISE "Linear Address Masking": the metadata bits (62:57 or 62:48) take the value of
    bit 56 or 47; bit 63 selects CR4.LAM_SUP (supervisor) or CR3.LAM_U57/U48 (user)."""
    st = _Lam(*(bool(flags.get(k, 0)) for k in ("lam_sup", "lam_u48", "lam_u57", "la57")))
    assert sdm_mod.lam_untag(addr, st) == expected


_LAM_VARS = [("a", 64), ("sup", 1), ("u48", 1), ("u57", 1), ("la57", 1)]
_LAM = _paths_of(lambda a, *f: sdm_mod.lam_untag(a, _Lam(*f)), *_LAM_VARS)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([0x7E00_0000_0000_1000, 0x8000_8000_0000_0000, 0x8100_0000_0000_0000, 0x0000_8000_0000_0000]),
       st.integers(0, M64), st.integers(0, 15), st.booleans())
def test_lam_untag_equal_on_ints_and_bit_vectors(edge: int, a: int, flags: int, use_edge: bool) -> None:
    """lam_untag, written with the rule language's `select`, gives on bit-vectors (one decision:
    does LAM apply) what it gives on ints, on each of its two paths."""
    addr = edge if use_edge else a
    f = [flags >> i & 1 for i in range(4)]
    want = sdm_mod.lam_untag(addr, _Lam(*(bool(x) for x in f)))
    paths, vs = _LAM
    sub = [(v, z3.BitVecVal(x, v.size())) for v, x in zip(vs, [addr, *f], strict=True)]
    taken = [val for pc, val in paths if z3.is_true(z3.simplify(z3.substitute(pc, *sub)))]
    assert len(taken) == 1 and len(paths) == 2
    got = tuple(None if x is None else z3.simplify(z3.substitute(term(x), *sub)).as_signed_long() for x in taken[0])
    assert got == want


# -- the prover on forms whose classes are known from the SDM and KVM's history ---------------------

def test_feasibility_study_form_kvm_f9eb4af6() -> None:
    """VMREAD [EBX+ESI*4+disp32] through DS in 32-bit protected mode. kvm-f9eb4af6 lacks, by the
    fix that came later (docs/history.md): sign extension (946c522b), the address-size mask on the
    offset (8570f9e8), the off-by-one and length-8 limit fixes (c1a9acbc, fdb28619); no KVM knows
    expand-down segments. The flat-segment skip (34333cc6) is no class: the SDM leaves a 4-GiB limit
    implementation-specific. Type-before-usability needs SS (#SS vs #GP): not in a DS form."""
    r = _prove("kvm-f9eb4af6", "vmread/protected32/a32/[base+index*4+disp32]/ds")
    assert r.status == PROVED, r.note
    assert {c.name for c in r.classes} == {D.DISPLACEMENT_NOT_SIGN_EXTENDED, D.ASZ_MASK_ON_LINEAR, D.LIMIT_OFF_BY_ONE,
                                           D.LENGTH_FIXED_8, D.EXPAND_DOWN}
    assert all(c.confirmed for c in r.classes)


def test_today_kvm_through_ss_and_the_witness_replays(capsys: pytest.CaptureFixture[str]) -> None:
    """kvm-703d794c (today's KVM) through SS: KVM checks the type before usability (an unusable
    read-only SS gives its #GP(0) where the SDM says #SS(0)) and knows no expand-down: two classes,
    and the printed `vmxaddr diff` command, run, names the same class."""
    r = _prove("kvm-703d794c", "vmread/protected32/a32/[base]/ss")
    assert r.status == PROVED, r.note
    assert {c.name for c in r.classes} == {D.TYPE_BEFORE_USABLE, D.EXPAND_DOWN}
    for c in r.classes:
        argv = shlex.split(c.command)[1:] + ["--json"]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert [d["class"] for d in out["divergences"]] == [c.name]


@pytest.mark.parametrize(("key", "klass"), [
    ("vmread/compatibility32/a32/[base]/ds", D.COMPAT_AS_64),
    ("vmread/real16/a16/[bx+si]/ds", D.REAL_V86_NO_UD),
])
def test_unreachable_modes(key: str, klass: str) -> None:
    """VMX instructions #UD in compatibility, real and virtual-8086 mode (SDM Vol. 3C); KVM has no
    such check (the processor makes it before the exit): one class, everywhere in the form."""
    r = _prove("kvm-064aea77", key)
    assert r.status == PROVED and [c.name for c in r.classes] == [klass]


def test_a_model_against_itself_has_no_class() -> None:
    r = _prove("sdm", "vmread/protected32/a32/[base+disp8]/ss")
    assert r.status == PROVED and r.classes == []


def test_a_users_port_in_the_rule_language() -> None:
    """tests/data/port_example.py follows the SDM in 32-bit protected mode but knows no expand-down
    segments: that class, and no other."""
    name = "tests.data.port_example:port"
    f = _form("kvm-f9eb4af6", "vmptrld/protected32/a32/[base+disp8]/ss")
    r = prove_form(f, (name, symbolic_model(name)), ("sdm", symbolic_model("sdm")), 240)
    assert r.status == PROVED and [c.name for c in r.classes] == [D.EXPAND_DOWN]


def test_segments_and_code_sizes_share_a_checked_proof() -> None:
    """VMREAD [EBX+disp32] through DS and ES, in 16- and 32-bit code: kvm-f9eb4af6 and the SDM
    treat ES and DS alike and read nothing of CS here, so the three other forms share the first
    one's proof — and each gets the classes proving it alone gives (by the fixes kvm-f9eb4af6
    lacks, as in the feasibility-study test; "type checked before usability" needs SS)."""
    from vmxaddr.exitinfo import DEFAULT_POLICY
    from vmxaddr.prove.groups import group, prove_group

    fs = [_form("kvm-f9eb4af6", f"vmread/protected{c}/a32/[base+disp32]/{s}") for c in (16, 32) for s in ("ds", "es")]
    (g,) = group(fs)
    rs = prove_group(g, ("kvm-f9eb4af6", symbolic_model("kvm-f9eb4af6")), ("sdm", symbolic_model("sdm")), 240,
                     DEFAULT_POLICY, confirm=(get("kvm-f9eb4af6"), get("sdm")))
    want = {D.DISPLACEMENT_NOT_SIGN_EXTENDED, D.ASZ_MASK_ON_LINEAR, D.LIMIT_OFF_BY_ONE, D.LENGTH_FIXED_8, D.EXPAND_DOWN}
    assert [r.shared_with for r in rs] == ["", *[fs[0].key] * 3]
    for r in rs:
        assert r.status == PROVED and {c.name for c in r.classes} == want and all(c.confirmed for c in r.classes)
    alone = _prove("kvm-f9eb4af6", fs[3].key)
    assert {c.name for c in alone.classes} == want


def test_a_segment_the_model_treats_differently_is_proved_on_its_own() -> None:
    """tests/data/port_example.py:port_fs_quirk faults one byte early through FS only: the FS
    form's paths differ from the DS form's, so it does not share the DS proof, and it shows a
    class the DS form has not (the limit checks differ)."""
    from vmxaddr.exitinfo import DEFAULT_POLICY
    from vmxaddr.prove.groups import prove_group

    name = "tests.data.port_example:port_fs_quirk"
    fs = [_form("sdm", f"vmptrld/protected32/a32/[base+disp8]/{s}") for s in ("ds", "fs")]
    rs = prove_group(fs, (name, symbolic_model(name)), ("sdm", symbolic_model("sdm")), 240, DEFAULT_POLICY)
    assert rs[1].shared_with == "" and rs[0].status == rs[1].status == PROVED
    assert {c.name for c in rs[0].classes} == {D.EXPAND_DOWN}
    assert {c.name for c in rs[1].classes} > {D.EXPAND_DOWN}


def test_out_of_time_is_never_proved() -> None:
    r = _prove("kvm-f9eb4af6", "vmread/protected32/a32/[base+index*4+disp32]/ds", timeout=0.05)
    assert r.status == UNKNOWN


# -- prover and fuzzer hold each other honest ----------------------------------------------------------

def _fuzz_classes_in_prove(model: str, max_examples: int, limit: int | None, timeout: float) -> None:
    """Every class a short fixed-seed fuzz run finds is among the classes prove finds on its
    witness's form (its exact bytes, everything else symbolic), and every prove witness is
    confirmed by the concrete models through vmxaddr.diff.diff_case (prove_form checks it)."""
    rep = fuzz(get(model), get("sdm"), seed=1, max_examples=max_examples, shrink=False, names=(model, "sdm"))
    assert rep.classes, "the run should find classes"
    checked = 0
    for name, c in rep.classes.items():
        if limit is not None and checked >= limit:
            break
        w = c.witness
        assert w is not None
        f = form_of(w.instruction, w.state.mode)
        r = prove_form(f, (model, symbolic_model(model)), ("sdm", symbolic_model("sdm")), timeout,
                       confirm=(get(model), get("sdm")))
        assert r.status != "error", r.note
        assert name in {k.name for k in r.classes}, (name, f.name, r.status)
        assert all(k.confirmed for k in r.classes)
        checked += 1


PAIRS = ("kvm-064aea77", "kvm-f9eb4af6", "kvm-946c522b", "kvm-8570f9e8", "kvm-34333cc6", "kvm-c1a9acbc", "kvm-fdb28619",
         "kvm-6694e480", "kvm-82277eee", "kvm-703d794c", "kvm-current", "kvm-apx-v2", "xen-c447b730")


@pytest.mark.parametrize("model", PAIRS)
def test_fuzz_classes_appear_in_prove_quick(model: str) -> None:
    """Every pair, on the forms of the first two classes a short fuzz run finds (the full check
    is behind --run-slow)."""
    _fuzz_classes_in_prove(model, 1500, limit=2, timeout=240)


@pytest.mark.slow
@pytest.mark.parametrize("model", PAIRS)
def test_fuzz_classes_appear_in_prove_every_pair(model: str) -> None:
    _fuzz_classes_in_prove(model, 20000, limit=None, timeout=600)


# -- the command ----------------------------------------------------------------------------------

def test_cli_real_code_points_to_its_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--model", "kvm-linux-6.12", "--list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kvm-703d794c" in err[0]


def test_cli_json_on_a_quick_form(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["prove", "--model", "kvm-064aea77", "--form", "vmread/compatibility32/a32/[base]/ds", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["summary"]["status"] == {"proved": 1}
    (form,) = out["forms"]
    assert [c["class"] for c in form["classes"]] == [D.COMPAT_AS_64] and form["classes"][0]["confirmed"]
    assert form["classes"][0]["command"].startswith("vmxaddr diff --models sdm,kvm-064aea77 --mode 32 --cpu-mode compatibility")


@pytest.mark.slow
def test_apx_legacy_field_reads_the_wrong_register() -> None:
    """With APX the processor names R19/R22 only in the extended field (VMCS 0x2406); kvm-current
    reads the 32-bit field's 4-bit numbers (RBX, RSI): class "R16-R31 read from the 32-bit field".
    kvm-apx-v2 reads the extended field: not that class."""
    from vmxaddr.exitinfo import Policy

    key = "vmptrld/64-bit64/a64/[r19+r22*4+disp32]/fs"
    apx = Policy(apx=True)
    f = next(f for f in forms(("vmptrld",), (64,), policy=apx) if f.key == key)
    for model, has in (("kvm-current", True), ("kvm-apx-v2", False)):
        r = prove_form(f, (model, symbolic_model(model)), ("sdm", symbolic_model("sdm")), 1200, apx,
                       confirm=(get(model), get("sdm")))
        assert r.status != "error", r.note
        assert (D.EGPR_FROM_LEGACY in {c.name for c in r.classes}) is has
