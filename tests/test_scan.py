"""The ELF scanner: objects assembled here, checked against where the assembler put each
instruction, against hand-derived VM-exit fields, and against `objdump -d`."""

from __future__ import annotations

import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmxaddr import scan, scancli
from vmxaddr.scan import CANDIDATE, Elf, scan_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_util import AS, OBJDUMP, assemble, expected_table, marked, objdump_family  # noqa: E402

pytestmark = pytest.mark.skipif(AS is None, reason="needs GNU as")

ROOT = Path(__file__).resolve().parent.parent

# (AT&T source, mnemonic) — memory and register forms of every instruction in the family
X64 = [
    ("vmread %rax, (%rbx)", "vmread"), ("vmread %rax, %rbx", "vmread"), ("vmread %r9, 0x10(%r10)", "vmread"),
    ("vmwrite (%rcx), %rdx", "vmwrite"), ("vmwrite %rcx, %rdx", "vmwrite"),
    ("vmptrld (%rax)", "vmptrld"), ("vmptrld %fs:(%rax)", "vmptrld"), ("vmptrst 8(%rsp)", "vmptrst"),
    ("vmclear -0x10(%rbp)", "vmclear"), ("vmxon 0x1234(%rip)", "vmxon"),
    ("invept (%rsi), %rax", "invept"), ("invvpid 0x10(%rdi,%rcx,4), %r8", "invvpid"),
    ("invpcid (%r12), %rdx", "invpcid"),
    ("lgdt (%rax)", "lgdt"), ("lidt 2(%rax)", "lidt"), ("sgdt (%rax)", "sgdt"), ("sidt (%rbx)", "sidt"),
    ("lldt %ax", "lldt"), ("lldt (%rax)", "lldt"), ("ltr %cx", "ltr"), ("ltr (%rbx)", "ltr"),
    ("sldt %ax", "sldt"), ("sldt (%rax)", "sldt"), ("str %eax", "str"), ("str (%rax)", "str"),
    ("xsaves (%rdi)", "xsaves"), ("xrstors (%rdi)", "xrstors"),
    ("rdrand %eax", "rdrand"), ("rdseed %rcx", "rdseed"),
]
X32 = [
    ("vmread %eax, (%ebx)", "vmread"), ("vmread %eax, -0x28(%ebp)", "vmread"), ("vmwrite %ecx, %edx", "vmwrite"),
    ("vmptrld (%eax)", "vmptrld"), ("vmptrst 0x1000", "vmptrst"), ("vmclear (%esp)", "vmclear"),
    ("vmxon 4(%esi,%edi,8)", "vmxon"), ("invept (%esi), %eax", "invept"), ("invvpid (%edi), %ebx", "invvpid"),
    ("invpcid (%ecx), %edx", "invpcid"), ("lgdt (%eax)", "lgdt"), ("sidt (%ebx)", "sidt"),
    ("lldt %ax", "lldt"), ("str (%eax)", "str"), ("rdseed %eax", "rdseed"), ("xsaves (%edi)", "xsaves"),
]
X16 = [
    ("vmread %eax, (%bx,%si)", "vmread"), ("vmwrite (%bp), %eax", "vmwrite"), ("vmclear -0x10(%bp)", "vmclear"),
    ("vmptrld (%si)", "vmptrld"), ("vmxon (%di)", "vmxon"), ("vmptrst (%esi)", "vmptrst"),
    ("lgdt (%bx)", "lgdt"), ("lldt %ax", "lldt"), ("str %ax", "str"), ("rdrand %ax", "rdrand"),
]
# Instructions whose bytes contain 0F 78 / 0F 79 / 0F C7 / 0F 00 / 0F 01 / 0F 38 80 without being one
FILLERS = [
    "mov $0x45780f, %eax",               # b8 0f 78 45 00
    "mov 0x790f(%rax), %ecx",            # 8b 88 0f 79 00 00
    "movabs $0x3f30c70f01280f, %rax",    # ... 0f 28 01 0f c7 30 3f ...
    "add $0x81380f90, %ebx",             # ... 90 0f 38 81
    "nop",
    "lea 0x1000f(%rip), %rdx",           # ... 0f 00 01 00
]
FILLERS_32 = [f for f in FILLERS if "%r" not in f and "movabs" not in f] + ["mov $0x0f00c70f, %edx"]


