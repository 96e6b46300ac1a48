"""Model fidelity against the real sources (issue 13, item 3): each test failed before its fix.

Expected values are worked by hand from the source or commit named in each test (read, not run)
and from the SDM rules the consumer models apply.
"""

from __future__ import annotations

import pytest

from vmxaddr.case import Case
from vmxaddr.decode import decode
from vmxaddr.encoder_consumer import ENCODER, cross
from vmxaddr.encoders import vbox_iem
from vmxaddr.exitinfo import Policy
from vmxaddr.models import get, sdm
from vmxaddr.state import CpuState

SEGMENT_FIELD = 7 << 15  # bits 17:15 (SDM Vol. 3C, the instruction-information layouts): 0 ES … 5 GS

# -- vbox-iem: the segment of an ignored 64-bit-mode prefix --------------------------------------
# IEM's prefix handlers (iemOp_seg_ES/CS/SS/DS, IEMAllInstOneByte.cpp.h) set iEffSeg
# unconditionally, and iemVmxGetExitInstrInfo() writes iEffSeg into bits 17:15. So in 64-bit mode
# a DS prefix on [RBP+0] is reported as DS (3), where the processor, ignoring it, uses SS.
# Bytes: 3E (DS) 0F C7 /6 (VMPTRLD), ModRM 75 = mod 01, reg 110, r/m 101 -> [rbp+disp8], disp 00.
DS_RBP = bytes.fromhex("3e0fc77500")


@pytest.mark.parametrize("ignored", ["default", "prefix"])
def test_vbox_iem_reports_the_prefix_segment_whatever_the_policy(ignored: str) -> None:
    e = vbox_iem(decode(DS_RBP, 64), 0, Policy(ignored_segment=ignored))
    assert e.instruction_info & SEGMENT_FIELD == 3 << 15  # DS


def test_vbox_iem_prefix_segment_turns_kvms_ss_fault_into_gp() -> None:
    # RBP = 0x8000000000000000: not canonical (bits 63:47 not all equal). On real hardware (the
    # SDM encoder, default policy: the default segment SS) the reference says #SS(0) (SDM Vol. 1
    # "Canonical Addressing": a stack reference that is not canonical -> #SS). KVM picks the
    # vector by the reported segment: on IEM's DS it injects #GP(0). KVM on the SDM's information
    # would say #SS(0) too, so the encoder is to blame, for the segment field.
    st = CpuState.for_code_size(64).with_reg("rbp", 0x8000000000000000)
    x = cross(Case(decode(DS_RBP, 64), st), "vbox-iem", get("kvm-current"), sdm)
    assert (x.ref.outcome.vector, x.got.outcome.vector) == ("SS", "GP")
    assert x.side == ENCODER and x.klass == "encoder vbox-iem: segment differs from the SDM"
    # Under --ignored-segment prefix the SDM encoder reports DS as IEM does: then the reference
    # itself says #GP(0) (through DS) and the two agree.
    y = cross(Case(decode(DS_RBP, 64), st, Policy(ignored_segment="prefix")), "vbox-iem", get("kvm-current"), sdm)
    assert y.side is None and y.got.outcome.vector == y.ref.outcome.vector == "GP"


# -- kvm-b39bd520 -> kvm-703d794c -------------------------------------------------------------------
# The LAM series (all v6.8): b39bd520a60c put the untag call into get_vmx_mem_address() while the
# helper returned its argument; 93d1c9f498a7 (supervisor) and 3098e6eca88e (user pointers) made it
# untag; 703d794cb8cb let a guest enable LAM. The behaviour is reachable from 703d794cb8cb.

def test_lam_model_is_named_after_703d794c_and_the_old_name_is_an_alias(capsys: pytest.CaptureFixture[str]) -> None:
    from vmxaddr.cli import main
    from vmxaddr.models import REGISTRY
    from vmxaddr.models.kvm import HISTORY

    assert "kvm-703d794c" in HISTORY and "kvm-b39bd520" not in HISTORY
    assert get("kvm-b39bd520") is get("kvm-703d794c")
    assert REGISTRY["alias/kvm-b39bd520"].kind == "alias"
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "kvm-b39bd520" in x)
    assert "alias of kvm-703d794c" in line and "703d794cb8cb" in line and "returned its argument" in line
    assert get("kvm-82277eee").__doc__.replace("\n", " ").split("Ended by ")[1].startswith("703d794cb8cb")


# -- which instructions each KVM handled -------------------------------------------------------------

