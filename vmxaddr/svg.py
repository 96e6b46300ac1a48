"""A very small SVG writer: rectangles, lines, paths and text, escaped, in a fixed order.

Our own rather than a library (svgwrite, drawsvg): the pictures need six element kinds, the
output must be byte-for-byte reproducible (the docs commit the pictures and a test regenerates
them), and vmxaddr must import under Pyodide in the browser with nothing but the standard
library. The pictures themselves are drawn by vmxaddr.pictures.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

# Monospace text: the pictures size boxes by character count, so text must be monospaced.
FONT = "DejaVu Sans Mono, Menlo, Consolas, monospace"
CHAR_WIDTH = 0.6  # of the font size, for the monospace faces above


def text_width(text: str, size: float) -> float:
    """The width the text takes at font `size` (an estimate from the average character width)."""
    return len(text) * size * CHAR_WIDTH


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


class Svg:
    """An SVG document built element by element; `str(svg)` is the document."""

    def __init__(self, width: float, height: float, title: str = "") -> None:
        self.width = width
        self.height = height
        self.title = title
        self.defs: list[str] = []
        self.body: list[str] = []

    @staticmethod
    def _attrs(attrs: dict[str, object]) -> str:
        out = []
        for k, v in attrs.items():
            if v is None:
                continue
            name = k.rstrip("_").replace("_", "-")
            out.append(f"{name}={quoteattr(_num(v) if isinstance(v, float | int) else str(v))}")
        return " ".join(out)

    def element(self, tag: str, content: str | None = None, **attrs: object) -> None:
        """Append an element: attribute names with `_` become `-` (a trailing `_` is dropped), None values
        are left out, the content is escaped."""
        a = self._attrs(attrs)
        head = f"<{tag} {a}" if a else f"<{tag}"
        self.body.append(f"{head}/>" if content is None else f"{head}>{escape(content)}</{tag}>")

    def rect(self, x: float, y: float, w: float, h: float, **attrs: object) -> None:
        """Append a rectangle with its top-left corner at (x, y); `attrs` as for `element` (fill=...)."""
        self.element("rect", x=x, y=y, width=w, height=h, **attrs)

    def line(self, x1: float, y1: float, x2: float, y2: float, **attrs: object) -> None:
        """Append a line from (x1, y1) to (x2, y2); `attrs` as for `element` (stroke=..., marker_end=...)."""
        self.element("line", x1=x1, y1=y1, x2=x2, y2=y2, **attrs)

    def path(self, d: str, **attrs: object) -> None:
        """Append a path drawn by the SVG path data `d` (e.g. "M0,0 L10,5")."""
        self.element("path", d=d, **attrs)

    def text(self, x: float, y: float, content: str, size: float = 12, **attrs: object) -> None:
        """Append text with its baseline starting at (x, y), in the document's font at `size`."""
        attrs.setdefault("font_family", FONT)
        self.element("text", content, x=x, y=y, font_size=size, **attrs)

    def group_start(self, **attrs: object) -> None:
        """Open a group whose attributes its elements inherit."""
        a = self._attrs(attrs)
        self.body.append(f"<g {a}>" if a else "<g>")

    def group_end(self) -> None:
        """Close the group `group_start` opened last."""
        self.body.append("</g>")

    def hatch(self, ident: str, colour: str, background: str = "#ffffff") -> str:
        """A diagonal hatch pattern (for undefined bits); returns its fill reference."""
        self._define(
            f'<pattern id={quoteattr(ident)} width="6" height="6" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate(45)"><rect width="6" height="6" fill={quoteattr(background)}/>'
            f'<line x1="0" y1="0" x2="0" y2="6" stroke={quoteattr(colour)} stroke-width="2"/></pattern>')
        return f"url(#{ident})"

    def arrow_marker(self, ident: str, colour: str = "#555555") -> str:
        """Define an arrowhead marker once; the value to give a line's marker_end."""
        self._define(
            f'<marker id={quoteattr(ident)} viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill={quoteattr(colour)}/></marker>')
        return f"url(#{ident})"

    def _define(self, definition: str) -> None:
        if definition not in self.defs:
            self.defs.append(definition)

    def embed(self, other: Svg, dx: float, dy: float) -> None:
        """Draw `other` here, shifted by (dx, dy); its definitions join ours (ids must differ)."""
        self.defs.extend(d for d in other.defs if d not in self.defs)
        self.body.append(f'<g transform="translate({_num(dx)},{_num(dy)})">')
        self.body.extend(other.body)
        self.body.append("</g>")

    def __str__(self) -> str:
        w, h = _num(self.width), _num(self.height)
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
                f'role="img"' + (f" aria-label={quoteattr(self.title)}" if self.title else "") + ">")
        parts = [head]
        if self.title:
            parts.append(f"<title>{escape(self.title)}</title>")
        if self.defs:
            parts.append("<defs>" + "".join(self.defs) + "</defs>")
        parts.append(f'<rect width="{w}" height="{h}" fill="#ffffff"/>')
        parts.extend(self.body)
        parts.append("</svg>")
        return "\n".join(parts) + "\n"
