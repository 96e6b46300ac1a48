"""mkdocs hook: every SVG picture on a page is shown at a size where its smallest text is at
least 10 px, in a box that scrolls sideways when the picture is wider than the column.

The pictures are drawn for a wide screen (a 32-bit field at 24 px a bit is 800 px). Shrunk to
a phone's 390 px column by `max-width: 100%` their 11 px labels became ~5 px (issue 21), so a
picture is never scaled down: its <img> gets the picture's own width and height (scaled up when
its smallest font is below MIN_TEXT_PX) and sits in <span class="vx-picture">, which scrolls
(docs/assets/vmxaddr.css). The Try page does the same for the pictures it draws (try.js).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

MIN_TEXT_PX = 10

_IMG = re.compile(r'<img\b([^>]*?)\bsrc="([^"]+\.svg)"([^>]*)>')
_SIZE = re.compile(r'<svg\b[^>]*?\bwidth="([\d.]+)"[^>]*?\bheight="([\d.]+)"')
_FONT = re.compile(r'font-size="([\d.]+)"')


def svg_size(text: str) -> tuple[float, float, float]:
    """(width, height, smallest font size) of an SVG document as vmxaddr.svg writes it."""
    m = _SIZE.search(text)
    if not m:
        raise ValueError("no width/height on the <svg> element")
    fonts = [float(f) for f in _FONT.findall(text)] or [MIN_TEXT_PX]
    return float(m.group(1)), float(m.group(2)), min(fonts)


def display_size(text: str) -> tuple[int, int]:
    """The size to show a picture at: its own, or larger when its smallest text is under 10 px."""
    w, h, font = svg_size(text)
    scale = max(1.0, MIN_TEXT_PX / font)
    return round(w * scale + 0.4999), round(h * scale + 0.4999)


def wrap_pictures(content: str, page_dir: Path, read: Any = None) -> str:
    """`content` (a page's HTML) with each SVG <img> sized and wrapped; `page_dir` is where the
    page's relative picture paths start; `read(path) -> str | None` finds a picture's text."""
    def sub(m: re.Match[str]) -> str:
        before, src, after = m.groups()
        text = read(page_dir, html.unescape(src)) if read else None
        if text is None:
            path = page_dir / html.unescape(src)
            text = path.read_text() if path.is_file() else None
        if text is None:
            return m.group(0)  # the link checker reports the missing picture
        w, h = display_size(text)
        font = svg_size(text)[2]
        attrs = re.sub(r'\s(?:width|height)="[^"]*"', "", before + after).rstrip("/ ")
        # data-min-font: the picture's smallest font, for the browser test's 10 px check.
        return (f'<span class="vx-picture"><img{attrs} src="{src}" width="{w}" height="{h}" '
                f'data-min-font="{font:g}"></span>')
    return _IMG.sub(sub, content)


def on_page_content(content: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"])
    src_dir = (docs / page.file.src_uri).parent

    def read(page_dir: Path, src: str) -> str | None:
        # A picture the build generates (the instruction pages') is a mkdocs File, not a file on disk.
        rel = (page_dir / src).resolve()
        try:
            uri = rel.relative_to(docs.resolve()).as_posix()
        except ValueError:
            return None
        f = files.get_file_from_path(uri)
        if f is not None and getattr(f, "generated_by", None):
            return f.content_string
        return rel.read_text() if rel.is_file() else None

    return wrap_pictures(content, src_dir, read)
