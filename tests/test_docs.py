"""docs/ cannot drift: every `$ vmxaddr ...` example in docs/*.md is re-run in-process and its
output must match the page (convention: docs/index.md, foot of the page)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from vmxaddr.isa import SPECS
from vmxaddr.rules import RULES

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docs_refresh", ROOT / "docs" / "tools" / "refresh.py")
assert _spec and _spec.loader
refresh = importlib.util.module_from_spec(_spec)
sys.modules["docs_refresh"] = refresh  # dataclasses look their module up there
_spec.loader.exec_module(refresh)

PAGES = refresh.pages()
EXAMPLES = [ex for page in PAGES for ex in refresh.examples(page)]


@pytest.mark.parametrize("ex", EXAMPLES, ids=[f"{ex.page.name}:{ex.line}" for ex in EXAMPLES])
def test_example_output_matches_page(ex: refresh.Example) -> None:
    assert ex.output is not None, f"{ex.page.name}:{ex.line}: no ```text output block after the command"
    want = refresh.run(ex.argv)
    assert refresh.normalise(ex.output) == want, (
        f"{ex.page.name}:{ex.line}: output of `vmxaddr {' '.join(ex.argv)}` changed; "
        "run `python docs/tools/refresh.py` and review the diff")


def _declared_rules(page: Path) -> list[str]:
    m = re.search(r"<!--\s*rules:\s*([^>]*?)\s*-->", page.read_text())
    return [r.strip() for r in m.group(1).split(",")] if m else []


def test_every_rule_has_a_page_with_an_example() -> None:
    """Each rule of the reference model is declared by a page (<!-- rules: id, ... -->), and one
    of that page's examples shows a step or verdict of that rule (`[id]` in the output)."""
    missing = []
    for rule in RULES:
        pages = [p for p in PAGES if rule in _declared_rules(p)]
        shown = [p for p in pages if any(ex.output and f"[{rule}]" in ex.output for ex in refresh.examples(p))]
        if not shown:
            missing.append(rule)
    assert not missing, f"rules without a page showing them in an example: {missing}"


def test_declared_rules_exist() -> None:
    for page in PAGES:
        for rule in _declared_rules(page):
            assert rule in RULES, f"{page.name} declares unknown rule {rule!r}"


def test_index_links_every_page_and_links_resolve() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for page in PAGES:
        if page.name != "index.md":
            assert f"]({page.name}" in index, f"docs/index.md does not link {page.name}"
    # The instruction pages are generated at site build time (docs/tools/instruction_pages.py):
    # one per instruction of vmxaddr.isa.SPECS, and their index.
    generated = {ROOT / "docs" / "instruction" / f"{m}.md" for m in SPECS} | {ROOT / "docs" / "instruction" / "index.md"}
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]+\.md)(?:#([^)]*))?\)", page.read_text()):
            if (page.parent / target).resolve() in generated and not anchor:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
            if anchor:
                assert anchor in _anchors(page.parent / target), f"{page.name} links to missing {target}#{anchor}"


def _anchors(page: Path) -> set[str]:
    """The heading anchors the site generates (docs/tools/site_nav.py's github_slug), written
    out independently: lower case, punctuation dropped, spaces to hyphens, and an "s" before an
    anchor that would start with a digit (the theme's scroll-spy cannot select '#14-...')."""
    heads = re.findall(r"^#+\s+(.*)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), flags=re.M)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}
    return {"s" + a if a[:1].isdigit() else a for a in slugs}


def test_refresh_inserts_and_rewrites_output_blocks(tmp_path: Path) -> None:
    # A page with one stale output block and one command lacking an output block.
    page = tmp_path / "p.md"
    cmd = "$ vmxaddr decode --mode 32 '0f c7 30'"
    page.write_text(f"# t\n\n```console\n{cmd}\n```\n\n```text\nstale\n```\n\n```console\n{cmd}\n```\n\nend\n")
    assert len(refresh.refresh(page, check=True)) == 2
    assert page.read_text().count("stale") == 1  # --check writes nothing
    assert len(refresh.refresh(page)) == 2
    text = page.read_text()
    assert "stale" not in text and text.count("vmptrld ds:[eax]") == 2 and text.endswith("end\n")
    assert refresh.refresh(page) == []
    # A failing command records its stderr and exit status.
    page.write_text("```console\n$ vmxaddr decode --mode 32 'f0 0f c7 30'\n```\n")
    refresh.refresh(page)
    assert "LOCK prefix" in page.read_text() and "[exit status 2]" in page.read_text()
