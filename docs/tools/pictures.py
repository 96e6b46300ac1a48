#!/usr/bin/env python3
"""Write the docs' pictures (docs/pictures/*.svg) from vmxaddr's own tables.

* ``layout-apx-extended.svg``: APX's 64-bit extended field, every layout's use of it.
* ``layout-io-qualification.svg``: the I/O exit qualification (INS/OUTS).
* ``layout-<layout>.svg`` for every instruction-information layout some instruction in
  vmxaddr.isa.SPECS uses (vmxaddr.pictures.layout_picture): a layout added to the tables gets
  its picture on the next run, and tests/test_pictures.py fails until it exists and a page
  shows it.
* the worked examples in EXAMPLES, drawn by the command line itself (``--svg -``).

The pictures are committed so that the Markdown pages show them wherever they are read (a
code host, an editor, the built site) and a change to a table shows up as a diff of its
picture; tests/test_pictures.py regenerates them and fails when one is stale.

Usage:  python docs/tools/pictures.py [--check]
  --check writes nothing and exits 1 when a picture is missing, stale or left over.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PICTURES = ROOT / "docs" / "pictures"

# (file name, vmxaddr command line): the worked examples drawn for the pages.
EXAMPLES: list[tuple[str, list[str]]] = [
    ("explain-vmread-ebp.svg", ["explain", "--mode", "32", "--reg", "ebp=0x1000", "0f7845d8"]),
    ("decode-vmclear-bp.svg", ["decode", "--mode", "16", "66 0f c7 76 f0"]),
    ("explain-vmptrld-r21-r20.svg", ["explain", "--mode", "64", "--reg", "r21=0x5000", "--reg", "r20=0x10",
                                     "d5 b4 c7 74 25 08"]),
    ("explain-vmptrld-fs64.svg", ["explain", "--mode", "64", "--seg", "fs.base=0x100000000", "64 67 0f c7 30"]),
    ("explain-vmread-register.svg", ["explain", "--mode", "32", "0f 78 c8"]),
    ("explain-vmread-limit.svg", ["explain", "--mode", "32", "--seg", "ds.limit=0xfff", "--reg", "eax=0xffc",
                                  "0f 78 08"]),
]


def _cli_svg(argv: list[str]) -> str:
    from vmxaddr.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([*argv, "--svg", "-"])
    if status:
        raise SystemExit(f"vmxaddr {' '.join(argv)} failed with status {status}")
    return out.getvalue()


def expected() -> dict[str, str]:
    """file name -> content, for every picture the docs should have."""
    from vmxaddr.pictures import layouts, picture

    want = {f"layout-{lay.value}.svg": str(picture(lay.value)) for lay in layouts()}
    want["layout-apx-extended.svg"] = str(picture("apx-extended"))
    want["layout-io-qualification.svg"] = str(picture("io-qualification"))
    for name, argv in EXAMPLES:
        want[name] = _cli_svg(argv)
    return want


def stale() -> list[str]:
    """Messages for each picture that is missing, differs, or is no longer generated."""
    want = expected()
    out = []
    for name, text in want.items():
        path = PICTURES / name
        if not path.exists():
            out.append(f"missing: docs/pictures/{name}")
        elif path.read_text() != text:
            out.append(f"stale: docs/pictures/{name}")
    for path in sorted(PICTURES.glob("*.svg")):
        if path.name not in want:
            out.append(f"left over: docs/pictures/{path.name}")
    return out


def write() -> list[str]:
    want = expected()
    PICTURES.mkdir(exist_ok=True)
    changed = []
    for name, text in want.items():
        path = PICTURES / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(f"wrote docs/pictures/{name}")
    for path in sorted(PICTURES.glob("*.svg")):
        if path.name not in want:
            path.unlink()
            changed.append(f"removed docs/pictures/{path.name}")
    return changed


def main(argv: list[str]) -> int:
    if "--check" in argv:
        problems = stale()
        for p in problems:
            print(p)
        print(f"{len(problems)} pictures to regenerate (python docs/tools/pictures.py)" if problems
              else "pictures up to date", file=sys.stderr)
        return 1 if problems else 0
    for c in write():
        print(c)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
