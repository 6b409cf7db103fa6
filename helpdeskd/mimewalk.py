"""Walking the MIME tree: choosing the readable body and listing the attachments.

Contract: :func:`body_and_attachments` walks a compat32 tree within ``Limits.max_depth`` and
``Limits.max_parts`` and returns the body text in reading order (plain text preferred in a
multipart/alternative; HTML converted to text only when chosen) and whether it came from HTML.
Every other leaf, and every nested ``message/*`` as a whole, is recorded in
``ParseState.attachments`` with its decoded, sanitised file name and a safe storage name
(``att-<n>-<sha256 prefix><.ext>``, no sender-controlled path or characters); the bytes
themselves stay in the raw mail. :func:`describe_defect` turns stdlib ``email.errors`` defects
into our defect text. Never raises on hostile input; problems become defects. Pure, no I/O.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass
from email import errors as email_errors
from email.message import Message as MimePart  # compat32 tree node, not the modern EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32

from helpdeskd.charsets import decode_bytes
from helpdeskd.htmltext import html_to_text
from helpdeskd.mailheaders import (
    RawHeaders, collapse, decode_words, first_message_id, from_8bit, raw_header, repair_8bit_params, sanitise,
)
from helpdeskd.message import Attachment
from helpdeskd.parsestate import ParseState

__all__ = ["body_and_attachments", "describe_defect"]

# ----------------------------------------------------------------------------------------------
# Body
# ----------------------------------------------------------------------------------------------

_BODY_TYPES = ("text/plain", "text/html")


@dataclass
class _Piece:
    """A decoded body fragment; when ``html`` it is still HTML, converted only if chosen
    (the HTML half of a multipart/alternative is never converted: that is the slow part)."""

    text: str
    html: bool

    def readable(self) -> str:
        return html_to_text(self.text) if self.html else self.text


def body_and_attachments(root: MimePart, state: ParseState) -> tuple[str, bool]:
    """Readable body text (and whether it came from HTML); fills ``state.attachments``."""
    pieces = [p for p in _walk(root, 0, state) if p.text.strip()]
    texts = [_clean_body(p.readable()) for p in pieces]
    text = texts[0] if len(texts) == 1 else _clean_body("\n\n".join(texts))  # (cleaning twice changes nothing)
    return text, any(p.html for p in pieces)


def _walk(part: MimePart, depth: int, state: ParseState) -> list[_Piece]:
    """Body pieces of ``part`` in reading order; attachments are recorded on the way.

    A nested ``message/*`` (forwarded mail, delivery status) is one attachment: it is not
    walked, so its own attachments are not listed twice and its text is not taken for ours.
    """
    for defect in part.defects if depth else ():
        state.defect(describe_defect(defect))
    repair_8bit_params(part, state)
    ctype = _content_type(part)
    if ctype.startswith("message/"):
        _add_attachment(part, ctype, state)
        return []
    if part.is_multipart():
        return _walk_multipart(part, ctype, depth, state)
    if not _is_body(part, ctype):
        _add_attachment(part, ctype, state)
        return []
    return [_body_piece(part, ctype, state)]


def _walk_multipart(part: MimePart, ctype: str, depth: int, state: ParseState) -> list[_Piece]:
    children = _children(part, depth, state)
    if ctype == "multipart/alternative":
        return _best_alternative([_walk(c, depth + 1, state) for c in children])
    pieces: list[_Piece] = []
    for child in children:
        pieces.extend(_walk(child, depth + 1, state))
    return pieces


def _children(part: MimePart, depth: int, state: ParseState) -> list[MimePart]:
    """Sub-parts still within limits.max_depth and limits.max_parts (defect when cut)."""
    payload = part.get_payload()
    children = [c for c in payload if isinstance(c, MimePart)] if isinstance(payload, list) else []
    if children and depth + 1 > state.limits.max_depth:
        state.defect(f"MIME nesting deeper than {state.limits.max_depth}; deeper parts ignored")
        return []
    room = max(0, state.limits.max_parts - state.parts)
    if len(children) > room:
        state.defect(f"more than {state.limits.max_parts} MIME parts; the rest ignored")
        children = children[:room]
    state.parts += len(children)
    return children


def _best_alternative(choices: list[list[_Piece]]) -> list[_Piece]:
    """Prefer an alternative that is plain text; else the first that has any text."""
    for choice in choices:
        if not any(p.html for p in choice) and any(p.text.strip() for p in choice):
            return choice
    return next((c for c in choices if any(p.text.strip() for p in c)), [])


def _content_type(part: MimePart) -> str:
    return str(part.get_content_type()).lower()


def _is_body(part: MimePart, ctype: str) -> bool:
    """Inline text/plain or text/html without a file name is body; anything else is a file.

    A leaf that claims to be multipart (boundary missing or never found) is read as plain text
    so the words are not lost.
    """
    if ctype.startswith("multipart/"):
        return True
    if ctype not in _BODY_TYPES:
        return False
    disposition = str(part.get("content-disposition", "")).split(";", 1)[0].strip().lower()
    return disposition != "attachment" and not _raw_filename(part)


def _body_piece(part: MimePart, ctype: str, state: ParseState) -> _Piece:
    data = _payload_bytes(part)
    text = decode_bytes(data, part.get_content_charset(), state, where="body")
    return _Piece(text, html=ctype == "text/html")


def _payload_bytes(part: MimePart) -> bytes:
    """Transfer-decoded bytes of a leaf (base64 / quoted-printable / uuencode handled leniently)."""
    try:
        data = part.get_payload(decode=True)
    except (binascii.Error, ValueError, LookupError, UnicodeError):
        # Undecodable transfer encoding: the encoded text is still better than nothing.
        data = str(part.get_payload()).encode("utf-8", "surrogateescape")
    return data if isinstance(data, bytes) else b""


_BODY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES = bytes(c for c in range(128) if _BODY_CONTROLS.match(chr(c)))


def _clean_body(text: str) -> str:
    """One newline convention, no stray control characters, no leading/trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _has_controls(text):
        text = _BODY_CONTROLS.sub("", text)
    return text.strip("\n").rstrip()


def _has_controls(text: str) -> bool:
    """Whether ``text`` holds a character of ``_BODY_CONTROLS``: they are all ASCII, so they show as
    themselves in UTF-8, where deleting them is a byte translation — a few times faster than the
    regex finding none in a body (the usual case)."""
    data = text.encode("utf-8", "surrogatepass")
    return len(data.translate(None, _CONTROL_BYTES)) != len(data)


# ----------------------------------------------------------------------------------------------
# Attachments
# ----------------------------------------------------------------------------------------------

_MAX_FILENAME = 200
_SAFE_EXT = re.compile(r"\.[a-z0-9]{1,10}$")
_TYPE_EXT = {
    "text/plain": ".txt", "text/html": ".html", "text/calendar": ".ics", "text/csv": ".csv",
    "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "application/pdf": ".pdf",
    "message/rfc822": ".eml", "application/ms-tnef": ".dat", "application/zip": ".zip",
}


def _add_attachment(part: MimePart, ctype: str, state: ParseState) -> None:
    """Record one attachment's metadata; its bytes stay in the raw mail."""
    data = _attachment_bytes(part)
    filename = _filename(part, ctype, state)
    number = len(state.attachments) + 1
    digest = hashlib.sha256(data).hexdigest()[:10]
    storage = f"att-{number}-{digest}{_extension(filename, ctype)}"
    state.attachments.append(Attachment(filename=filename, content_type=ctype, size=len(data), storage_name=storage))
    if ctype in _EMBEDDED_TYPES:
        _note_embedded_id(part, data, state)


# A bounce report carries the returned mail (message/rfc822) or just its headers (text/rfc822-headers):
# their Message-ID tells which of our messages bounced (RFC 3464, RFC 6532 for the "global" variants).
_EMBEDDED_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers")


def _note_embedded_id(part: MimePart, data: bytes, state: ParseState) -> None:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], MimePart) else None
    if inner is None:
        try:
            inner = BytesHeaderParser(policy=compat32).parsebytes(data)
        except (LookupError, UnicodeError, ValueError, TypeError):
            return
    message_id = first_message_id(raw_header(RawHeaders(inner), "message-id", state))
    if message_id:
        state.embedded_ids.append(message_id)


def _attachment_bytes(part: MimePart) -> bytes:
    """Decoded content; a nested message is serialised back (compat32 parsed it into a tree)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _payload_bytes(part)
    try:
        return b"\n".join(p.as_bytes() for p in payload if isinstance(p, MimePart))
    except (LookupError, UnicodeError, ValueError, TypeError, AttributeError, RecursionError):
        return b""


def _filename(part: MimePart, ctype: str, state: ParseState) -> str:
    """Decoded (RFC 2231 and RFC 2047) and sanitised file name; "" when none is given."""
    name = _raw_filename(part)
    if not name and ctype == "message/rfc822":
        name = _nested_subject(part, state)
    name = decode_words(from_8bit(name, "attachment name", state), state)
    return _sanitise_filename(name)


def _raw_filename(part: MimePart) -> str:
    """The file name parameter (RFC 2231 decoded by compat32), "" when absent or unreadable."""
    try:
        return str(part.get_filename() or "")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return ""


def _nested_subject(part: MimePart, state: ParseState) -> str:
    """A forwarded message without a file name is shown as '<its subject>.eml'."""
    inner = part.get_payload()
    inner = inner[0] if isinstance(inner, list) and inner else None
    if not isinstance(inner, MimePart):
        return ""
    subject = collapse(decode_words(raw_header(RawHeaders(inner), "subject", state), state))
    return f"{subject or 'message'}.eml"


def _sanitise_filename(name: str) -> str:
    """No directories, control characters, leading/trailing dots or spaces; at most 200 chars."""
    name = re.split(r"[/\\]", sanitise(name))[-1]
    name = collapse(name).strip(" .")
    if len(name) <= _MAX_FILENAME:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and 0 < len(ext) <= 10:
        return stem[: _MAX_FILENAME - len(ext) - 1] + "." + ext
    return name[:_MAX_FILENAME]


def _extension(filename: str, ctype: str) -> str:
    """A short [a-z0-9] extension from the sender's name, else one from the content type."""
    found = _SAFE_EXT.search(filename.lower())
    return found.group(0) if found else _TYPE_EXT.get(ctype, ".bin")


# ----------------------------------------------------------------------------------------------
# Defect names
# ----------------------------------------------------------------------------------------------

_DEFECT_TEXT: dict[type, str] = {
    email_errors.NoBoundaryInMultipartDefect: "multipart without boundary parameter",
    email_errors.StartBoundaryNotFoundDefect: "multipart boundary declared but not found in body",
    email_errors.CloseBoundaryNotFoundDefect: "closing MIME boundary missing (message truncated?)",
    email_errors.FirstHeaderLineIsContinuationDefect: "first header line is a continuation line",
    email_errors.MisplacedEnvelopeHeaderDefect: "misplaced envelope 'From ' line among headers",
    email_errors.MissingHeaderBodySeparatorDefect: "malformed header line (missing blank line before body?)",
    email_errors.MultipartInvariantViolationDefect: "multipart type without multipart body",
    email_errors.InvalidMultipartContentTransferEncodingDefect: "invalid transfer encoding on multipart",
    email_errors.InvalidBase64PaddingDefect: "invalid base64 padding",
    email_errors.InvalidBase64CharactersDefect: "invalid base64 characters",
    email_errors.InvalidBase64LengthDefect: "invalid base64 length",
}


def describe_defect(defect: object) -> str:
    """Human-readable text for an ``email.errors`` defect (class name spelled out if unmapped)."""
    known = _DEFECT_TEXT.get(type(defect))
    if known:
        return known
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(defect).__name__.removesuffix("Defect"))
    return f"MIME defect: {words.lower()}"
