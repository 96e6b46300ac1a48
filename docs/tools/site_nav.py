"""mkdocs hook: the site's navigation is the reading order docs/index.md defines.

docs/index.md's "Reading order" section is a list of links (numbered or bulleted), in groups
introduced by a paragraph ending in a colon ("What the hypervisor is given:", "The address:", ...). Each group
becomes a section of the navigation, in that order; a linked `DIR/index.md` becomes a
subsection with the pages it links in DIR. Pages that index.md links outside the list (the
browser page) follow. Nothing is listed twice, so the nav cannot drift from index.md.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

_ITEM = re.compile(r"^(?:\d+\.|[-*])\s+\[[^\]]*\]\(([^)#\s]+\.md)\)")
_LINK = re.compile(r"\]\(([^)#\s:]+\.md)(?:#[^)]*)?\)")

NavItem = str | dict[str, Any]


def reading_order(docs: Path) -> list[NavItem]:
    text = (docs / "index.md").read_text()
    section = text.split("## Reading order", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### ", 1)[0]
    nav: list[NavItem] = [{"Start here": "index.md"}]
    group: list[NavItem] | None = None
    listed = {"index.md"}
    for block in re.split(r"\n\s*\n", section):
        lines = [ln for ln in block.strip().split("\n") if ln.strip()]
        if not lines:
            continue
        if not _ITEM.match(lines[0]):
            # A paragraph ending in a colon introduces a group ("The address:"); its name is the
            # text before any dash ("Beyond the VMX family — the other instructions ...:").
            words = " ".join(ln.strip() for ln in lines)
            if words.endswith(":") and "[" not in words:
                group = []
                nav.append({words[:-1].split(" — ")[0].strip(): group})
            continue
        for line in lines:
            m = _ITEM.match(line)
            if not m:
                continue  # the continuation of an item's text
            page = m.group(1)
            entry: NavItem = page
            listed.add(page)
            if page.endswith("/index.md"):
                sub = [page] + _linked_in_dir(docs, page)
                listed.update(sub)
                entry = {_title(docs / page): sub}
            (group if group is not None else nav).append(entry)
    nav = [n for n in nav if not (isinstance(n, dict) and not next(iter(n.values())))]  # a sentence, not a group
    # Pages index.md links outside the reading order (e.g. try.md), in order of first link.
    for page in _LINK.findall(text):
        if page not in listed and (docs / page).exists():
            listed.add(page)
            nav.append(page)
    return nav


def _linked_in_dir(docs: Path, index_page: str) -> list[str]:
    folder = index_page.rsplit("/", 1)[0]
    out: list[str] = []
    for target in _LINK.findall((docs / index_page).read_text()):
        if "/" in target or target == "index.md":
            continue
        page = f"{folder}/{target}"
        if page not in out and (docs / page).exists():
            out.append(page)
    return out


def _title(page: Path) -> str:
    for line in page.read_text().split("\n"):
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem


def github_slug(value: str, separator: str = "-") -> str:
    """Heading anchors as a code host makes them (and as the pages' links are written, checked
    by tests/test_docs.py): lower case, punctuation dropped, each space a hyphen. Python-Markdown's
    own slugify would merge `--model` into `-model` and break those links.

    One change: an anchor never starts with a digit ("14. #GP or #SS?" -> "s14-gp-or-ss", not
    "14-gp-or-ss"). The theme's scroll-spy looks each heading up with querySelector('#14-...'),
    which is not a valid CSS selector: it threw on every numbered page and stopped the page's
    scripts (issue 21)."""
    slug = re.sub(r"[^\w\- ]", "", value.strip().lower()).replace(" ", separator)
    return "s" + slug if slug[:1].isdigit() else slug


def on_config(config: Any) -> Any:
    config["nav"] = reading_order(Path(config["docs_dir"]))
    config["mdx_configs"].setdefault("toc", {})["slugify"] = github_slug
    return config


# -- "Try this case in your browser" under each worked example -----------------------------------

_FORM_OPTIONS = {"--mode": "mode", "--reg": "registers", "--seg": "segments", "--cpl": "cpl",
                 "--cpu-mode": "cpu_mode", "--model": "model", "--exit-qual": "exit_qual"}


def try_query(argv: list[str]) -> str | None:
    """The Try page's address query for `vmxaddr ARGV`, or None when the page's form cannot hold
    the case (another command, a --state file, an option the form lacks)."""
    from urllib.parse import urlencode

    if not argv or argv[0] not in ("explain", "decode"):
        return None
    form: dict[str, list[str]] = {}
    hexes = []
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--apx":
            form["apx"] = ["on"]
            i += 1
        elif a.startswith("--"):
            key = _FORM_OPTIONS.get(a)
            if key is None or i + 1 >= len(argv):
                return None
            form.setdefault(key, []).append(argv[i + 1])
            i += 2
        else:
            hexes.append(a)
            i += 1
    if not hexes or "mode" not in form:
        return None
    params = {k: "\n".join(v) for k, v in form.items()}
    params["bytes"] = " ".join(hexes)
    return urlencode(params)


def _refresh() -> Any:
    import importlib.util
    import sys

    name = "docs_refresh"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("refresh.py"))
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """After each worked example's output, a link that opens the case on the Try page."""
    refresh = _refresh()
    src = Path(config["docs_dir"]) / page.file.src_uri
    if page.file.src_uri == "try.md" or not src.exists():
        return markdown
    up = "../" * page.file.src_uri.count("/")
    lines = markdown.split("\n")
    # The page as mkdocs read it is the file on disk: example positions index the same lines.
    for ex in reversed(refresh.examples(src)):
        query = try_query(ex.argv)
        if query is None or ex.output is None or not lines[ex.out_end].startswith("```"):
            continue
        at = ex.out_end + 1  # the line after the output block's closing fence
        href = html.escape(f"{up}try.html?{query}")
        lines[at:at] = ["", f'<p class="vx-try"><a href="{href}">▶ Try this case in your browser</a></p>']
    return "\n".join(lines)