def findings(path: Path, mode: int | None = None) -> list[dict]:
    res = scan_file(str(path), mode)
    assert res.error is None, res.error
    return res.findings


@pytest.fixture(scope="module")
def obj64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("x64")
    return assemble(tmp, "x64", marked([s for s, _ in X64], FILLERS))


def check_against_table(obj: Path, table: list[tuple[str, str]], mode: int | None) -> list[dict]:
    expect, text, _ = expected_table(obj)
    got = findings(obj, mode)
    assert [f["offset"] for f in got] == [off for off, _ in expect]
    for f, (off, n), (src, mnemonic) in zip(got, expect, table, strict=True):
        assert f["mnemonic"] == mnemonic, src
        assert bytes.fromhex(f["bytes"]) == text[off:off + n], src
        assert f["section"] == ".text" and f["symbol"] == "f"
        assert f["symbol_offset"] == off and f["address"] == off  # ET_REL: section offsets
        assert (f["form"] == "register") == ("%" in src.split(",")[-1] and "(" not in src), src
    return got


def test_every_form_64(obj64: Path) -> None:
    check_against_table(obj64, X64, None)


def test_every_form_32(tmp_path: Path) -> None:
    obj = assemble(tmp_path, "x32", marked([s for s, _ in X32], FILLERS_32), bits32=True)
    got = check_against_table(obj, X32, None)
    assert all(f["instruction"]["code_size"] == 32 for f in got)
    with open(obj, "rb") as fh:
        assert ELFFile(fh).elfclass == 32


def test_every_form_16_with_mode(tmp_path: Path) -> None:
    obj = assemble(tmp_path, "x16", marked([s for s, _ in X16], ["nop", "mov $0x780f, %ax"], code=".code16"),
                   bits32=True)
    got = check_against_table(obj, X16, 16)
    assert all(f["instruction"]["code_size"] == 16 for f in got)


def test_exit_fields_derived_by_hand(obj64: Path) -> None:
    by_src = dict(zip((s for s, _ in X64), findings(obj64), strict=True))
    # VMREAD r/m64 memory form, [RBX], DS; 64-bit addresses; no index; reg2 RAX (0)
    f = by_src["vmread %rax, (%rbx)"]
    assert f["instruction_info"] == (2 << 7) | (3 << 15) | (1 << 22) | (3 << 23)
    assert f["exit_qualification"] == 0
    # register form: reg1 = RBX (the r/m operand) in bits 6:3, bit 10 set, reg2 RAX in 31:28
    f = by_src["vmread %rax, %rbx"]
    assert f["instruction_info"] & ((0xF << 3) | (1 << 10) | (0xF << 28)) == (3 << 3) | (1 << 10)
    # VMCLEAR [RBP-0x10]: SS by default, base RBP (5), displacement sign-extended
    f = by_src["vmclear -0x10(%rbp)"]
    assert f["instruction_info"] == (2 << 7) | (2 << 15) | (1 << 22) | (5 << 23)
    assert f["exit_qualification"] == (1 << 64) - 0x10
    # VMXON [RIP+0x1234]: base and index invalid; qualification = displacement + next RIP
    f = by_src["vmxon 0x1234(%rip)"]
    assert f["instruction_info"] & ((1 << 22) | (1 << 27)) == (1 << 22) | (1 << 27)
    assert f["exit_qualification"] == 0x1234 + f["address"] + len(bytes.fromhex(f["bytes"]))
    assert f["form"] == "memory rip-relative disp32"
    # INVVPID [RDI+RCX*4+0x10], R8: scaling 2 (x4), index RCX (1), base RDI (7), reg2 R8
    f = by_src["invvpid 0x10(%rdi,%rcx,4), %r8"]
    assert f["instruction_info"] == 2 | (2 << 7) | (3 << 15) | (1 << 18) | (7 << 23) | (8 << 28)
    assert f["exit_qualification"] == 0x10 and f["form"] == "memory sib disp8"
    # FS override stays in 64-bit mode
    assert (by_src["vmptrld %fs:(%rax)"]["instruction_info"] >> 15) & 7 == 4


