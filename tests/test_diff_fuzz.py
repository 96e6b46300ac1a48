"""The differential engine and the fuzzer: every historical fix is found by fuzzing the model just
before it against the model just after it; today's KVM differs from the SDM model only in the
documented ways; the witnesses corpus replays; the decode memo is exact."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from corpus_util import load, make_case, outcome_text

import vmxaddr.decode as decode_mod
from vmxaddr import diff as D
from vmxaddr.case import Case
from vmxaddr.cli import main
from vmxaddr.decode import DecodeError, decode, decode_uncached
from vmxaddr.exitinfo import Policy
from vmxaddr.fuzz import ReplayChooser, fuzz, gen_case
from vmxaddr.gen import MEMORY_MNEMONICS, RandomChooser, gen_encoding
from vmxaddr.models import get
from vmxaddr.models.base import Access, Outcome, Result
from vmxaddr.state import CpuState

UNREACHABLE = {D.COMPAT_AS_64, D.REAL_V86_NO_UD, D.PRE_EXIT_FAULT_NOT_MADE}

# (model before the fix, model with it, the class of what the fix changed, cases within which
# seed 1 finds it — measured once, with headroom; the fuzzer stops at the first witness)
FIXES = [
    ("kvm-064aea77", "kvm-f9eb4af6", D.NO_CHECKS, 200),
    ("kvm-f9eb4af6", "kvm-946c522b", D.DISPLACEMENT_NOT_SIGN_EXTENDED, 200),
    ("kvm-946c522b", "kvm-8570f9e8", D.ASZ_MASK_ON_LINEAR, 200),
    ("kvm-8570f9e8", "kvm-34333cc6", D.FLAT_LIMIT, 4000),
    ("kvm-34333cc6", "kvm-c1a9acbc", D.LIMIT_OFF_BY_ONE, 4000),
    ("kvm-c1a9acbc", "kvm-fdb28619", D.LENGTH_FIXED_8, 4000),
    ("kvm-fdb28619", "kvm-6694e480", D.SEGMENT_BASE_IN_64, 400),
    ("kvm-82277eee", "kvm-703d794c", D.LAM_NOT_UNTAGGED, 2000),  # 743 since INVPCID joined the models
]

# What kvm-current still does differently from the SDM model (docs/kvm-divergences.md).
DOCUMENTED = {D.EXPAND_DOWN, D.TYPE_BEFORE_USABLE, D.CANONICAL_FIRST_BYTE, D.COMPAT_AS_64_REACHABLE,
              D.REAL_MODE_SEGMENT_CHECKS} | UNREACHABLE


@pytest.mark.parametrize("before,after,name,limit", FIXES, ids=[f[1] for f in FIXES])
def test_fuzzing_finds_each_fix(before, after, name, limit):
    a, b = get(after), get(before)
    rep = fuzz(a, b, seed=1, max_examples=limit, hypothesis_examples=0, shrink=False,
               stop_when=lambda classes: name in classes)
    assert name in rep.classes, f"{after} vs {before}: found only {sorted(rep.classes)}"
    # Nothing else separates the two models, apart from inputs no processor produces.
    assert set(rep.classes) - {name} <= UNREACHABLE
    # The shrunk witness still shows exactly that class, and replays through `vmxaddr diff`.
    from vmxaddr.fuzz import minimise

    c = rep.classes[name]
    minimise(c, a, b, ["vmptrld", "vmclear", "vmxon", "vmptrst", "vmread", "vmwrite", "invept", "invvpid"],
             Policy(), 1, hypothesis_examples=0)
    assert D.case_divergence(c.witness, a, b) == name


def test_register_truncation_fix_has_no_observable_effect():
    """82277eee: the offset has been masked to the address size since 8570f9e8, which already drops
    bits 63:32 of base and index outside 64-bit mode — so no input separates the two models."""
    rep = fuzz(get("kvm-82277eee"), get("kvm-6694e480"), seed=1, max_examples=3000, hypothesis_examples=0, shrink=False)
    assert rep.classes == {}


def test_kvm_current_differs_from_sdm_only_as_documented():
    rep = fuzz(get("kvm-current"), get("sdm"), seed=1, max_examples=6000, hypothesis_examples=0, shrink=False)
    assert set(rep.classes) <= DOCUMENTED, set(rep.classes) - DOCUMENTED
    assert D.EXPAND_DOWN in rep.classes and D.TYPE_BEFORE_USABLE in rep.classes
    doc = (D.__file__.rsplit("/vmxaddr/", 1)[0] + "/docs/kvm-divergences.md")
    text = open(doc).read()
    for name in DOCUMENTED:
        assert name in text, f"{name!r} missing from docs/kvm-divergences.md"


# -- the corpus of witnesses ------------------------------------------------------------------------

WITNESSES = load("witnesses/kvm.json")


@pytest.mark.parametrize("w", WITNESSES, ids=[w["id"] for w in WITNESSES])
def test_witness_replays(w):
    case = make_case(w)
    results = {}
    for name, want in w["expect"].items():
        r = case.run(get(name))
        results[name] = r
        assert outcome_text(r.outcome) == want["outcome"], name
        for key in ("segment", "effective_address", "linear_address"):
            if key in want:
                got = getattr(r, key)
                assert (hex(got) if isinstance(got, int) else got) == want[key], (name, key)
    ref, other = w["models"]
    d = D.diff_case(case, [(ref, get(ref)), (other, get(other))])
    assert (d.divergences[0].name if d.divergences else None) == w["class"]


def test_corpus_has_a_witness_per_fix_and_per_documented_divergence():
    fixes = {w["models"][1] for w in WITNESSES if w.get("fix")}
    assert fixes == {"kvm-f9eb4af6", "kvm-946c522b", "kvm-8570f9e8", "kvm-34333cc6", "kvm-c1a9acbc",
                     "kvm-fdb28619", "kvm-6694e480", "kvm-82277eee", "kvm-703d794c"}
    assert {w["class"] for w in WITNESSES if w["models"] == ["sdm", "kvm-current"]} == DOCUMENTED


# -- the engine -----------------------------------------------------------------------------------

def test_agreement_rules():
    ok = Result(Outcome("ok"), linear_address=0x10)
    impl = Result(Outcome("implementation-specific", "GP", 0), linear_address=0x10)
    gp = Result(Outcome("fault", "GP", 0), linear_address=0x99)
    ss = Result(Outcome("fault", "SS", 0))
    assert D.agree(impl, ok) and D.agree(impl, gp) and not D.agree(impl, ss)
    assert D.agree(gp, Result(Outcome("fault", "GP", 0), linear_address=0x1))  # faults: addresses don't matter
    assert not D.agree(ok, Result(Outcome("ok"), linear_address=0x11))
    assert not D.agree(ok, gp)


def test_classes_are_stable_names():
    assert len(set(D.CLASSES)) == len(D.CLASSES)
    assert D.DISPLACEMENT_NOT_SIGN_EXTENDED == "displacement not sign-extended"
    assert D.SEGMENT_BASE_IN_64 == "segment base added in 64-bit mode"
    assert D.LIMIT_OFF_BY_ONE == "limit check off by one"


def my_port(exit, state, access):
    """A user's own model without `explain`: KVM 2015 behaviour through the public signature."""
    return get("kvm-f9eb4af6")(exit, state, access)


