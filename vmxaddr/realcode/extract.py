"""Find one C function's definition in a source file, by name, without a C parser.

Comments, string and character literals are masked first (replaced by spaces, newlines kept, so
offsets and line numbers stay those of the file); the definition is then the top-level
`NAME(...)` followed by `{`, from the end of the previous top-level item to the brace that
closes the body.

What this cannot extract faithfully is reported, not guessed:
  * a definition assembled by a macro (`DEFINE_THING(name) { ... }`, `name##_suffix`, or a name
    that appears only in `#define` lines): `ExtractError`;
  * a definition whose header is split by `#if`/`#ifdef`, or several definitions of the name under
    different conditionals: `ExtractError` listing the lines;
  * conditionals inside the body: extracted, listed in `Extracted.conditionals` (their branches
    are compiled as the shim's macros select, which may not be the configuration you mean).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field


class ExtractError(ValueError):
    """The function cannot be extracted; the message says why, with line numbers."""


@dataclass(frozen=True)
class Extracted:
    """One C function definition taken from a source file, with where it came from (for #line and
    messages)."""
    name: str
    text: str  # the definition, from its first specifier to the closing brace
    path: str  # where it came from (for #line and messages)
    start_line: int  # 1-based line of the definition's first character
    end_line: int
    conditionals: tuple[int, ...] = field(default=())  # lines of #if/#ifdef/#else/#endif inside the body

    @property
    def sha256(self) -> str:
        """The digest of the definition's text (part of a build's cache key)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def with_line_marker(self) -> str:
        """The text preceded by a #line directive, so that compiler messages and __LINE__ name
        the original file and line."""
        return f'#line {self.start_line} "{self.path}"\n{self.text}\n'


