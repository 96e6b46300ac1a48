"""mkdocs hook: the site's navigation is the reading order docs/index.md defines.

docs/index.md's "Reading order" section is a numbered list of links, in groups introduced by a
line ending in a colon ("What the hypervisor is given:", "The address:", ...). Each group
becomes a section of the navigation, in that order; a linked `DIR/index.md` becomes a
subsection with the pages it links in DIR. Pages that index.md links outside the list (the
browser page) follow. Nothing is listed twice, so the nav cannot drift from index.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_ITEM = re.compile(r"^\d+\.\s+\[[^\]]*\]\(([^)#\s]+\.md)\)")
_GROUP = re.compile(r"^([A-Z][^\[\]()]*):\s*$")
_LINK = re.compile(r"\]\(([^)#\s:]+\.md)(?:#[^)]*)?\)")

NavItem = str | dict[str, Any]


def reading_order(docs: Path) -> list[NavItem]:
    text = (docs / "index.md").read_text()
    section = text.split("## Reading order", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### ", 1)[0]
    nav: list[NavItem] = [{"Start here": "index.md"}]
    group: list[NavItem] | None = None
    listed = {"index.md"}
    for line in section.split("\n"):
        g = _GROUP.match(line)
        if g:
            group = []
            nav.append({g.group(1): group})
            continue
        m = _ITEM.match(line)
        if not m:
            continue
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
    own slugify would merge `--model` into `-model` and break those links."""
    return re.sub(r"[^\w\- ]", "", value.strip().lower()).replace(" ", separator)


def on_config(config: Any) -> Any:
    config["nav"] = reading_order(Path(config["docs_dir"]))
    config["mdx_configs"].setdefault("toc", {})["slugify"] = github_slug
    return config