def test_diff_command_text_and_json(capsys):
    argv = ["diff", "--models", "sdm,kvm-f9eb4af6,kvm-current", "--mode", "32", "--reg", "ebp=0x1000", "0f7845d8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "<- first difference" in out and "displacement not sign-extended" in out
    assert main(argv + ["--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["agree"] is False and obj["first_difference"] == "displacement"
    assert set(obj["results"]) == {"sdm", "kvm-f9eb4af6", "kvm-current"}
    assert obj["results"]["kvm-f9eb4af6"]["outcome"]["vector"] == "SS"
    assert obj["results"]["kvm-f9eb4af6"]["effective_address"] == 0x100000FD8  # 0xffffffd8 + 0x1000
    assert obj["results"]["sdm"]["linear_address"] == 0xFD8


def test_diff_command_errors(capsys):
    assert main(["diff", "--models", "sdm", "--mode", "32", "0f7845d8"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["diff", "--models", "sdm,nope", "--mode", "32", "0f7845d8"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_fuzz_command_json_out_and_user_model(tmp_path, capsys):
    out = tmp_path / "w.json"
    argv = ["fuzz", "--model", "test_diff_fuzz:my_port", "--against", "sdm", "--seed", "1", "--max-examples", "300",
            "--hypothesis-examples", "0", "--quiet", "--json", "--out", str(out)]
    assert main(argv) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["cases"] == 300
    names = {c["name"] for c in obj["classes"]}
    assert D.DISPLACEMENT_NOT_SIGN_EXTENDED in names
    for c in obj["classes"]:
        assert c["count"] >= 1 and c["command"].startswith("vmxaddr diff --models sdm,test_diff_fuzz:my_port")
    corpus = json.loads(out.read_text())
    assert corpus["models"] == ["sdm", "test_diff_fuzz:my_port"] and len(corpus["cases"]) == len(obj["classes"])
    # Each printed command reproduces its class.
    import shlex

    for c in obj["classes"]:
        argv2 = shlex.split(c["command"])[1:] + ["--json"]
        assert main(argv2) == 0
        d = json.loads(capsys.readouterr().out)
        assert c["name"] in {x["class"] for x in d["divergences"]}


def test_fuzz_is_reproducible_from_the_seed():
    a, b = get("kvm-f9eb4af6"), get("sdm")
    # Replay shrinking only: hypothesis's share is bounded by wall-clock time, so a slow machine
    # may stop it at a different point (the CLI reports which shrinker produced each witness).
    r1 = fuzz(a, b, seed=5, max_examples=500, hypothesis_examples=0)
    r2 = fuzz(a, b, seed=5, max_examples=500, hypothesis_examples=0)
    assert {k: v.count for k, v in r1.classes.items()} == {k: v.count for k, v in r2.classes.items()}
    for k in r1.classes:
        w1, w2 = r1.classes[k].witness, r2.classes[k].witness
        assert w1 is not None and w2 is not None
        assert (w1.instruction.raw, w1.state) == (w2.instruction.raw, w2.state)


def test_hypothesis_minimisation_keeps_the_class():
    from vmxaddr.fuzz import minimise

    a, b = get("kvm-f9eb4af6"), get("sdm")
    rep = fuzz(a, b, seed=1, max_examples=50, hypothesis_examples=0, shrink=False)
    c = rep.classes[D.DISPLACEMENT_NOT_SIGN_EXTENDED]
    minimise(c, a, b, ["vmptrld", "vmread"], Policy(), 1, hypothesis_examples=30, hypothesis_seconds=1.0)
    assert D.case_divergence(c.witness, a, b) == D.DISPLACEMENT_NOT_SIGN_EXTENDED


def test_replay_chooser_falls_back_to_the_simplest_choice():
    ch = ReplayChooser([])
    assert ch.choice("abc") == "a" and ch.integer(-5, 5) == 0 and ch.integer(3, 9) == 3 and ch.chance(0.9) is False


# -- the decode memo ------------------------------------------------------------------------------

def _same(a_bytes: bytes, cs: int) -> None:
    try:
        want = decode_uncached(a_bytes, cs)
    except DecodeError as e:
        with pytest.raises(DecodeError) as got:
            decode(a_bytes, cs)
        assert (got.value.kind, str(got.value)) == (e.kind, str(e))
        return
    assert decode(a_bytes, cs) == want


def test_decode_memo_is_exact():
    """Random encodings, the same shapes with other displacements, trailing bytes, truncations and
    byte flips: the memoised decode answers exactly as the full one (or raises the same error)."""
    decode_mod.clear_memos()
    rng = random.Random(7)
    ch = RandomChooser(rng)
    for _ in range(1500):
        raw, cs = gen_encoding(ch, (16, 32, 64), MEMORY_MNEMONICS, register_forms=0.1)
        _same(raw, cs)
        ins = decode_uncached(raw, cs)
        op = ins.operand
        if op is not None and op.disp_size:  # same shape, other displacement: a memo hit
            other = bytes(rng.getrandbits(8) for _ in range(op.disp_size))
            _same(raw[:op.disp_offset] + other + raw[op.disp_offset + op.disp_size:], cs)
        _same(raw + bytes(rng.getrandbits(8) for _ in range(3)), cs)  # trailing bytes ignored
        _same(raw[:-1], cs)  # truncated: an error
        flip = bytearray(raw)
        flip[rng.randrange(len(flip))] ^= 1 << rng.randrange(8)
        _same(bytes(flip), cs)
        _same(raw, {16: 32, 32: 64, 64: 16}[cs])  # same bytes, other code size


def test_fuzz_generation_replays():
    """The recorded choices regenerate the very case (what minimisation relies on)."""
    from vmxaddr.fuzz import RecordingChooser

    rec = RecordingChooser(random.Random(3))
    for _ in range(200):
        rec.log = []
        c1 = gen_case(rec, MEMORY_MNEMONICS, Policy())
        c2 = gen_case(ReplayChooser(rec.log), MEMORY_MNEMONICS, Policy())
        assert (c1.instruction, c1.state) == (c2.instruction, c2.state)


def test_exit_memo_matches_encode():
    """The exit memo (per operand shape and policy) answers exactly as encode(): for every policy,
    for the same shape with other displacements, and at other RIPs (RIP-relative operands)."""
    from vmxaddr.exitinfo import encode

    rng = random.Random(4)
    ch = RandomChooser(rng)
    policies = [Policy(), Policy(exit_qual="sign-extend", ignored_segment="prefix", si_di="index"),
                Policy(exit_qual="random-upper", seed=5),
                Policy(exit_qual="random-upper", undefined_bits="random", seed=3)]
    D.clear_exit_memo()
    for i in range(400):
        policy = policies[i % len(policies)]
        c = gen_case(ch, MEMORY_MNEMONICS, policy)
        ins = c.instruction
        variants = [ins]
        op = ins.operand
        if op is not None and op.disp_size:  # same shape, other displacement
            other = bytes(rng.getrandbits(8) for _ in range(op.disp_size))
            variants.append(decode(ins.raw[:op.disp_offset] + other + ins.raw[op.disp_offset + op.disp_size:],
                                   ins.code_size))
        for v in variants:
            for rip in (c.state.rip, rng.getrandbits(64)):
                for _ in range(2):  # a miss, then a hit
                    exit, access = D.exit_and_access(v, rip, policy)
                    assert exit == encode(v, rip, policy)
                    assert access == Case(v, c.state, policy).access


def test_user_model_without_explain_runs_in_diff():
    c = Case.from_bytes(bytes.fromhex("0f7845d8"), CpuState.for_code_size(32).with_reg("ebp", 0x1000))
    d = D.diff_case(c, [("sdm", get("sdm")), ("mine", my_port)], explain=True)
    assert not d.agree and d.divergences[0].name == D.DISPLACEMENT_NOT_SIGN_EXTENDED
    assert isinstance(Access(4, True).kind, str) and replace(c.policy) == c.policy


def test_choosers_draw_what_randint_draws():
    """The fast integer draws of both choosers are randint's, value for value (runs stay
    reproducible from the seed across this optimisation and across CPython versions that keep
    randint's algorithm; if CPython changes it, this test says so)."""
    from vmxaddr.fuzz import RecordingChooser

    ranges = [(0, 0), (0, 1), (-5, 5), (3, 9), (0, 255), (0, (1 << 64) - 1), (-(1 << 63), (1 << 63) - 1), (7, 1 << 40)]
    for seed in range(20):
        ref = random.Random(seed)
        rec, fast = RecordingChooser(random.Random(seed)), RandomChooser(random.Random(seed))
        for lo, hi in ranges * 5:
            want = ref.randint(lo, hi)
            assert rec.integer(lo, hi) == want
            assert fast.integer(lo, hi) == want
        assert rec.log[-1] == want