def test_no_false_positive_in_immediates(tmp_path: Path) -> None:
    src = ".text\n.globl g\ng:\n" + "\n".join(f"  {f}" for f in FILLERS) + "\n  ret\n"
    obj = assemble(tmp_path, "fp", src)
    with open(obj, "rb") as fh:
        text = ELFFile(fh).get_section_by_name(".text").data()
    assert len(CANDIDATE.findall(text)) >= 5  # the bytes are there ...
    assert findings(obj) == []  # ... but inside other instructions


def test_sweep_restarts_at_each_symbol(tmp_path: Path) -> None:
    # f1's last bytes start a MOVABS that would swallow g1's VMPTRLD; objdump starts again at g1
    src = (".text\nf1:\n  nop\n  .byte 0x48, 0xb8\ng1:\n  vmptrld (%rax)\n  .byte 0x06\n  vmread %rax, (%rbx)\n"
           "  .byte 0xc4\n  vmclear (%rcx)\n  ret\n")
    obj = assemble(tmp_path, "restart", src)
    got = findings(obj)
    assert [(f["mnemonic"], f["offset"], f["symbol"], f["symbol_offset"]) for f in got] == [
        ("vmptrld", 3, "g1", 0), ("vmread", 7, "g1", 4), ("vmclear", 11, "g1", 8)]


@pytest.mark.skipif(OBJDUMP is None, reason="needs objdump")
@pytest.mark.parametrize(("name", "table", "fillers", "code", "bits32", "mode", "machine"), [
    ("o64", X64, FILLERS, "", False, None, None),
    ("o32", X32, FILLERS_32, "", True, None, None),
    ("o16", X16, ["nop"], ".code16", True, 16, "i8086"),
    ("c32", X32, FILLERS_32, ".code32", False, 32, "i386"),  # 32-bit code in an ELF64 object
])
def test_matches_objdump(tmp_path: Path, name: str, table: list[tuple[str, str]], fillers: list[str], code: str,
                         bits32: bool, mode: int | None, machine: str | None) -> None:
    obj = assemble(tmp_path, name, marked([s for s, _ in table], fillers, code=code), bits32=bits32)
    ours = {(f["section"], f["address"], f["mnemonic"]) for f in findings(obj, mode)}
    assert ours == objdump_family(obj, machine)
    assert len(ours) == len(table)


@pytest.mark.skipif(OBJDUMP is None, reason="needs objdump")
def test_matches_objdump_on_data_in_code(tmp_path: Path) -> None:
    # undecodable bytes before VMX instructions: objdump's "(bad)" lengths must be followed
    junk = ["0x06", "0x0f, 0x04", "0xd6", "0xc4", "0x62", "0xf0, 0x90", "0x8f, 0xe9", "0x0f, 0xff", "0xd9, 0x0f",
            "0xc5, 0x0f, 0x00", "0xdb, 0x64, 0x69", "0x65, 0x2f", "0x0f, 0xc7, 0xc8", "0x0f, 0x38, 0xff",
            "0x62, 0x72, 0x6f, 0x6b", "0x9b, 0xd8, 0x63"]
    lines = [".text", "h:"]
    for j in junk:
        lines += [f"  .byte {j}", "  vmptrld (%rax)", "  .byte 0x0f, 0xc7, 0x30", "  vmread %rax, %rbx"]
    obj = assemble(tmp_path, "junk", "\n".join(lines) + "\n")
    ours = {(f["section"], f["address"], f["mnemonic"]) for f in findings(obj)}
    assert ours == objdump_family(obj)


def _binutils_240() -> bool:
    if OBJDUMP is None:
        return False
    out = subprocess.run([OBJDUMP, "--version"], capture_output=True, text=True, check=False).stdout
    return " 2.40" in out.splitlines()[0] if out else False


