#!/usr/bin/env python3
"""Re-run every example command in docs/*.md and rewrite its output block.

The convention (also stated at the foot of docs/index.md):

  * An example is a fenced block whose info string is ``console`` and whose first line starts
    with ``$ vmxaddr``. The command is that line; a line ending in `` \\`` continues on the next.
    Everything else in the block is ignored.
  * Its output is the fenced block that comes next, separated from it by blank lines only, with
    info string ``text``. It holds exactly what the command prints on stdout; when the command
    exits with a non-zero status, what it prints on stderr follows, then a line
    ``[exit status N]``. Trailing spaces are not significant.
  * Commands run in-process (``vmxaddr.cli.main``) with the repository root as the working
    directory, so ``--state docs/examples/x.json`` names a file in this repository.

Usage:  python docs/tools/refresh.py [--check] [FILE.md ...]
  With no files, every docs/*.md. --check rewrites nothing and exits 1 if a page is stale.
tests/test_docs.py uses the same functions, so a page that `refresh.py --check` accepts is a page
the test accepts.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# A fence: three or more backticks, then the info string.
_FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`]*)$")


@dataclass
class Example:
    page: Path
    line: int  # 1-based line of the command block's opening fence
    argv: list[str]
    command: str
    output: str | None  # the page's output block, None when missing
    out_start: int  # index (0-based) of the output block's first content line, or where to insert it
    out_end: int  # index of its closing fence (exclusive end of content); == out_start if missing


def _blocks(lines: list[str]) -> Iterator[tuple[int, int, str]]:
    """(index of opening fence, index of closing fence, info string) of each fenced block."""
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence = m["fence"]
        j = i + 1
        while j < len(lines) and not (lines[j].startswith(fence) and lines[j].strip() == fence):
            j += 1
        yield i, j, m["info"].strip()
        i = j + 1


def parse_command(body: list[str]) -> str | None:
    if not body or not body[0].startswith("$ vmxaddr"):
        return None
    parts = []
    for ln in body:
        text = ln[2:] if not parts else ln
        if text.rstrip().endswith("\\"):
            parts.append(text.rstrip()[:-1].strip())
            continue
        parts.append(text.strip())
        break
    return " ".join(parts)


def examples(page: Path) -> list[Example]:
    lines = page.read_text().split("\n")
    blocks = list(_blocks(lines))
    found = []
    for n, (start, end, info) in enumerate(blocks):
        if info != "console":
            continue
        command = parse_command(lines[start + 1:end])
        if command is None:
            continue
        argv = shlex.split(command)[1:]  # drop "vmxaddr"
        nxt = blocks[n + 1] if n + 1 < len(blocks) else None
        if nxt and nxt[2] == "text" and all(not ln.strip() for ln in lines[end + 1:nxt[0]]):
            found.append(Example(page, start + 1, argv, command, "\n".join(lines[nxt[0] + 1:nxt[1]]),
                                 nxt[0] + 1, nxt[1]))
        else:
            found.append(Example(page, start + 1, argv, command, None, end + 1, end + 1))
    return found


def run(argv: list[str]) -> str:
    """What the page should show for `vmxaddr ARGV`."""
    from vmxaddr.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as e:  # argparse errors and --help
                status = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
    text = out.getvalue()
    if status:
        text += err.getvalue() + f"[exit status {status}]\n"
    return normalise(text)


def normalise(text: str) -> str:
    return "\n".join(ln.rstrip() for ln in text.rstrip("\n").split("\n"))


def refresh(page: Path, check: bool = False) -> list[str]:
    """Rewrite page's output blocks; return a message per example whose output changed."""
    lines = page.read_text().split("\n")
    changed = []
    # Work from the last example up, so earlier indices stay valid.
    for ex in reversed(examples(page)):
        want = run(ex.argv)
        if ex.output is not None and normalise(ex.output) == want:
            continue
        changed.append(f"{_rel(page)}:{ex.line}: $ vmxaddr {shlex.join(ex.argv)}")
        if ex.output is None:
            lines[ex.out_start:ex.out_start] = ["", "```text", *want.split("\n"), "```"]
        else:
            lines[ex.out_start:ex.out_end] = want.split("\n")
    if changed and not check:
        page.write_text("\n".join(lines))
    return changed[::-1]


def _rel(page: Path) -> str:
    try:
        return str(page.resolve().relative_to(ROOT))
    except ValueError:
        return str(page)


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    files = [Path(a).resolve() for a in argv if a != "--check"] or pages()
    stale = []
    for page in files:
        stale += refresh(page, check)
    for s in stale:
        print(("stale: " if check else "updated: ") + s)
    n = sum(len(examples(p)) for p in files)
    print(f"{n} examples in {len(files)} pages; {len(stale)} {'stale' if check else 'updated'}", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
