"""Raw mail bytes → :class:`~helpdeskd.message.Message` (layer 1: pure, no I/O, no logging).

:func:`parse` never raises on any bytes. What is wrong with a mail (broken MIME, unknown or
mislabelled charsets, 8-bit headers, exceeded limits...) is written into ``Message.defects`` as
short human-readable strings, and the readable parts are still returned.

Speed: the stdlib ``email`` package with ``policy.default`` costs ~10x more than ``compat32``
(see ``shared/dev/perf.md``), so we parse with ``compat32`` and decode headers ourselves. Our
own decoder is also more forgiving than ``email.header.make_header``, which raises on unknown
charsets and invalid bytes.

This module is the entry point and assembles the value; the work is split by responsibility:
:mod:`helpdeskd.mailheaders` (header decoding, addresses, ids, languages),
:mod:`helpdeskd.charsets` (bytes → text), :mod:`helpdeskd.mimewalk` (body and attachments) and
:mod:`helpdeskd.parsestate` (the defects and attachments collected during one parse).
"""

from __future__ import annotations

import hashlib
import re
from email.message import Message as MimePart  # compat32 tree node, not the modern EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32

from helpdeskd.mailheaders import (
    RawHeaders, addresses, collapse, decode_headers, first_message_id, languages, message_ids, raw_header,
    return_path,
)
from helpdeskd.message import Address, Message
from helpdeskd.mimewalk import body_and_attachments, describe_defect
from helpdeskd.parsestate import ParseState
from helpdeskd.settings import Limits

__all__ = ["parse", "message_key"]

_DEFAULT_LIMITS = Limits()

# ----------------------------------------------------------------------------------------------
# Idempotency key
# ----------------------------------------------------------------------------------------------


def message_key(message_id: str, raw: bytes) -> str:
    """Idempotency key of one inbound mail: 32 lower-case hex characters.

    ``sha256(normalised Message-ID + NUL + sha256(normalised raw bytes))``, truncated. The same
    bytes always give the same key; it is filesystem-safe and short. When the message has no
    Message-ID, pass ``""``: the key is then synthetic, derived from the bytes alone (still
    deterministic, so a re-delivery of the very same bytes is recognised).

    Normalisation: surrounding whitespace and angle brackets are stripped from the Message-ID;
    in the bytes, CRLF becomes LF and trailing line breaks are dropped.
    """
    mid = _normalise_id(message_id).encode("utf-8", "surrogateescape")
    body = hashlib.sha256(_normalise_newlines(raw)).digest()
    return hashlib.sha256(b"mid:" + mid + b"\0" + body).hexdigest()[:32]


def _normalise_newlines(raw: bytes) -> bytes:
    """Line endings are transport framing, not content.

    The same mail reaches us as LF (a pipe, Maildir written by a local MDA) or CRLF (POP3, IMAP,
    LMTP), and some readers drop the final line break; counting those as different messages would
    file one mail twice. Two mails that differ *only* in line endings are the same mail to a human,
    so sharing a key is what we want. Trace headers an MDA prepends (Return-Path, Delivered-To,
    Received) do change the bytes and hence the key; Message-ID based dedup covers that case.
    """
    return bytes(raw).replace(b"\r\n", b"\n").rstrip(b"\r\n")


def _normalise_id(value: str) -> str:
    return value.strip().strip("<>").strip()


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def parse(raw: bytes, limits: Limits = _DEFAULT_LIMITS) -> Message:
    """Parse one mail. Never raises: every problem becomes an entry in ``Message.defects``.

    ``raw`` is kept untouched by the caller; ``size`` is ``len(raw)``. The work is bounded by
    ``limits`` (parts, nesting depth, header length); ``max_message_bytes`` is the caller's to
    enforce before calling.
    """
    raw = bytes(raw)
    try:
        return _parse(raw, limits)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        # Why a catch-all here: a bug or a stdlib surprise on one hostile mail must not stop the
        # pipeline; the caller still gets a value (key, size, what headers we can read) and the
        # raw bytes stay in the spool.
        return _degraded(raw, limits, f"parser failure ({type(exc).__name__}); body not read")


def _parse(raw: bytes, limits: Limits) -> Message:
    state = ParseState(limits)
    if not raw.strip():
        state.defect("empty message")
    if _too_many_containers(raw, limits.max_parts):
        # The stdlib parser costs O(lines x nesting depth); refuse the MIME walk up front.
        return _degraded(raw, limits, f"too many MIME containers (limit {limits.max_parts}); body not read")
    try:
        root = BytesParser(policy=compat32).parsebytes(raw)
    except RecursionError:
        return _degraded(raw, limits, "MIME nesting too deep for the parser; body not read")
    text, is_html = body_and_attachments(root, state)
    return _build(raw, root, state, text=text, html=is_html)


def _degraded(raw: bytes, limits: Limits, reason: str) -> Message:
    """Headers-only result after the full parse was refused or failed; never raises."""
    state = ParseState(limits)
    try:
        root = BytesHeaderParser(policy=compat32).parsebytes(raw)
        state.defect(reason)
        return _build(raw, root, state, text="", html=False)
    except Exception:  # noqa: BLE001 - last resort, see parse()
        return Message(key=message_key("", raw), message_id="", subject="", sender=None,
                       defects=(reason, "headers unreadable"), size=len(raw))


_CONTAINER = re.compile(rb"boundary\s*=|content-type:\s*message/", re.IGNORECASE)  # not "message/" in text


def _too_many_containers(raw: bytes, limit: int) -> bool:
    """Cheap upper bound on MIME containers, stopping as soon as the limit is passed."""
    lowered = raw.lower()  # every match holds one of these words: counting them is a looser bound, ~20x faster
    if lowered.count(b"boundary") + lowered.count(b"message/") <= limit:
        return False
    for count, _ in enumerate(_CONTAINER.finditer(raw), start=1):
        if count > limit:
            return True
    return False


def _build(raw: bytes, root: MimePart, state: ParseState, *, text: str, html: bool) -> Message:
    """Assemble the value from the parsed tree and the decoded body."""
    for defect in root.defects:
        state.defect(describe_defect(defect))
    headers, sent = decode_headers(root, state), RawHeaders(root)
    first = _first_values(headers)
    message_id = first_message_id(raw_header(sent, "message-id", state))
    if not message_id:
        state.defect("missing Message-ID")
    if not any(name == "from" for name, _ in headers):
        state.defect("missing From")
    return Message(
        key=message_key(message_id, raw),
        message_id=message_id,
        subject=collapse(first.get("subject", "")),
        sender=_first(addresses(sent, "from", state)),
        reply_to=addresses(sent, "reply-to", state),
        to=addresses(sent, "to", state),
        cc=addresses(sent, "cc", state),
        return_path=return_path(sent, state),
        in_reply_to=message_ids(raw_header(sent, "in-reply-to", state)),
        references=message_ids(raw_header(sent, "references", state)),
        date=collapse(first.get("date", "")),
        languages=languages(first.get("content-language", ""), first.get("accept-language", "")),
        text=text,
        html=html,
        attachments=tuple(state.attachments),
        headers=headers,
        defects=tuple(state.defects),  # dict keys keep insertion order
        size=len(raw),
        embedded_ids=tuple(dict.fromkeys(state.embedded_ids)),
    )


def _first(items: tuple[Address, ...]) -> Address | None:
    return items[0] if items else None


def _first_values(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """First value of every header name (later duplicates do not override)."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name, value)
    return first
