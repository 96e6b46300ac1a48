"""mkdocs hook: a page per instruction (instruction/<mnemonic>.md) and their index, generated at
build time from vmxaddr's tables (vmxaddr.isa.SPECS, the layout tables behind vmxaddr.pictures)
and computed by its own models (docs/tools/instruction_facts.py), so the pages cannot drift from
the code. Nothing is written to docs/: the pages and their pictures are mkdocs "generated" files.

`pages()` returns {path: Markdown or SVG text} for tests and for `python docs/tools/instruction_pages.py DIR`
(writes them out to read without a site build).
"""

from __future__ import annotations

import html
import importlib.util
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FOLDER = "instruction"


def _tool(name: str) -> Any:
    """A sibling module of docs/tools (loaded by path: docs/tools is not a package)."""
    key = f"docs_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


# -- the one place that draws a layout (switch to the single layout table's API on merge) --------

def layout_svg(mnemonic: str) -> str:
    """The instruction-information layout of `mnemonic` as an SVG picture."""
    from vmxaddr.pictures import layout_name_of, picture

    return str(picture(layout_name_of(mnemonic)))


def layout_rows(mnemonic: str) -> list[tuple[str, str, str]]:
    """(bits, field, when defined) of the layout, most significant first."""
    from vmxaddr.layouts import INSTRUCTION_INFO
    from vmxaddr.pictures import layout_fields, layout_name_of

    out = []
    for f in layout_fields(INSTRUCTION_INFO[layout_name_of(mnemonic)]):
        bits = f"{f.hi}:{f.lo}" if f.hi != f.lo else str(f.hi)
        when = {"defined": "always", "undefined": "undefined"}.get(f.kind, f.condition)
        out.append((bits, f.name, when))
    return out


# -- editions -------------------------------------------------------------------------------------

# Where an instruction's page must say that editions differ (the pages' edition is mkdocs.yml's).
EDITION_NOTES = {
    "dt": "Editions differ here. This edition has the operand size at **bit 11** (0 = 16-bit, 1 = 32-bit; "
          "undefined for VM exits from 64-bit mode) and bits 14:12 undefined. Older editions (the Vol. 3B "
          "editions in which VM Exits is chapter 23) put the operand size at **bits 13:12** (1 = 16-bit, "
          "2 = 32-bit) with bit 11 undefined. A hypervisor written from those reads the wrong bits.",
    "rdrand": "The operand size is bits 12:11 (0 = 16-bit, 1 = 32-bit, 2 = 64-bit) in the editions checked.",
    "io": "The INS/OUTS instruction-information layout was added to the SDM later than the VMX instructions' "
          "layouts: editions without it give these exits no instruction information.",
    "reg": "TPAUSE/UMWAIT and the immediate forms of RDMSR/WRMSRNS are in recent editions only; the register in "
           "bits 6:3 is as vmxaddr's tables have it (docs/tpause-umwait.md names its sources).",
    "loadiwkey": "LOADIWKEY's layout is in recent editions only (docs/loadiwkey.md).",
}

_LAYOUT_ANCHOR = {"vmptr": "instruction-information.md#vmclear-vmptrld-vmptrst-vmxon-xrstors-xsaves",
                  "vmread": "instruction-information.md#vmread-vmwrite", "inv": "instruction-information.md#invept-invpcid-invvpid",
                  "dt": "instruction-information.md#lgdt-lidt-sgdt-sidt", "ldt": "instruction-information.md#lldt-ltr-sldt-str",
                  "rdrand": "instruction-information.md#rdrand-rdseed", "io": "ins-outs.md", "reg": "tpause-umwait.md",
                  "loadiwkey": "loadiwkey.md"}


def _esc(text: str) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|")


def _modes(spec: Any) -> str:
    where = []
    if spec.real_mode:
        where.append("real-address")
    if spec.v8086:
        where.append("virtual-8086")
    where += ["protected", "compatibility", "64-bit"] if spec.mnemonic not in ("rdmsr", "wrmsrns") else ["64-bit"]
    return ", ".join(where)