@pytest.mark.skipif(not _binutils_240(), reason="objdump's (bad) lengths were followed for binutils 2.40")
@pytest.mark.parametrize("mode", [64, 32, 16])
def test_matches_objdump_on_random_bytes(tmp_path: Path, mode: int) -> None:
    """Random bytes sprinkled with VMX-family encodings: the sweep must stay in step with
    objdump through whatever it shows as "(bad)". objdump also shows LOCK-prefixed forms
    (#UD, no VM exit), which the decoder refuses: they are listed as rejected instead, as are
    0F 38 80-82 and F3 0F 78 without the prefix the instruction needs."""
    import random
    rnd = random.Random(mode)
    vmx = [b"\x0f\xc7\x30", b"\x0f\x78\xc3", b"\x66\x0f\xc7\x30", b"\x0f\x79\x01", b"\x0f\x00\x00",
           b"\x0f\x01\x10", b"\x66\x0f\x38\x80\x01", b"\x0f\xc7\xf0"]
    blob = bytearray()
    while len(blob) < 12000:
        blob += rnd.choice(vmx) if rnd.random() < 0.3 else rnd.randbytes(rnd.randint(1, 6))
    lines = [".code16" if mode == 16 else "", ".text", "r:"]
    lines += [".byte " + ",".join(str(b) for b in blob[i:i + 16]) for i in range(0, len(blob), 16)]
    obj = assemble(tmp_path, f"rnd{mode}", "\n".join(lines) + "\n", bits32=mode != 64)
    # binutils 2.40 shows D5 as "(bad)": compared with the scan's --no-apx view (the APX view is
    # checked against llvm-objdump-19 in tests/test_scan_apx.py)
    res = scan_file(str(obj), mode, apx=False)
    ours = {(f["section"], f["address"], f["mnemonic"]) for f in res.findings}
    theirs = objdump_family(obj, "i8086" if mode == 16 else None)
    refused = {(r["section"], r["address"]) for r in res.rejected}
    assert ours <= theirs
    assert {k[:2] for k in theirs - ours} <= refused
    assert len(ours) > 300 and {r["kind"] for r in res.rejected} <= {"lock", "prefix"}


def test_directory_arguments(obj64: Path, tmp_path: Path) -> None:
    d = tmp_path / "tree" / "sub"
    d.mkdir(parents=True)
    (d / "a.ko").write_bytes(obj64.read_bytes())
    (d / "b.ko.xz").write_bytes(lzma.compress(obj64.read_bytes()))
    (d / "notes.gz").write_bytes(gzip.compress(b"not an ELF"))
    (d / "readme").write_text("text")
    assert [Path(p).name for p in scan.expand_paths([str(tmp_path / "tree")])] == ["a.ko", "b.ko.xz"]


def test_compressed_inputs_give_the_same_findings(obj64: Path, tmp_path: Path) -> None:
    plain = [(f["section"], f["offset"], f["bytes"]) for f in findings(obj64)]
    data = obj64.read_bytes()
    variants = {"o.xz": lzma.compress(data), "o.gz": gzip.compress(data)}
    zstandard = pytest.importorskip("zstandard")
    variants["o.zst"] = zstandard.ZstdCompressor().compress(data)
    for name, blob in variants.items():
        p = tmp_path / name
        p.write_bytes(blob)
        res = scan_file(str(p))
        assert res.error is None and res.info["compression"] in ("xz", "gzip", "zstd")
        assert [(f["section"], f["offset"], f["bytes"]) for f in res.findings] == plain