def test_kvm_models_cover_only_what_their_kvm_handled() -> None:
    from vmxaddr.models import covers

    # 064aea774768 (2011): the VMCS instructions only; VMXON's operand was first read by
    # 3573e22cfeca (2014), INVEPT came with bfd0a56b9000 (2013), INVVPID's emulation in 2015,
    # INVPCID's handle_invpcid() with eb4b248e152d (2018).
    first = get("kvm-064aea77")
    assert [m for m in ("vmclear", "vmptrld", "vmptrst", "vmread", "vmwrite") if not covers(first, m)] == []
    assert [m for m in ("vmxon", "invept", "invvpid", "invpcid") if covers(first, m)] == []
    f9 = get("kvm-f9eb4af6")  # 2015: VMXON and INVEPT yes, INVVPID (after it) and INVPCID no
    assert covers(f9, "vmxon") and covers(f9, "invept") and not covers(f9, "invvpid") and not covers(f9, "invpcid")
    for name in ("kvm-946c522b", "kvm-703d794c", "kvm-current"):
        assert covers(get(name), "invvpid") and covers(get(name), "invpcid"), name
    for name in ("kvm-064aea77", "kvm-current"):  # descriptor-table exits go through the emulator
        assert not covers(get(name), "lgdt") and not covers(get(name), "xsaves")


INVPCID_EAX = bytes.fromhex("660f388200")  # 66 0F 38 82 /r, ModRM 00: reg EAX, rm [EAX] (32-bit code)


def test_kvm_invpcid_limit_check_uses_its_16_bytes_from_fdb28619() -> None:
    # INVPCID EAX, [EAX], EAX = 0xff8, DS limit 0xfff, 32-bit protected mode, CPL 0.
    # kvm-c1a9acbc checks a fixed 8 bytes: 0xff8 + 8 - 1 = 0xfff <= 0xfff: ok.
    # kvm-fdb28619 passes sizeof(operand) = 16 (handle_invpcid): 0xff8 + 16 - 1 = 0x1007 > 0xfff:
    # #GP(0) — as the SDM says for the 16-byte read.
    st = CpuState.for_code_size(32).with_reg("eax", 0xFF8).with_segment("ds", limit=0xFFF)
    c = Case(decode(INVPCID_EAX, 32), st)
    assert c.run(get("kvm-c1a9acbc")).outcome.kind == "ok"
    assert c.run(get("kvm-fdb28619")).outcome.short() == c.run(sdm).outcome.short() == "#GP(0)"


def test_kvm_invpcid_makes_no_cpl_check() -> None:
    # handle_invpcid() does not call nested_vmx_check_permission(): at CPL 3 (a state the
    # processor never delivers: INVPCID's #GP(0) comes first) KVM computes the address; a VMX
    # instruction in the same state gets #GP(0) from KVM.
    st = CpuState.from_json({"cpl": 3, "registers": {"eax": "0x100"}}, CpuState.for_code_size(32))
    r = Case(decode(INVPCID_EAX, 32), st).run(get("kvm-current"))
    assert (r.outcome.kind, r.linear_address) == ("ok", 0x100)
    assert Case(decode(bytes.fromhex("0fc730"), 32), st).run(get("kvm-current")).outcome.short() == "#GP(0)"


# -- commands that iterate models report what a model does not cover ---------------------------------

VMXON_EAX = bytes.fromhex("f30fc730")  # F3 0F C7 /6 with ModRM 30: VMXON [EAX]


def test_diff_lists_a_model_that_does_not_cover_the_instruction() -> None:
    from vmxaddr.diff import diff_case, diff_text

    d = diff_case(Case(decode(VMXON_EAX, 32), CpuState.for_code_size(32)),
                  [("sdm", sdm), ("kvm-064aea77", get("kvm-064aea77")), ("kvm-f9eb4af6", get("kvm-f9eb4af6"))])
    assert d.not_covered == ("kvm-064aea77",) and list(d.results) == ["sdm", "kvm-f9eb4af6"] and d.agree
    assert "kvm-064aea77: does not cover VMXON" in diff_text(d)


@pytest.mark.parametrize("argv", [["explain", "--model", "kvm-064aea77"], ["cross", "--model", "kvm-064aea77"]])
def test_explain_and_cross_refuse_an_instruction_the_model_does_not_cover(argv: list[str],
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from vmxaddr.cli import main

    assert main([*argv, "--mode", "32", "f3 0f c7 30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kvm-064aea77 does not cover VMXON" in err[0]


def test_check_trace_does_not_check_against_or_fingerprint_with_a_model_that_does_not_cover() -> None:
    import io
    import json

    from vmxaddr.trace import Checker, NamedModel, check_stream

    rec = {"instruction": "vmxon", "instruction_info": "0x00418080", "exit_qualification": "0x0",
           "code_size": 32, "state": {"registers": {"rax": "0x10"}}, "result": {"kind": "ok", "linear_address": "0x10"}}
    out: list[dict[str, object]] = []
    models = [NamedModel("kvm-064aea77", get("kvm-064aea77")), NamedModel("kvm-f9eb4af6", get("kvm-f9eb4af6"))]
    check_stream(io.BytesIO((json.dumps(rec) + "\n").encode()),
                 Checker(reference="kvm-064aea77", models=models, fingerprint="all"), out.append)
    v = out[0]
    assert v["hypervisor"]["verdict"] == "not-checkable"  # type: ignore[index]
    assert "kvm-064aea77 does not" in v["hypervisor"]["missing"][0]  # type: ignore[index]
    assert v["fingerprint"]["models"] == ["kvm-f9eb4af6"]  # type: ignore[index]