def page(mnemonic: str) -> tuple[str, dict[str, str]]:
    """The Markdown of one instruction's page and its pictures {file name: SVG}."""
    from vmxaddr.isa import SPECS

    facts = _tool("instruction_facts")
    site_nav = _tool("site_nav")
    spec = SPECS[mnemonic]
    problems = facts.check_encodings(mnemonic)
    if problems:
        raise ValueError("; ".join(problems))
    name = mnemonic.upper()
    lay = spec.layout.value
    exs = facts.examples(mnemonic)
    pictures = {f"pictures/{mnemonic}-layout.svg": layout_svg(mnemonic)}
    if lay == "io":  # INS/OUTS: their exit qualification is the one with fields (SDM Vol. 3C Table 27-5)
        from vmxaddr.pictures import picture

        pictures[f"pictures/{mnemonic}-io-qualification.svg"] = str(picture("io-qualification"))
    first = exs[0].answer
    if first.get("ok"):
        pictures[f"pictures/{mnemonic}-example-1.svg"] = first["field_svg"]
    md: list[str] = [f"# {name}", "",
                     "*Generated from vmxaddr's instruction table (`vmxaddr/isa.py`) and computed by its SDM model when "
                     "the site was built. All instructions: [the index](index.md).*", ""]
    size = "none" if spec.access is None else (
        f"{spec.size} bytes" + (f" ({spec.size64} in 64-bit mode)" if spec.size64 != spec.size else "")
        + (" (the element: 1, 2 or 4 bytes by opcode and operand size)" if lay == "io" else "")
        + (" (at least: the legacy region and XSAVE header)" if mnemonic in ("xsaves", "xrstors") else ""))
    md += ["| | |", "|---|---|",
           f"| basic exit reason | **{spec.exit_reason}** (SDM Vol. 3D, Appendix C \"VMX Basic Exit Reasons\") |",
           f"| instruction-information layout | [{lay}](../{_LAYOUT_ANCHOR[lay]}) |",
           f"| memory operand | {spec.memory} |",
           f"| memory access | {spec.access or 'none'}; {size}"
           + (f"; the linear address must be a multiple of {spec.align}" if spec.align > 1 else "") + " |",
           f"| runs in | {_modes(spec)} mode |",
           f"| privilege | {'CPL 0 only' if spec.privileged or spec.vmx else 'any CPL'}"
           + (" (a VMX instruction: checked after the VM exit, by the hypervisor)" if spec.vmx else
              " (checked before the VM exit)" if spec.privileged else "") + " |",
           f"| APX (REX2, R16–R31) | {'allowed: legacy map 0/1' if facts.apx_allowed(mnemonic) else 'no (not in legacy map 0 or 1)'} |",
           ""]
    md += ["## Encodings", "", "| opcode | operand form | plain form (hex) | decodes as (32-bit code) |", "|---|---|---|---|"]
    from vmxaddr.decode import decode
    for i, (op, form, _) in enumerate(facts.ENCODINGS[mnemonic]):
        raw = facts.plain_bytes(mnemonic, i)
        text = decode(bytes.fromhex(raw), 64 if mnemonic in ("rdmsr", "wrmsrns") else 32).text()
        md.append(f"| `{op}` | {_esc(form)} | `{raw}` | `{_esc(text)}` |")
    md += ["", "The bytes of any form taken apart: `vmxaddr decode --mode 32 HEX` (and on the [Try page](../try.md)).", ""]
    md += ["## The instruction-information field", "",
           f"![{name}'s instruction-information layout](pictures/{mnemonic}-layout.svg)", "",
           "| bits | field | defined |", "|---|---|---|"]
    md += [f"| {b} | {_esc(n)} | {_esc(w)} |" for b, n, w in layout_rows(mnemonic)]
    md.append("")
    if lay == "io":
        md += ["Their exit qualification has fields too (the port, the size, string and REP):", "",
               f"![the I/O exit qualification](pictures/{mnemonic}-io-qualification.svg)", ""]
    if lay in EDITION_NOTES:
        md += [f"**Editions.** {EDITION_NOTES[lay]}", ""]
    if f"pictures/{mnemonic}-example-1.svg" in pictures:
        md += [f"The field of the first worked example below ({_esc(exs[0].title)}), bit by bit:", "",
               f"![the field of example 1](pictures/{mnemonic}-example-1.svg)", ""]
    md += _faults(mnemonic, spec, facts)
    md += _order(spec, first)
    md += ["## Worked examples", "", "Each computed by vmxaddr's SDM model when the site was built; each opens on the "
           "Try page with its case filled in.", ""]
    for n, ex in enumerate(exs, 1):
        a = ex.answer
        md += [f"### Example {n}: {_esc(ex.title)}", "", "```console", "$ vmxaddr " + " ".join(ex.argv), "```", "",
               "```text", a["text"] if a.get("ok") else a.get("error", ""), "```", ""]
        query = site_nav.try_query(ex.argv)
        if query:
            md += [f'<p class="vx-try"><a href="{html.escape("../try.html?" + query)}">▶ Try this case in your browser</a></p>', ""]
    md += _kvm(mnemonic, exs, facts)
    md += _peers(mnemonic, exs, facts)
    return "\n".join(md) + "\n", pictures