def mask(text: str) -> str:
    """`text` with the contents of comments and string/character literals replaced by spaces
    (newlines kept): same length, same line numbers, no braces or names hidden in them."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            _blank(out, i, end)
            i = end
        elif c == "/" and i + 1 < n and text[i + 1] == "/":
            end = text.find("\n", i)
            end = n if end < 0 else end
            _blank(out, i, end)
            i = end
        elif c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            _blank(out, i + 1, min(j, n))
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _blank(out: list[str], start: int, end: int) -> None:
    for k in range(start, end):
        if out[k] != "\n":
            out[k] = " "


_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*(\w+)", re.M)
_CONDITIONAL = {"if", "ifdef", "ifndef", "elif", "else", "endif"}


def _directive_spans(masked: str) -> list[tuple[int, int, str]]:
    """(start, end, directive name) of each preprocessor line, continuation lines included."""
    spans = []
    for m in _DIRECTIVE.finditer(masked):
        end = m.start()
        while True:
            nl = masked.find("\n", end)
            if nl < 0:
                end = len(masked)
                break
            end = nl
            if masked[nl - 1:nl] == "\\":
                end = nl + 1
                continue
            break
        spans.append((m.start(), end, m.group(1)))
    return spans


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _match_paren(masked: str, i: int, open_c: str, close_c: str) -> int:
    """Index just past the bracket matching the one at `i`, or -1."""
    depth = 0
    for k in range(i, len(masked)):
        c = masked[k]
        if c == open_c:
            depth += 1
        elif c == close_c:
            depth -= 1
            if depth == 0:
                return k + 1
    return -1


def _depths(masked: str, directives: list[tuple[int, int, str]]) -> list[int]:
    """Brace depth at each position (directive lines ignored)."""
    skip = bytearray(len(masked))
    for s, e, _ in directives:
        skip[s:e] = b"\x01" * (e - s)
    depth = 0
    out = [0] * (len(masked) + 1)
    for k, c in enumerate(masked):
        out[k] = depth
        if skip[k]:
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
    out[len(masked)] = depth
    return out


def find_function(text: str, name: str, path: str = "<input>") -> Extracted:
    """The definition of `name` in C source `text` (see the module docstring)."""
    masked = mask(text)
    directives = _directive_spans(masked)
    in_directive = bytearray(len(masked))
    for s, e, _ in directives:
        in_directive[s:e] = b"\x01" * (e - s)
    depth = _depths(masked, directives)
    found: list[tuple[int, int, int]] = []  # (name position, body open brace, body end)
    for m in re.finditer(rf"\b{re.escape(name)}\s*\(", masked):
        pos = m.start()
        if depth[pos] != 0 or in_directive[pos]:
            continue
        close = _match_paren(masked, m.end() - 1, "(", ")")
        if close < 0:
            continue
        k = close
        while k < len(masked) and (masked[k].isspace() or in_directive[k]):
            k += 1
        # attributes between the parameter list and the body: __attribute__((...)), __must_check
        while True:
            am = re.match(r"(__attribute__\s*\(|__\w+\b)", masked[k:])
            if not am:
                break
            k += am.end()
            if am.group(0).endswith("("):
                k = _match_paren(masked, k - 1, "(", ")")
                if k < 0:
                    break
            while k < len(masked) and (masked[k].isspace() or in_directive[k]):
                k += 1
        if k < 0 or k >= len(masked) or masked[k] != "{":
            continue  # a declaration or a call at file scope
        end = _match_paren(masked, k, "{", "}")
        if end < 0:
            raise ExtractError(f"{path}:{_line(text, k)}: the body of {name}() has unbalanced braces "
                               "(a #if that splits a block, or a macro that opens one?)")
        found.append((pos, k, end))
    if not found:
        _explain_absence(text, masked, name, path, directives)
    if len(found) > 1:
        lines = ", ".join(str(_line(text, p)) for p, _, _ in found)
        raise ExtractError(f"{path}: {name}() is defined {len(found)} times (lines {lines}), presumably under "
                           "#if/#ifdef: say which one by preprocessing the file first")
    pos, brace, end = found[0]
    start = _start_of_item(masked, pos, directives)
    for s, _e, d in directives:
        if start <= s < brace and d in _CONDITIONAL:
            raise ExtractError(f"{path}:{_line(text, s)}: the header of {name}() is split by #{d}: "
                               "cannot tell which declaration is meant")
    conds = tuple(_line(text, s) for s, _e, d in directives if brace < s < end and d in _CONDITIONAL)
    return Extracted(name, text[start:end], path, _line(text, start), _line(text, end - 1), conds)


def _start_of_item(masked: str, pos: int, directives: list[tuple[int, int, str]]) -> int:
    """Where the top-level item containing `pos` starts: just after the previous `;`, `}` or
    preprocessor line (comments are already blanks), leading blanks skipped."""
    k = pos
    dir_ends = {e: s for s, e, _ in directives}
    while k > 0:
        c = masked[k - 1]
        if c in ";}":
            break
        if c == "\n" and k - 1 in dir_ends:
            break
        k -= 1
    while k < pos and masked[k].isspace():
        k += 1
    return k


def _explain_absence(text: str, masked: str, name: str, path: str, directives: list[tuple[int, int, str]]) -> None:
    for s, e, d in directives:
        if d == "define" and re.search(rf"\b{re.escape(name)}\b", masked[s:e]):
            raise ExtractError(f"{path}:{_line(text, s)}: {name} is a macro or assembled by one (#define): "
                               "no function definition to extract")
    m = re.search(r"\b(\w+)\s*\(([^()]*\b" + re.escape(name) + r"\b[^()]*)\)\s*\{", masked)
    if m:
        raise ExtractError(f"{path}:{_line(text, m.start())}: {name}() is assembled by the macro {m.group(1)}(): "
                           "expand it by hand (or preprocess the file) first")
    paste = re.search(r"##\s*\w*" + re.escape(name[-4:]) if len(name) > 4 else r"(?!)", masked)
    if paste:
        raise ExtractError(f"{path}:{_line(text, paste.start())}: {name} may be assembled by token pasting (##): "
                           "no definition found")
    if re.search(rf"\b{re.escape(name)}\b", masked):
        raise ExtractError(f"{path}: {name} is used but not defined here")
    raise ExtractError(f"{path}: no function named {name}")