def test_reader_agrees_with_pyelftools(obj64: Path) -> None:
    for path in (obj64, Path(sys.executable).resolve()):
        data = path.read_bytes()
        ours = Elf(data)
        with open(path, "rb") as fh:
            ref = ELFFile(fh)
            assert ours.bits == ref.elfclass
            assert [(s.name, s.offset, s.size, s.flags, s.addr) for s in ours.sections] == [
                (s.name, s["sh_offset"], s["sh_size"], s["sh_flags"], s["sh_addr"]) for s in ref.iter_sections()]
            tab = ref.get_section_by_name(".symtab") or ref.get_section_by_name(".dynsym")
            rel = ref["e_type"] == "ET_REL"
            secs = list(ref.iter_sections())
            # pyelftools' view of what objdump labels code with: named symbols other than section and
            # file symbols, defined in a real section (not SHN_UNDEF/ABS/COMMON), at an address inside it
            want = set()
            for s in tab.iter_symbols():
                x = s["st_shndx"]
                if (not s.name or s["st_info"]["type"] in ("STT_SECTION", "STT_FILE") or not isinstance(x, int)
                        or x == 0 or x >= len(secs)):
                    continue
                base = 0 if rel else secs[x]["sh_addr"]
                if 0 <= s["st_value"] - base < secs[x]["sh_size"]:
                    want.add((x, s.name, s["st_value"]))
        got = set()
        for sec in ours.sections:
            base = 0 if ours.relocatable else sec.addr
            got |= {(sec.index, s.name, s.value + base) for s in ours.symbols(sec)}
        assert want and got == want, (path, sorted(want - got)[:5], sorted(got - want)[:5])


def test_class_and_code_disagree_warning(tmp_path: Path) -> None:
    src = ".text\n.code64\nk:\n" + "  mov %rax, %rbx\n  lea 8(%rax), %rcx\n" * 200 + "  vmptrld (%rax)\n  ret\n"
    obj = assemble(tmp_path, "mixed", src, bits32=True)
    res = scan_file(str(obj))
    assert any("--mode 64" in w for w in res.warnings)
    res64 = scan_file(str(obj), 64)
    assert not res64.warnings and [f["mnemonic"] for f in res64.findings] == ["vmptrld"]