def _faults(mnemonic: str, spec: Any, facts: Any) -> list[str]:
    from vmxaddr.rules import RULES

    md = ["## Faults in each mode and at each CPL", "",
          "The plain form with a valid operand, by the SDM model: what remains is the mode and privilege check "
          "(SDM Vol. 3C \"Relative Priority of Faults and VM Exits\" says which come before the exit).", "",
          "| processor mode | CPL | outcome | when | rule | source |", "|---|---|---|---|---|---|"]
    only64 = mnemonic in ("rdmsr", "wrmsrns")
    for mode, cpl, a in facts.fault_table(mnemonic):
        if only64 and mode != "64-bit":
            md.append(f"| {mode} | {cpl} | #UD | before the VM exit (no exit) | — | SDM Vol. 2 RDMSR/WRMSRNS: the "
                      "immediate forms are valid in 64-bit mode only (VEX C4 is LES outside it) |")
            continue
        if not a.get("ok"):
            md.append(f"| {mode} | {cpl} | (refused: {_esc(a.get('error', ''))}) | | | |")
            continue
        o = a["outcome"]
        rule = o["rule"] if o["kind"] != "ok" else ""
        when = facts.before_exit(spec, rule) if rule else "VM exit; the hypervisor goes on to the operand"
        src = RULES[rule].source if rule in RULES else ""
        md.append(f"| {mode} | {cpl} | **{_esc(o['verdict'])}** | {when} | {f'`{rule}`' if rule else ''} | {_esc(src)} |")
    md += ["", "Faults that depend on the operand (segment, limit, canonical, alignment) come after the exit, "
           "from the hypervisor: the worked examples show them.", ""]
    return md


def _order(spec: Any, first: dict[str, Any]) -> list[str]:
    from vmxaddr.rules import RULES

    md = ["## The order of checks", "", "1. `mode` — " + _esc(RULES["mode"].title) + " (before the exit).",
          "2. `cpl` — " + ("after the VM exit, by the hypervisor" if spec.vmx else
                           "before the VM exit" if spec.privileged else "no CPL check for this instruction") + "."]
    n = 3
    seen = {"mode", "cpl"}
    for s in first.get("steps", []):
        if s["rule"] in seen:
            continue
        seen.add(s["rule"])
        md.append(f"{n}. `{s['rule']}` — {_esc(s['title'])} ({_esc(s['source'])}).")
        n += 1
    return md + ["", "Steps 3 on are the SDM model's steps for the first worked example, in the order it applies them.", ""]


def _table(rows: list[tuple[str, str, list[str]]], n: int) -> list[str]:
    md = ["| model | what it is | " + " | ".join(f"example {i}" for i in range(1, n + 1)) + " |",
          "|---|---|" + "---|" * n]
    md += [f"| `{m}` | {_esc(s)} | " + " | ".join(_esc(c) for c in cells) + " |" for m, s, cells in rows]
    return md + [""]


def _kvm(mnemonic: str, exs: list[Any], facts: Any) -> list[str]:
    from vmxaddr.models.kvm import COVERAGE, FIX_OF, HANDLED

    sdm = [facts.verdict(e.answer) for e in exs]
    rows = facts.consumers_on(mnemonic, exs, "kvm-")
    md = ["## KVM's history for it", ""]
    if mnemonic not in HANDLED:
        return md + [f"KVM does not read {mnemonic.upper()}'s operand through `get_vmx_mem_address()` (the function "
                     "the models follow: `vmxaddr/models/kvm.py`), so no KVM model covers it; descriptor-table exits go "
                     "through KVM's instruction emulator, and the others are not intercepted or not emulated by KVM. "
                     "See [KVM's history](../history.md).", ""]
    added = next((m for m, ms in COVERAGE.items() if mnemonic in ms), None)
    md += [f"Every KVM model that reads this instruction, oldest first, on the worked examples (SDM: "
           f"{'; '.join(_esc(v) for v in sdm)}). " + (f"The oldest model covering it is `{added}`. " if added else "")
           + "A model differs from the one before it by one commit (`vmxaddr models`; [history](../history.md)).", ""]
    md += _table(rows, len(exs))
    changes = []
    for (prev, _, pc), (cur, summary, cc) in zip(rows, rows[1:], strict=False):
        if pc != cc:
            changes.append(f"- `{cur}` ({_esc(summary)}; fix `{FIX_OF.get(cur, '—')}`): changed example(s) "
                           + ", ".join(str(i + 1) for i in range(len(cc)) if pc[i] != cc[i]) + f" from `{prev}`.")
    md += (["What each commit changed for these examples:", ""] + changes if changes else
           ["No commit in the history changed the outcome of these examples."]) + [""]
    return md


