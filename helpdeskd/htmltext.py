"""HTML → readable plain text, for mail whose only body is HTML (layer 1, stdlib only).

The goal is what a person would read in a mail client, not a faithful rendering:
paragraphs and line breaks survive, lists become "- item" / "1. item" lines, links keep
their target as "text (url)", quoted blocks get "> " prefixes, and script, style and
head content disappear. :func:`html_to_text` never raises on any input string.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

# Content of these elements is never shown to a reader.
_HIDDEN = frozenset({"script", "style", "head", "title", "template", "noscript", "object", "iframe", "svg"})
# Elements that start and end a paragraph (a blank line around them).
_PARAGRAPH = frozenset(
    {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre", "ul", "ol", "dl",
     "section", "article", "header", "footer", "address", "form", "fieldset", "figure", "center", "main"}
)
# Elements that only need their own line.
_LINE = frozenset({"tr", "li", "dt", "dd", "caption", "figcaption", "hr", "nav", "aside"})
_SPACES = re.compile(r"\s+")
_BLANKS = re.compile(r"\n{3,}")
_TAGS = re.compile(r"<[^>]*>?")
_DECLARATIONS = re.compile(r"<[!?][^>]*>")  # after _defuse's escaping every one has its ">"
_SAFE_LINK = re.compile(r"^(?:https?|ftp|mailto):", re.IGNORECASE)


def html_to_text(html: str) -> str:
    """Readable text of ``html``: never raises; whitespace-normalised, no trailing spaces."""
    converter = _Converter()
    try:
        converter.feed(_defuse(html))
        converter.close()
    except (AssertionError, ValueError, IndexError):
        # html.parser raises AssertionError on some malformed declarations (e.g. "<![foo[").
        # A crude tag strip keeps the words readable rather than losing the body.
        return _strip_tags(html)
    return converter.text()


def _defuse(html: str) -> str:
    """Remove the constructs that make html.parser slow or raise, in linear time.

    html.parser (3.11) re-scans to the end of the input for every construct it cannot finish
    (an unclosed "<!--", "</" or "<!" repeated many times is quadratic), and raises on unknown
    marked sections. We drop comments (an unclosed one runs to the end, as in browsers),
    escape every "<" after the last ">" (no tag can end there), then drop declarations,
    marked sections and processing instructions, none of which a reader sees.
    """
    html = _drop_comments(html)
    last = html.rfind(">")
    html = html[: last + 1] + html[last + 1 :].replace("<", "&lt;")
    return _DECLARATIONS.sub(" ", html)


def _drop_comments(html: str) -> str:
    """Drop "<!-- ... -->"; str.find keeps this linear where a lazy regex would not be."""
    out, pos = [], 0
    while (start := html.find("<!--", pos)) >= 0:
        out.append(html[pos:start])
        end = html.find("-->", start + 4)
        if end < 0:
            return "".join(out)
        pos = end + 3
    out.append(html[pos:])
    return "".join(out)


def _strip_tags(html: str) -> str:
    """Fallback: drop anything tag-like, unescape entities, collapse whitespace."""
    from html import unescape

    return _SPACES.sub(" ", unescape(_TAGS.sub(" ", html))).strip()


class _Converter(HTMLParser):
    """Collects text lines while tracking hidden, pre, list and quote context."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._lines: list[str] = []
        self._current: list[str] = []
        self._hidden = 0  # depth inside elements whose content is dropped
        self._pre = 0
        self._quote = 0
        self._lists: list[int] = []  # per open list: 0 for <ul>, else next number for <ol>
        self._links: list[str | None] = []

    # -- output helpers -------------------------------------------------------------------
    def _emit(self, text: str) -> None:
        """Append inline text; a space at the start of a line or after a space is dropped."""
        if not self._current or self._current[-1].endswith(" "):
            text = text.lstrip(" ")
        if text:
            self._current.append(text)

    def _newline(self) -> None:
        """End the current line (with the quote prefix in force)."""
        line = "".join(self._current).rstrip()
        self._lines.append(("> " * self._quote + line).rstrip() if line or self._quote else "")
        self._current = []

    def _paragraph(self) -> None:
        """End the current line, then make sure exactly one blank line follows."""
        if self._current:
            self._newline()
        if self._lines and self._lines[-1] != "":
            self._lines.append("")

    def _line_break(self) -> None:
        if self._current:
            self._newline()

    def text(self) -> str:
        """The collected text; call after :meth:`close`."""
        if self._current:
            self._newline()
        joined = "\n".join(self._lines).replace("\xa0", " ")
        return _BLANKS.sub("\n\n", joined).strip("\n")

    # -- parser callbacks -------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif not self._hidden:
            self._open(tag, dict(attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/> and friends: open without counting as an open hidden element.
        if not self._hidden and tag not in _HIDDEN:
            self._open(tag, dict(attrs))
            self._close(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif not self._hidden:
            self._close(tag)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        if self._pre:
            self._emit_pre(data)
        else:
            self._emit(_SPACES.sub(" ", data))

    def _emit_pre(self, data: str) -> None:
        """Preformatted text keeps its spaces and line breaks."""
        first, *rest = data.replace("\r\n", "\n").split("\n")
        self._current.append(first)
        for line in rest:
            self._newline()
            self._current.append(line)

    def _open(self, tag: str, attrs: dict[str, str | None]) -> None:
        if tag == "br":
            self._newline()
        elif tag == "li":
            self._open_item()
        elif tag == "a":
            self._links.append(attrs.get("href"))
        elif tag == "img" and attrs.get("alt"):
            self._emit(f"[{attrs['alt']}]")
        elif tag in ("td", "th"):
            self._emit(" ")
        else:
            self._open_block(tag)

    def _open_block(self, tag: str) -> None:
        if tag in _PARAGRAPH:
            self._paragraph()
        elif tag in _LINE:
            self._line_break()
        if tag == "blockquote":
            self._quote += 1
        elif tag == "pre":
            self._pre += 1
        elif tag in ("ul", "ol"):
            self._lists.append(0 if tag == "ul" else 1)
        elif tag == "hr":
            self._emit("----")
            self._newline()

    def _open_item(self) -> None:
        """A list item starts its own line with a bullet or its number."""
        self._line_break()
        indent = "  " * max(0, len(self._lists) - 1)
        # Appended directly: _emit would strip the indentation at the start of the line.
        if self._lists and self._lists[-1]:
            self._current.append(f"{indent}{self._lists[-1]}. ")
            self._lists[-1] += 1
        else:
            self._current.append(f"{indent}- ")

    def _close(self, tag: str) -> None:
        if tag == "a":
            self._close_link()
            return
        if tag == "blockquote":
            self._paragraph()
            self._quote = max(0, self._quote - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag in ("ul", "ol") and self._lists:
            self._lists.pop()
        if tag in _PARAGRAPH:
            self._paragraph()
        elif tag in _LINE:
            self._line_break()

    def _close_link(self) -> None:
        """Show a link's target after its text unless the text already is the target."""
        href = self._links.pop() if self._links else None
        if not href or not _SAFE_LINK.match(href):
            return  # anchors, javascript: and the like are noise to a reader
        shown = "".join(self._current)
        target = href[7:] if href.lower().startswith("mailto:") else href
        if not shown.rstrip().endswith(target):
            self._emit(f" ({target})")