# -- damaged files and the command line -------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmxaddr.cli", "scan", *args], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def test_damaged_files_one_line_each_others_still_scanned(obj64: Path, tmp_path: Path) -> None:
    data = obj64.read_bytes()
    bad = {
        "truncated.o": data[: len(data) // 2],
        "notelf.o": b"hello world\n",
        "empty.o": b"",
        "badgzip.gz": gzip.compress(data)[:-40] + b"x" * 40,
        "badxz.xz": lzma.compress(data)[:100],
        "arm.o": data[:18] + (40).to_bytes(2, "little") + data[20:],
        "bigendian.o": data[:5] + b"\x02" + data[6:],
    }
    paths = []
    for name, blob in bad.items():
        (tmp_path / name).write_bytes(blob)
        paths.append(str(tmp_path / name))
    out = run_cli("--json", str(obj64), *paths)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == len(bad)
    assert all(line.startswith("vmxaddr scan: ") and "Traceback" not in line for line in lines)
    doc = json.loads(out.stdout)
    assert set(doc) >= {"files", "findings", "summary", "errors"}
    assert len(doc["findings"]) == len(X64) and len(doc["errors"]) == len(bad)
    assert doc["summary"]["by_mnemonic"]["vmread"] == 3
    msgs = {Path(e["file"]).name: e["error"] for e in doc["errors"]}
    assert "truncated" in msgs["truncated.o"] and "not an ELF" in msgs["notelf.o"]
    assert "x86" in msgs["arm.o"] and "gzip" in msgs["badgzip.gz"] and "xz" in msgs["badxz.xz"]


def test_cli_text_output_and_bad_arguments(obj64: Path) -> None:
    out = run_cli(str(obj64))
    assert out.returncode == 0
    assert f"{len(X64)} VMX-family instructions in 1 files" in out.stdout
    assert "vmread memory modrm disp0" in out.stdout
    assert run_cli("--mode", "48", str(obj64)).returncode == 2
    assert run_cli().returncode == 2


def test_mode_for_one_file(obj64: Path) -> None:
    args = [(obj64.name, 32)]
    assert scancli._mode_for(str(obj64), [*args]) == 32
    assert scancli._mode_for("/other/file.o", [*args]) is None
    assert scancli._mode_for("/other/file.o", [(None, 64), *args]) == 64


def test_parallel_scan_same_as_serial(obj64: Path, tmp_path: Path) -> None:
    jobs = [(str(obj64), None)] * 3 + [(str(tmp_path / "missing"), None)] + [(str(obj64), None)] * 3
    serial = [(r.path, len(r.findings), r.error) for r in scancli.scan_files(jobs, 1)]
    parallel = [(r.path, len(r.findings), r.error) for r in scancli.scan_files(jobs, 2)]
    assert serial == parallel


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_elf_never_raises(obj64: Path, tmp_path: Path, data: st.DataObject) -> None:
    blob = bytearray(obj64.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path / "mutated.o"
    path.write_bytes(bytes(blob))
    res = scan_file(str(path))  # must not raise
    assert (res.error is None) or ("\n" not in res.error and res.error)


def test_mutated_headers_never_raise(obj64: Path, tmp_path: Path) -> None:
    """Every byte of the ELF header and the section-header table set to 0x00, 0xff and 0x80."""
    data = obj64.read_bytes()
    shoff = int.from_bytes(data[0x28:0x30], "little")
    spots = list(range(0x40)) + list(range(shoff, len(data)))
    for i in spots:
        for v in (0x00, 0xFF, 0x80):
            blob = data[:i] + bytes([v]) + data[i + 1:]
            try:
                res = scan.scan_image("x", blob)
            except scan.ScanError:
                continue
            assert res.error is None


@pytest.mark.parametrize("bits", [64, 32, 16])
def test_resynchronising_gives_the_full_sweeps_starts(bits: int) -> None:
    """Far candidates are reached by resynchronising, near ones by sweeping on: the instruction
    holding each candidate must be the one a sweep from the start finds."""
    import random
    rnd = random.Random(bits)
    # mostly plausible code (common opcodes) with some noise, 200 KB
    pieces = [b"\x48\x89\xc3", b"\x8b\x45\xf8", b"\xe8\x00\x00\x00\x00", b"\x0f\x1f\x44\x00\x00", b"\x66\x90",
              b"\x48\x8d\x04\x24", b"\xc3", b"\x74\x05", b"\x41\x57", b"\xf3\x0f\x10\x45\x10"]
    blob = bytearray()
    while len(blob) < 200_000:
        blob += rnd.choice(pieces) if rnd.random() < 0.9 else rnd.randbytes(rnd.randint(1, 4))
    data = bytes(blob)
    cands = sorted(rnd.sample(range(100, len(data) - 20), 300))
    full = scan.sweep(data, 0, len(data), len(data), bits)
    b = scan.Boundaries(data, 0, len(data), bits)
    b.FAR = 512
    for c in cands:
        got = b.upto(c)
        assert got[scan.bisect.bisect_right(got, c) - 1] == full[scan.bisect.bisect_right(full, c) - 1]
    assert b.resyncs > 100


@pytest.mark.parametrize("kind", ["exec", "shared"])
def test_linked_executable_and_shared_object(obj64: Path, tmp_path: Path, kind: str) -> None:
    """ET_EXEC and ET_DYN: addresses are virtual addresses, symbols from the linked image."""
    import shutil
    ld = shutil.which("ld")
    if ld is None:
        pytest.skip("needs ld")
    out = tmp_path / f"linked.{kind}"
    args = ["-e", "f"] if kind == "exec" else ["-shared"]
    subprocess.run([ld, *args, "-o", str(out), str(obj64)], check=True, capture_output=True)
    with open(out, "rb") as fh:
        elf = ELFFile(fh)
        assert elf["e_type"] == ("ET_EXEC" if kind == "exec" else "ET_DYN")
        text = elf.get_section_by_name(".text")
        f_addr = next(s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name == "f")
        text_addr, text_off = text["sh_addr"], text["sh_offset"]
    rel = {(f["offset"], f["bytes"]) for f in findings(obj64)}
    got = findings(out)
    assert {(f["address"] - f_addr, f["bytes"]) for f in got} == rel
    assert all(f["file_offset"] == text_off + f["address"] - text_addr and f["symbol"] == "f" for f in got)
    if OBJDUMP:
        assert {(f["section"], f["address"], f["mnemonic"]) for f in got} == objdump_family(out)