def _peers(mnemonic: str, exs: list[Any], facts: Any) -> list[str]:
    md = ["## The peers", "", "Consumers (hypervisors rebuilding the address from the exit information) that cover it:", ""]
    rows = facts.consumers_on(mnemonic, exs, "xen-")
    md += _table(rows, len(exs)) if rows else [f"No Xen model covers {mnemonic.upper()} (Xen's nested VMX decodes the "
                                               "VMX instructions only).", ""]
    md += ["Encoders (emulators writing the exit information as a processor would), compared with the SDM's "
           "processor in the bits the SDM defines for each example:", ""]
    md += _table(facts.encoders_on(exs), len(exs))
    md += ["What each peer does and why: [findings](../findings/index.md), [oracles](../oracles.md).", ""]
    return md


def opcode_key(op: str) -> str:
    """The opcode column's sort key: the opcode bytes and /digit without the mandatory prefix
    (NP/66/F2/F3), so that the order is by map and opcode byte; VEX map 7 after the legacy maps."""
    if op.startswith("VEX"):
        return "M7 " + op.split()[1]
    tokens = op.split()
    while tokens and tokens[0] in ("NP", "66", "F2", "F3") and len(tokens) > 1 and tokens[1] != "/r":
        tokens = tokens[1:]
    return " ".join(tokens)


def index(edition: str) -> str:
    """The index page: every instruction, sortable by exit reason and opcode (assets/sortable.js)."""
    from vmxaddr.isa import SPECS

    facts = _tool("instruction_facts")
    rows = []
    for m, spec in SPECS.items():
        op = facts.ENCODINGS[m][0][0]
        key = opcode_key(op)
        rows.append(f'<tr><td><a href="{m}.html">{m.upper()}</a></td><td data-key="{html.escape(key)}"><code>{html.escape(op)}</code>'
                    f'</td><td data-key="{spec.exit_reason:03d}">{spec.exit_reason}</td><td>{spec.layout.value}</td>'
                    f'<td>{spec.access or "none"}</td><td data-key="{spec.size:04d}">{spec.size if spec.access else "—"}</td></tr>')
    return "\n".join([
        "# Instructions, one page each", "",
        f"Every instruction in vmxaddr's table (`vmxaddr/isa.py`, {len(SPECS)} instructions), each with its "
        "encodings, exit reason, instruction-information layout, memory access, faults per mode and CPL, the "
        "order of checks, three worked examples, KVM's history and the peers. Generated when the site is built. "
        "Click a column heading to sort (exit reason and opcode sort by value).", "",
        f"Citations follow {html.escape(edition)}.", "",
        '<table class="vx-sortable" id="vx-instructions"><thead><tr><th data-sort="text">instruction</th>'
        '<th data-sort="key">opcode</th><th data-sort="key">exit reason</th><th data-sort="text">layout</th>'
        '<th data-sort="text">access</th><th data-sort="key">bytes</th></tr></thead><tbody>',
        *rows, "</tbody></table>", "",
        '<script src="../assets/sortable.js"></script>', ""])


def pages(edition: str = "the edition named in mkdocs.yml") -> dict[str, str]:
    """{path under docs/: text} of every generated page and picture."""
    from vmxaddr.isa import SPECS

    out = {f"{FOLDER}/index.md": index(edition)}
    for m in SPECS:
        text, pics = page(m)
        out[f"{FOLDER}/{m}.md"] = text
        out.update({f"{FOLDER}/{name}": svg for name, svg in pics.items()})
    return out


# -- mkdocs hooks ---------------------------------------------------------------------------------

def on_config(config: Any) -> Any:
    config["nav"].append({"Instructions": f"{FOLDER}/index.md"})
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    sys.path.insert(0, str(ROOT))
    for path, text in pages(config["extra"].get("sdm_edition", "")).items():
        files.append(File.generated(config, path, content=text))
    return files


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else "instruction-pages")
    for path, text in pages().items():
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_text(text)
    print(f"wrote {len(pages())} files under {dest}")
