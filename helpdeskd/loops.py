"""When not to answer automatically (RFC 3834 and common practice), so helpdeskd never feeds a mail loop.

Mail that fails these checks is still filed or recorded; it only gets no automatic answer.
"""

from __future__ import annotations

import re

from .matching import own_reference
from .message import Message
from .settings import AutoReply

LOOP_HEADER = "x-helpdeskd-loop"  # we put it on everything we send, valued with our address

_ROBOT_LOCALPARTS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply", "do-not-reply")
_REPORT_TYPES = ("delivery-status", "disposition-notification", "feedback-report")


def no_autoreply_reason(message: Message, our_address: str, our_domain: str) -> str | None:
    """Why this message must not get an automatic answer, or None when answering is fine (computed
    once per message and settings: the helper process does it ahead of the filing thread)."""
    key = ("no_autoreply", our_address, our_domain)
    if key not in message.memo:
        message.memo[key] = _no_autoreply_reason(message, our_address, our_domain)
    return message.memo[key]


def _no_autoreply_reason(message: Message, our_address: str, our_domain: str) -> str | None:
    for check in (_auto_submitted, _precedence, _list_headers, _suppress, _report):
        reason = check(message)
        if reason:
            return reason
    return _sender_reason(message, our_address) or _ours(message, our_address, our_domain)


def _auto_submitted(message: Message) -> str | None:
    value = (message.header("auto-submitted") or "no").strip().lower()
    return None if value.split(";")[0].strip() == "no" else f"Auto-Submitted: {value}"


def _precedence(message: Message) -> str | None:
    value = (message.header("precedence") or "").strip().lower()
    return f"Precedence: {value}" if value in ("bulk", "junk", "list", "auto_reply") else None


def _list_headers(message: Message) -> str | None:
    names = sorted({name for name, _ in message.headers if name.startswith("list-")})
    return f"mailing list mail ({names[0]})" if names else None


def _suppress(message: Message) -> str | None:
    value = message.header("x-auto-response-suppress")
    if value is None:
        return None
    tokens = {t.strip().lower() for t in value.split(",")}
    return "X-Auto-Response-Suppress" if tokens & {"all", "autoreply", "oof"} else None


def _report(message: Message) -> str | None:
    if _is_report_type(message):
        return "delivery or read report"
    if message.header("x-autoreply") or message.header("x-autorespond"):
        return "sender marks itself as an autoresponder"
    return None


def _is_report_type(message: Message) -> bool:
    ctype = (message.header("content-type") or "").lower()
    return "multipart/report" in ctype or any(t in ctype for t in _REPORT_TYPES)


_SEPARATOR = re.compile(r'[\r\n<>,; "()\[\]\\]')  # what an address we write may not hold


def can_write_to(addr: str) -> bool:
    """An address we can put in a header and an envelope as is: a local part, one @ and a domain,
    ASCII, no separators or quotes ("@relay" or "root" is no address).

    (Internationalised addresses would need SMTPUTF8 end to end; we record such mail without answering.)
    """
    local, at, domain = addr.partition("@")
    return (addr.isascii() and bool(local and at and domain) and "@" not in domain
            and _SEPARATOR.search(addr) is None)


def _sender_reason(message: Message, our_address: str) -> str | None:
    if message.return_path == "":
        return "null return path (<>)"
    if message.sender is None or not can_write_to(message.sender.addr):
        return "no usable From address"
    local = message.sender.addr.split("@", 1)[0]
    if local in _ROBOT_LOCALPARTS or local.endswith("-request") or local.startswith("owner-"):
        return f"robot sender {message.sender.addr}"
    if message.sender.addr == our_address.lower():
        return "sent from our own address"
    return None


def _ours(message: Message, our_address: str, our_domain: str) -> str | None:
    if (message.header(LOOP_HEADER) or "").strip().lower() == our_address.lower():
        return "our own mail came back (loop header)"
    if own_reference(message.message_id, our_domain) is not None:  # our Message-ID shape, not just our
        return "our own mail came back (Message-ID)"  # domain: staff mail clients use that domain too
    return None


# -- bounces and rate limits -------------------------------------------------------------------------

def is_delivery_report(message: Message) -> bool:
    """A bounce, delay or read report (RFC 3464 / 8098), or a robot notice that behaves like one.

    Such mail is about a message we sent, not a new request: it may be noted on that message's
    ticket, never answered and never made a ticket of its own when we can tell which ticket it is.
    """
    if _is_report_type(message):
        return True
    local = message.sender.addr.split("@", 1)[0] if message.sender else ""
    return local in ("mailer-daemon", "postmaster")  # plain-text bounces of older MTAs


def rate_limit_reason(sent_to_recipient: int, sent_in_all: int, limits: AutoReply) -> str | None:
    """Why one more automatic message must not be sent now, or None while both limits allow it.

    ``sent_to_recipient`` / ``sent_in_all`` count what was queued within the configured windows.
    What is suppressed is only ever noted (on the ticket, in the log): a notice saying "you are
    rate-limited" would itself be an automatic message, the very thing a loop is made of.
    """
    if sent_in_all >= limits.global_max:
        return (f"circuit breaker open: {sent_in_all} automatic messages in the last "
                f"{_span(limits.global_window_seconds)} (limit {limits.global_max})")
    if sent_to_recipient >= limits.per_recipient:
        return (f"rate limit: {sent_to_recipient} automatic messages to this address in the last "
                f"{_span(limits.per_recipient_window_seconds)} (limit {limits.per_recipient})")
    return None


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
