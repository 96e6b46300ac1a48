"""vmxaddr.realcode on small C functions written here: the extractor, the compiler-error parser,
the KVM shim's helpers and the ctypes bridge (issue 14, item 6). Needs only the system C
compiler: without one the build tests skip with the reason, and fail under CI (env CI set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from ci_policy import under_ci

from vmxaddr.cli import main
from vmxaddr.decode import decode
from vmxaddr.exitinfo import ExitInfo
from vmxaddr.models.base import Access
from vmxaddr.realcode import build, extract
from vmxaddr.realcode.bridge import Library
from vmxaddr.realcode.extract import ExtractError, find_function, mask
from vmxaddr.state import CpuState


def need_cc() -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        msg = "no C compiler (cc) on PATH: the real-code models cannot be built"
        if under_ci():
            pytest.fail("CI must not skip the real-code build tests: " + msg)
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    # builds go to a per-session cache; sources are never fetched here
    monkeypatch.setenv("VMXADDR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# -- extractor --------------------------------------------------------------------------------

SAMPLE = r'''
/* a comment naming target(void) { not code } */
static int target(int x);   // a prototype, not the definition
#define BRACE "{"
static const char *s = "target(1) {";

static inline int
target(int x)
{
	char c = '}';          /* a closing brace in a char literal */
	if (x) {
		return x + 1;  // }
	}
	return c == '}' ? 2 : 3;
}

int after(void) { return target(0); }
'''


def test_mask_keeps_length_and_lines_and_hides_braces():
    m = mask(SAMPLE)
    assert len(m) == len(SAMPLE) and m.count("\n") == SAMPLE.count("\n")
    assert "not code" not in m and "'}'" not in m and '"{"' not in m
    # the code outside comments and literals is untouched
    assert "static inline int\ntarget(int x)\n{" in m


def test_find_function_takes_the_definition_with_its_specifiers():
    e = find_function(SAMPLE, "target", "sample.c")
    # By hand: the definition starts at "static inline int" (line 7) and ends at the "}" of line 15.
    assert e.text.startswith("static inline int\ntarget(int x)\n{")
    assert e.text.endswith("return c == '}' ? 2 : 3;\n}")
    assert (e.start_line, e.end_line) == (7, 15)
    assert e.conditionals == ()
    assert e.with_line_marker().startswith('#line 7 "sample.c"\n')
    assert find_function(SAMPLE, "after").text == "int after(void) { return target(0); }"


def test_macro_assembled_definition_is_reported():
    text = "#define DEFINE_GETTER(n) int n(void)\nDEFINE_GETTER(get_thing) { return 1; }\n"
    with pytest.raises(ExtractError, match="assembled by the macro DEFINE_GETTER"):
        find_function(text, "get_thing")
    with pytest.raises(ExtractError, match="macro"):
        find_function("#define get_other(x) ((x) + 1)\n", "get_other")


def test_ifdef_split_definitions_are_reported():
    two = "#ifdef CONFIG_A\nint f(int a) { return a; }\n#else\nint f(int a) { return -a; }\n#endif\n"
    with pytest.raises(ExtractError, match=r"defined 2 times \(lines 2, 4\)"):
        find_function(two, "f")
    header = "int g(\n#ifdef CONFIG_A\n long a\n#else\n int a\n#endif\n) { return 0; }\n"
    with pytest.raises(ExtractError, match="split by #ifdef"):
        find_function(header, "g")


def test_conditionals_inside_the_body_are_listed():
    text = "int h(void)\n{\n#ifdef CONFIG_X86_64\n\treturn 64;\n#else\n\treturn 32;\n#endif\n}\n"
    e = find_function(text, "h")
    assert e.conditionals == (3, 5, 7)


def test_absent_function_is_reported():
    with pytest.raises(ExtractError, match="no function named nowhere"):
        find_function(SAMPLE, "nowhere")
    with pytest.raises(ExtractError, match="used but not defined"):
        find_function("int a(void) { return used_only(); }\n", "used_only")


# -- compiler messages ------------------------------------------------------------------------

def test_unresolved_identifiers_from_gcc_and_clang_messages():
    gcc = ("x.c:3:9: error: 'FOO' undeclared (first use in this function)\n"
           "x.c:4:5: error: implicit declaration of function 'bar' [-Werror=implicit-function-declaration]\n"
           "x.c:5:1: error: unknown type name 'gfn_t'\n"
           "x.c:6:7: error: 'struct kvm_segment' has no member named 'avl2'\n"
           "x.c:9:9: error: 'FOO' undeclared\n")
    assert build.unresolved(gcc) == ["FOO", "bar", "gfn_t", "struct kvm_segment.avl2"]
    clang = ("x.c:3:9: error: use of undeclared identifier 'FOO'\n"
             "x.c:4:5: error: call to undeclared function 'bar'; ISO C99 and later do not support\n"
             "/usr/bin/ld: /tmp/x.o: in function `f': undefined reference to `baz'\n")
    assert build.unresolved(clang) == ["FOO", "bar", "baz"]


# -- the KVM shim, with a stand-in for get_vmx_mem_address written here ----------------------------

# Exercises each helper kvm.h implements; the expected values below are worked out by hand.
STANDIN = r'''
int get_vmx_mem_address(struct kvm_vcpu *vcpu, unsigned long exit_qualification,
			u32 vmx_instruction_info, bool wr, int len, gva_t *ret)
{
	struct kvm_segment s;
	int base_reg = (vmx_instruction_info >> 23) & 0xf;
	gva_t off = (gva_t)sign_extend64(exit_qualification, 15);

	if (!(vmx_instruction_info & (1u << 27)))
		off += kvm_register_read(vcpu, base_reg);

	vmx_get_segment(vcpu, &s, (vmx_instruction_info >> 15) & 7);
	*ret = s.base + off;
	if (is_long_mode(vcpu)) {
		if (is_noncanonical_address(*ret, vcpu) || is_noncanonical_address(*ret, vcpu, 0))
			kvm_queue_exception_e(vcpu, GP_VECTOR, 0);
	} else if (wr && s.unusable) {
		kvm_queue_exception_e(vcpu, SS_VECTOR, 0);
	} else if (len == 3) {
		kvm_queue_exception(vcpu, UD_VECTOR);
	}
	return vcpu->exception.queued;
}
'''


def _standin_lib(tmp_path: Path) -> Library:
    need_cc()
    part = find_function(STANDIN, "get_vmx_mem_address", "standin.c")
    lib = build.build_library([part], ("kvm.h",), "kvm_adapter.c", "the stand-in", extra="VMXADDR_EXPORT_LAYOUT;\n")
    return Library(lib, "vmxaddr_kvm")


# info: base RBP (5) at bits 26:23, segment SS (2) at bits 17:15, no index (bit 22), 16-bit address size
INFO = 5 << 23 | 2 << 15 | 1 << 22


def test_shim_register_read_truncates_outside_64_bit_mode(tmp_path):
    lib = _standin_lib(tmp_path)
    exit = ExitInfo("vmptrld", INFO, 0xFFF0)  # displacement -0x10 sign-extended from bit 15
    st32 = CpuState.for_code_size(32).with_reg("rbp", 0x1_0000_1000).with_segment("ss", base=0x100)
    r = lib.call(exit, st32, Access(8, False))
    # 32-bit mode: RBP read as 0x1000; 0x100 + 0x1000 - 0x10 = 0x10f0; no fault; segment SS
    status, vector, _err, valid, _ea, linear, _sb, _d, seg, reads = r
    assert (status, linear, seg, reads) == (0, 0x10F0, 2, 1 << 5)  # kvm.h reports the one register read: RBP
    st64 = CpuState.for_code_size(64).with_reg("rbp", 0x1_0000_1000)
    status, vector, err, valid, _ea, linear, *_ = lib.call(exit, st64, Access(8, False))
    # 64-bit mode: all of RBP: 0x1_0000_1000 - 0x10 = 0x1_0000_0ff0 (canonical: no fault)
    assert (status, linear) == (0, 0x1_0000_0FF0)


def test_shim_canonical_check_honours_la57(tmp_path):
    from dataclasses import replace

    lib = _standin_lib(tmp_path)
    exit = ExitInfo("vmptrld", INFO, 0)
    # bit 55 set, bits 63:56 clear: not 48-bit canonical (bits 63:47 must equal bit 47), but 57-bit
    # canonical (bits 63:56 equal bit 56 = 0) — SDM Vol. 1 §3.3.7.1
    st = CpuState.for_code_size(64).with_reg("rbp", 0x0080_0000_0000_0000)
    status, vector, err, valid, *_ = lib.call(exit, st, Access(8, False))
    assert (status, vector, err, valid & 32) == (1, 13, 0, 32)  # #GP(0), with an error code
    status, *_ = lib.call(exit, replace(st, la57=True), Access(8, False))
    assert status == 0


def test_shim_exception_slot_and_segment_fields(tmp_path):
    lib = _standin_lib(tmp_path)
    exit = ExitInfo("vmptrst", INFO, 0)
    st = CpuState.for_code_size(32).with_segment("ss", unusable=True)
    status, vector, err, valid, *_ = lib.call(exit, st, Access(8, True))
    assert (status, vector, err) == (1, 12, 0)  # the stand-in's "wr && unusable" -> #SS(0)
    status, vector, err, valid, *_ = lib.call(exit, CpuState.for_code_size(32), Access(3, False))
    assert (status, vector, valid & 32) == (1, 6, 0)  # kvm_queue_exception: #UD, no error code


def test_adapter_prologue_cpl_and_vmread_register(tmp_path):
    lib = _standin_lib(tmp_path)
    st = CpuState.for_code_size(32)
    from dataclasses import replace
    # CPL 3: #GP(0) before any address (nested_vmx_check_permission)
    status, vector, err, valid, *_ = lib.call(ExitInfo("vmptrld", INFO, 0), replace(st, cpl=3), Access(8, False))
    assert (status, vector, err, valid & 4) == (1, 13, 0, 0)
    # virtual-8086 mode has CPL 3 whatever the state's cpl field says (SDM Vol. 3A §20.3)
    status, vector, *_ = lib.call(ExitInfo("vmptrld", INFO, 0), replace(st, mode="virtual-8086"), Access(8, False))
    assert (status, vector) == (1, 13)
    # VMREAD with bit 10 (register operand): no memory
    status, *_ = lib.call(ExitInfo("vmread", 1 << 10, 0), st, Access(4, True))
    assert status == 2


def test_bridge_rewrites_what_changed_between_cases(tmp_path):
    """The bridge reuses its buffers; alternating states must still give each its own answer."""
    lib = _standin_lib(tmp_path)
    exit = ExitInfo("vmptrld", INFO, 0)
    a = CpuState.for_code_size(32).with_reg("rbp", 0x10).with_segment("ss", base=0x1000)
    b = CpuState.for_code_size(32).with_reg("rbp", 0x20)
    c = CpuState.for_code_size(64).with_reg("rbp", 0x20)  # same regs values, other mode
    for _ in range(2):
        assert lib.call(exit, a, Access(8, False))[5] == 0x1010
        assert lib.call(exit, b, Access(8, False))[5] == 0x20
        assert lib.call(exit, c, Access(8, False))[5] == 0x20
        assert lib.call(exit, a, Access(8, False))[5] == 0x1010


def test_a_read_outside_the_operand_is_an_error_not_a_stale_value(tmp_path):
    """The KVM models pass only the operand's registers; kvm.h reports every register read, so a
    function reading another one (here RAX, named by no operand field) is stopped."""
    need_cc()
    from vmxaddr.realcode import models as rm

    text = STANDIN.replace("off += kvm_register_read(vcpu, base_reg);", "off += kvm_register_read(vcpu, 0);")
    path = build.build_library([find_function(text, "get_vmx_mem_address", "reads.c")], ("kvm.h",), "kvm_adapter.c",
                               "reads", extra="VMXADDR_EXPORT_LAYOUT;\n")
    m = rm.make_model("reads", lambda: Library(path, "vmxaddr_kvm"), rm.RealCodeInfo("reads"), operand_only=True)
    st = CpuState.for_code_size(32)
    with pytest.raises(rm.RealCodeError, match="outside the operand"):
        m(ExitInfo("vmptrld", INFO, 0), st, Access(8, False))  # base RBP, but RAX read
    assert m(ExitInfo("vmptrld", 0 << 23 | 2 << 15 | 1 << 22, 0), st, Access(8, False)).outcome.kind == "ok"


def test_build_is_cached_by_content(tmp_path):
    need_cc()
    part = find_function(STANDIN, "get_vmx_mem_address", "standin.c")
    one = build.build_library([part], ("kvm.h",), "kvm_adapter.c", "x", extra="VMXADDR_EXPORT_LAYOUT;\n")
    two = build.build_library([part], ("kvm.h",), "kvm_adapter.c", "x", extra="VMXADDR_EXPORT_LAYOUT;\n")
    assert one == two and one.parent.name == "build"
    other = extract.Extracted(part.name, part.text.replace("len == 3", "len == 5"), part.path, part.start_line,
                              part.end_line)
    assert build.build_library([other], ("kvm.h",), "kvm_adapter.c", "x", extra="VMXADDR_EXPORT_LAYOUT;\n") != one


# -- unresolved identifiers: one per line, exit 2 -----------------------------------------------

def test_kvm_tree_with_unknown_identifiers_lists_them_and_exits_2(tmp_path, capsys):
    need_cc()
    tree = tmp_path / "linux" / "arch" / "x86" / "kvm" / "vmx"
    tree.mkdir(parents=True)
    (tree / "nested.c").write_text(STANDIN.replace("*ret = s.base + off;",
                                                   "*ret = s.base + off + NEW_OFFSET + kvm_new_helper(vcpu);"))
    rc = main(["diff", "--models", f"sdm,kvm-tree:{tmp_path / 'linux'}", "--mode", "32", "0f c7 75 00"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "\n  NEW_OFFSET\n  kvm_new_helper\n" in err + "\n"
    assert "Traceback" not in err


def test_c_adapter_without_layout_export_is_refused(tmp_path, capsys):
    need_cc()
    import subprocess

    src = tmp_path / "bare.c"
    src.write_text('#include "vmxaddr.h"\nint f(const struct vmxaddr_exit *e, const struct vmxaddr_state *s,\n'
                   '      const struct vmxaddr_access *a, struct vmxaddr_result *o) { return 0; }\n')
    so = tmp_path / "libbare.so"
    subprocess.run(["cc", "-shared", "-fPIC", f"-I{build.SHIM_DIR}", "-o", str(so), str(src)], check=True)
    rc = main(["diff", "--models", f"sdm,c:{so}:f", "--mode", "32", "0f c7 75 00"])
    assert rc == 2
    assert "does not export vmxaddr_layout" in capsys.readouterr().err


def test_c_adapter_from_source(tmp_path):
    need_cc()
    from vmxaddr.models import get

    src = tmp_path / "flat.c"
    # A deliberately simple adapter: linear = base register + displacement, never a fault.
    src.write_text('#include "vmxaddr.h"\n'
                   'int flat(const struct vmxaddr_exit *e, const struct vmxaddr_state *s,\n'
                   '         const struct vmxaddr_access *a, struct vmxaddr_result *o)\n'
                   '{\n\to->status = VMXADDR_OK;\n'
                   '\to->linear_address = s->gpr[(e->instruction_info >> 23) & 15] + e->exit_qualification;\n'
                   '\to->valid = VMXADDR_HAVE_LINEAR_ADDRESS;\n\treturn 0;\n}\n')
    m = get(f"c:{src}:flat")
    ins = decode(bytes.fromhex("0fc77508"), 32)  # VMPTRLD [EBP+8]
    st = CpuState.for_code_size(32).with_reg("ebp", 0x1000)
    from vmxaddr.case import Case

    r = Case(ins, st).run(m)
    assert r.outcome.kind == "ok" and r.linear_address == 0x1008


# -- the documented example: a planted bug, found and shrunk in one command -----------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "tinyvmx.c"


def test_example_adapter_planted_bug_is_the_only_class(tmp_path):
    """docs/examples/tinyvmx.c follows the SDM except that it adds the DS/ES/SS/CS base in 64-bit
    mode (SDM Vol. 1 §3.4.2.1: only FS and GS keep a base there). Fuzzing finds that class and no
    other; with the one line corrected, nothing."""
    need_cc()
    from vmxaddr.diff import SEGMENT_BASE_IN_64
    from vmxaddr.fuzz import fuzz
    from vmxaddr.models import get

    model = get(f"c:{EXAMPLE}:tinyvmx_operand")
    assert "vmxon" in model.mnemonics and "xsaves" not in model.mnemonics  # its vmxaddr_mnemonics
    rep = fuzz(model, get("sdm"), seed=3, max_examples=2000, hypothesis_examples=0)
    assert set(rep.classes) == {SEGMENT_BASE_IN_64}
    w = rep.classes[SEGMENT_BASE_IN_64].witness
    assert w.instruction.code_size == 64 and w.state.segment(w.instruction.operand.segment).base != 0
    fixed = tmp_path / "tinyvmx_fixed.c"
    text = EXAMPLE.read_text()
    planted = "base = s->base;  /* PLANTED BUG"
    assert planted in text
    fixed.write_text(text.replace(planted, "base = seg >= VMXADDR_FS ? s->base : 0;  /* fixed"))
    rep = fuzz(get(f"c:{fixed}:tinyvmx_operand"), get("sdm"), seed=3, max_examples=2000, hypothesis_examples=0)
    assert not rep.classes, list(rep.classes)


def test_marshaller_and_ctypes_paths_agree(tmp_path, monkeypatch):
    """The compiled marshaller (shim/marshal.c) and the pure-ctypes path fill the same structures:
    on generated cases, the stand-in and the example adapter answer the same through both."""
    need_cc()
    import random

    from vmxaddr.diff import exit_and_access
    from vmxaddr.fuzz import gen_case
    from vmxaddr.gen import RandomChooser
    from vmxaddr.models.kvm import MNEMONICS
    from vmxaddr.realcode import models as rm
    from vmxaddr.realcode.bridge import marshaller

    assert marshaller() is not None  # a compiler and Python.h are here (the same as setup.py's build)
    part = find_function(STANDIN, "get_vmx_mem_address", "standin.c")
    path = build.build_library([part], ("kvm.h",), "kvm_adapter.c", "the stand-in", extra="VMXADDR_EXPORT_LAYOUT;\n")
    info = rm.RealCodeInfo("the stand-in")
    fast = rm.make_model("standin", lambda: Library(path, "vmxaddr_kvm"), info, operand_only=True)
    full = rm.make_model("standin-full", lambda: Library(path, "vmxaddr_kvm"), info)
    example = rm.c_model(f"c:{EXAMPLE}:tinyvmx_operand")
    monkeypatch.setattr(rm, "marshaller", lambda: None)
    slow = rm.make_model("standin-slow", lambda: Library(path, "vmxaddr_kvm"), info, operand_only=True)
    slow_full = rm.make_model("standin-slow-full", lambda: Library(path, "vmxaddr_kvm"), info)
    lib = Library(build.build_source('#include "vmxaddr.h"\nVMXADDR_EXPORT_LAYOUT;\n', "example",
                                     (build.SHIM_DIR, EXAMPLE.parent), (EXAMPLE,)), "tinyvmx_operand")
    slow_example = rm.make_model("example-slow", lambda: lib, info)
    ch = RandomChooser(random.Random(5))
    for _ in range(3000):
        case = gen_case(ch, MNEMONICS, case_policy := __import__("vmxaddr.exitinfo").exitinfo.DEFAULT_POLICY)
        exit, access = exit_and_access(case.instruction, case.state.rip, case_policy)
        answers = [m(exit, case.state, access)[:6] for m in (fast, full, slow, slow_full)]
        assert all(a == answers[0] for a in answers), (case.instruction.raw.hex(), answers)
        assert example(exit, case.state, access)[:6] == slow_example(exit, case.state, access)[:6]


def test_extracted_parts_are_cached_by_the_files_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every process loading a real-code model needs the functions; masking a kernel file takes a
    # quarter of a second, so the result is kept, and a changed or broken entry is not trusted
    from vmxaddr.realcode.build import cached_parts

    monkeypatch.setenv("VMXADDR_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "f.c"
    src.write_text("static int f(int x)\n{\n\treturn x + 1;\n}\n")
    calls: list[int] = []

    def compute() -> list[extract.Extracted]:
        calls.append(1)
        return [find_function(src.read_text(), "f", str(src))]

    first = cached_parts("t", [src], compute)
    assert cached_parts("t", [src], compute) == first and len(calls) == 1
    assert first[0].start_line == 1 and first[0].text.endswith("}")
    src.write_text("static int f(int x)\n{\n\treturn x + 2;\n}\n")
    os.utime(src, ns=(1, 1))  # another size and time: extracted again
    assert "x + 2" in cached_parts("t", [src], compute)[0].text and len(calls) == 2
    for entry in (tmp_path / "cache" / "extract").iterdir():
        entry.write_text("{broken")
    assert "x + 2" in cached_parts("t", [src], compute)[0].text and len(calls) == 3
