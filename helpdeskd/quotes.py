"""What is new in a reply: the text above the quoted history and the signature.

Used only for display and relaying (the ticket history's ``new_text``, staff answers); the raw
message is always stored whole, so a wrong cut never loses anything.
"""

from __future__ import annotations

import re

# Attribution lines mail clients put above the quote, in the languages our customers use.
_ATTRIBUTION = re.compile(
    r"^\s*(?:"
    r"on\b.{0,200}\bwrote:|"  # On Mon, 1 Jan 2026, Ana <a@b> wrote:
    r"el\b.{0,200}\bescribi[óo]:|"  # El lun, 1 ene 2026, Ana <a@b> escribió:
    r"am\b.{0,200}\bschrieb.{0,80}:|"
    r"le\b.{0,200}\ba [ée]crit\s*:|"
    r"-{2,}\s*(?:original message|mensaje original|forwarded message|mensaje reenviado)\s*-{2,}|"
    r"_{10,}"  # Outlook's rule above the quoted header block
    r")\s*$",
    re.IGNORECASE,
)
_OUTLOOK_HEADER = re.compile(r"^\s*\*?(?:from|de)\s*:\*?\s.+$", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"^\s*\*?(?:sent|enviado(?: el)?|date|fecha)\s*:", re.IGNORECASE)
_SIGNATURE = re.compile(r"^-- ?$")
_MOBILE = re.compile(r"^\s*(?:sent from my|enviado desde mi)\b", re.IGNORECASE)


def new_text(text: str) -> str:
    """The reply's own words: everything before the first quote marker, attribution or signature."""
    lines = text.splitlines()
    plain_after = _next_plain_lines(lines)
    end = len(lines)
    for index, line in enumerate(lines):
        if _cuts_here(lines, index, line, plain_after):
            end = index
            break
    kept = [line for line in lines[:end] if not line.lstrip().startswith(">")]
    return "\n".join(kept).strip()


def _cuts_here(lines: list[str], index: int, line: str, plain_after: list[int]) -> bool:
    if _SIGNATURE.match(line) or _ATTRIBUTION.match(line) or _MOBILE.match(line):
        return True
    if line.lstrip().startswith(">") and _rest_is_quoted(lines, plain_after[index]):
        return True
    nxt = lines[index + 1] if index + 1 < len(lines) else ""
    return bool(_OUTLOOK_HEADER.match(line) and _OUTLOOK_NEXT.match(nxt))


def _next_plain_lines(lines: list[str]) -> list[int]:
    """For each line, the index of the first line from there on that is neither blank nor quoted
    (``len(lines)`` if none): one pass, so a long quote costs no more than its length."""
    found, after = len(lines), [0] * len(lines)
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if line.strip() and not line.lstrip().startswith(">"):
            found = index
        after[index] = found
    return after


def _rest_is_quoted(lines: list[str], plain_at: int) -> bool:
    """A ``>`` block that nothing but blank lines, quotes and a signature follows (bottom quote)."""
    return plain_at == len(lines) or bool(_SIGNATURE.match(lines[plain_at]))
