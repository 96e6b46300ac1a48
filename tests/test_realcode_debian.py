"""The real KVM code of Debian's kernels against the Python ports (issue 14, items 5 and 6).

The sources are fetched once into the cache ($VMXADDR_CACHE, default ~/.cache/vmxaddr) by
`vmxaddr.realcode.sources.fetch`; later runs find them there. Without the archive or a C
compiler these tests skip with the reason locally and FAIL under CI (env CI set).

Which port is which release is decided from the code (docs/real-code.md, "Which port is which"):
test_port_mapping_from_the_code checks the markers of every fix in each release's text.
The 1,000,000-case campaigns per pair are behind --run-slow (scripts/realcode_campaign.sh runs them
and prints the numbers); the default run fuzzes a few seconds per pair.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from ci_policy import under_ci
from corpus_util import CORPUS, make_case

from vmxaddr.diff import agree, divergence, exit_and_access
from vmxaddr.fuzz import fuzz
from vmxaddr.models import get
from vmxaddr.models.base import InvalidExitInfo
from vmxaddr.realcode import sources
from vmxaddr.realcode.extract import find_function, mask
from vmxaddr.realcode.models import KVM_FUNCTION, NESTED_C, RELEASES

# release -> the port that claims it (decided from the code: see test_port_mapping_from_the_code)
PORT_OF = {"kvm-linux-6.1": "kvm-82277eee", "kvm-linux-6.12": "kvm-703d794c"}


def _unavailable(msg: str) -> None:
    if under_ci():
        pytest.fail("CI must not skip the real-code tests: " + msg)
    pytest.skip(msg)


@pytest.fixture(scope="module", params=sorted(RELEASES))
def release(request):
    name = request.param
    if shutil.which(os.environ.get("CC", "cc")) is None:
        _unavailable("no C compiler (cc) on PATH")
    try:
        sources.fetch(RELEASES[name])
    except sources.SourceError as e:
        _unavailable(f"cannot fetch {RELEASES[name]} from Debian's archive: {e}")
    return name


def _function_text(release: str) -> str:
    f = sources.lookup(RELEASES[release])
    assert f is not None
    return mask(find_function(f.path(NESTED_C).read_text(), KVM_FUNCTION).text)


def test_port_mapping_from_the_code(release):
    """Each fix of vmxaddr.models.kvm's history, looked for in the release's function. Both
    releases have every fix up to 82277eee (its truncation lives in kvm_register_read(), which
    kvm.h implements as both releases define it); only 6.12 has b39bd520's untagging. So 6.1 is
    kvm-82277eee and 6.12 is kvm-703d794c, whatever Debian backported."""
    text = _function_text(release)
    markers = {
        "f9eb4af6 checks": r"is_noncanonical_address\(",
        "946c522b sign extension": r"sign_extend64\(off,\s*31\)",
        "8570f9e8 mask on the offset": r"off\s*&=\s*0xffffffff",
        "34333cc6 flat skip": r"s\.limit\s*==\s*0xffffffff",
        "c1a9acbc + fdb28619 off + len - 1": r"off\s*\+\s*len\s*-\s*1\s*>\s*s\.limit",
        "6694e480 FS/GS base only": r"seg_reg\s*==\s*VCPU_SREG_FS\s*\|\|\s*seg_reg\s*==\s*VCPU_SREG_GS",
    }
    for fix, pattern in markers.items():
        assert re.search(pattern, text), f"{release}: no sign of {fix}"
    has_lam = re.search(r"vmx_get_untagged_addr\(", text) is not None
    assert has_lam == (release == "kvm-linux-6.12")


def test_port_equals_real_code_short_run(release):
    port, real = get(PORT_OF[release]), get(release)
    rep = fuzz(real, port, seed=14, max_examples=20_000, shrink=False)
    assert rep.cases == 20_000
    assert not rep.classes, {k: v.count for k, v in rep.classes.items()}


@pytest.mark.slow
def test_port_equals_real_code_one_million(release):
    port, real = get(PORT_OF[release]), get(release)
    rep = fuzz(real, port, seed=1, max_examples=1_000_000, shrink=False)
    assert not rep.classes, {k: v.count for k, v in rep.classes.items()}


def _corpus_cases() -> list[tuple[str, dict]]:
    out = []
    for f in sorted([*CORPUS.glob("witnesses/*.json"), CORPUS / "curated" / "sdm.json"]):
        for c in json.loads(f.read_text())["cases"]:
            out.append((f"{f.name}:{c['id']}", c))
    return out


def test_every_witness_replays_equal_on_port_and_real_code(release):
    """Every case of the corpus (witnesses and the curated SDM cases), on the real code and on the
    port of the same release: the same outcome, and the same linear address when neither faults."""
    port, real = get(PORT_OF[release]), get(release)
    checked = 0
    for cid, c in _corpus_cases():
        case = make_case(c)
        if case.instruction.mnemonic not in real.mnemonics:
            continue
        exit, access = exit_and_access(case.instruction, case.state.rip, case.policy)
        try:
            rp = port(exit, case.state, access)
        except InvalidExitInfo:
            with pytest.raises(InvalidExitInfo):
                real(exit, case.state, access)
            continue
        rr = real(exit, case.state, access)
        assert agree(rp, rr) and agree(rr, rp), f"{cid}: port {rp.outcome.short()} {rp.linear_address}, " \
                                                 f"real {rr.outcome.short()} {rr.linear_address}"
        checked += 1
    assert checked >= 50


def test_real_code_witnesses_against_the_sdm_still_hold(release):
    """corpus/witnesses/real-<release>.json (from `vmxaddr fuzz --model <release> --against sdm
    --out`): each witness still shows its class against the SDM, on the real code and on the port."""
    path = CORPUS / "witnesses" / f"real-{release}.json"
    cases = json.loads(path.read_text())["cases"]
    assert cases
    real, port, sdm = get(release), get(PORT_OF[release]), get("sdm")
    for c in cases:
        case = make_case(c)
        exit, access = exit_and_access(case.instruction, case.state.rip, case.policy)
        assert divergence(exit, case.state, access, real, sdm) == c["class"], c["id"]
        assert divergence(exit, case.state, access, port, sdm) == c["class"], c["id"]


def test_explain_names_the_package_version(release):
    f = sources.lookup(RELEASES[release])
    case = make_case({"bytes": "0f 78 45 d8", "mode": 32, "state": {"registers": {"rbp": "0x1000"}}})
    r = case.run(get(release), explain=True)
    # VMREAD [EBP-0x28]: SS base 0 + 0x1000 - 0x28 = 0xfd8 (SDM Vol. 3C §28.2.1: the displacement)
    assert r.linear_address == 0xFD8 and r.outcome.kind == "ok"
    assert f.version in r.steps[0].text and "read rbp" in r.steps[1].text


def test_sources_manifest_records_package_version_and_sha256(release):
    f = sources.lookup(RELEASES[release])
    assert f.package == sources.SOURCES[RELEASES[release]].package and f.version
    (deb, digest), = f.downloads.items()
    assert deb.endswith(".deb") and re.fullmatch(r"[0-9a-f]{64}", digest)
    for member, digest in f.files.items():
        assert Path(f.path(member)).is_file() and re.fullmatch(r"[0-9a-f]{64}", digest)


def test_kvm_tree_of_the_cached_tree_is_the_release(release):
    """`--model kvm-tree:PATH` on the cached tree (its files keep the tree's layout) builds the
    same function: the same answers as the release's model on generated cases."""
    import random

    from vmxaddr.fuzz import gen_case
    from vmxaddr.gen import RandomChooser
    from vmxaddr.models.kvm import HANDLED

    f = sources.lookup(RELEASES[release])
    tree, real = get(f"kvm-tree:{f.root}"), get(release)
    ch = RandomChooser(random.Random(21))
    for _ in range(2000):
        case = gen_case(ch, HANDLED, make_case({"bytes": "0f c7 30", "mode": 32}).policy)
        exit, access = exit_and_access(case.instruction, case.state.rip, case.policy)
        assert tree(exit, case.state, access)[:6] == real(exit, case.state, access)[:6]
