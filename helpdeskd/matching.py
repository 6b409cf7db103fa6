"""Finding the ticket a message answers: our Message-IDs, our subject tag, and the proof a reply belongs.

Our Message-IDs look like ``<hd.<ticket>.<sig>.<unique>@<domain>>`` where ``sig`` is an HMAC of the
ticket number under the ticket's secret token, so a reply that quotes one proves it saw our mail.
Subject tags and foreign Message-IDs are hints only; authorization is decided in :mod:`helpdeskd.decide`.
"""

from __future__ import annotations

import functools
import hmac
import re
from dataclasses import dataclass

from .message import Message

_OURS = re.compile(r"^hd\.(\d{1,12})\.([0-9a-f]{16})\.[0-9a-z]+@(.+)$", re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def sign(token: str, ticket_id: int) -> str:
    """The signature our Message-IDs and reply addresses carry (a few per mail: kept for the tickets
    at hand)."""
    return hmac.digest(token.encode(), f"ticket:{ticket_id}".encode(), "sha256").hex()[:16]


def verify(token: str, ticket_id: int, signature: str) -> bool:
    """Constant-time check that ``signature`` was made with this ticket's token."""
    return hmac.compare_digest(sign(token, ticket_id), signature.lower())


def make_message_id(ticket_id: int, token: str, unique: str, domain: str) -> str:
    """One of our Message-IDs (without angle brackets). ``unique`` keeps each mail's id distinct."""
    return f"hd.{ticket_id}.{sign(token, ticket_id)}.{unique}@{domain}"


@dataclass(frozen=True)
class Reference:
    ticket_id: int
    signature: str | None  # present when the reference came from one of our Message-IDs


def our_references(message: Message, domain: str) -> list[Reference]:
    """Our Message-IDs quoted in In-Reply-To / References, most recent first."""
    found: list[Reference] = []
    for mid in (*message.in_reply_to, *reversed(message.references)):
        match = _OURS.match(mid)
        if match and match.group(3).lower() == domain.lower():
            ref = Reference(int(match.group(1)), match.group(2).lower())
            if ref not in found:
                found.append(ref)
    return found


def own_reference(message_id: str, domain: str) -> Reference | None:
    """The ticket and signature in ``message_id`` when it is one of ours (our mail coming back)."""
    match = _OURS.match(message_id)
    if not match or match.group(3).lower() != domain.lower():
        return None
    return Reference(int(match.group(1)), match.group(2).lower())


@functools.lru_cache(maxsize=16)  # one tag format per config; asked for several times per message
def tag_pattern(tag_format: str) -> re.Pattern[str]:
    """A forgiving regex for the configured subject tag: spaces and case may vary, ``{id}`` is the number."""
    before, _, after = tag_format.partition("{id}")

    def loose(text: str) -> str:
        return r"\s*".join(re.escape(ch) for ch in text.replace(" ", ""))

    return re.compile(loose(before) + r"\s*(\d{1,12})\s*" + loose(after), re.IGNORECASE)


def tagged_ids(subject: str, tag_format: str) -> list[int]:
    """Ticket numbers in our subject tag, in order of appearance (a forward may carry two)."""
    return [int(m.group(1)) for m in tag_pattern(tag_format).finditer(subject)]


def render_tag(tag_format: str, ticket_id: int) -> str:
    return tag_format.replace("{id}", str(ticket_id))


_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|antwort|rv|res|ref|fw|fwd|wg|tr|enc|rif|r|i|odp|vl|atb)"
    r"(?:\s*\[\d+\])?\s*[:：]\s*)+",
    re.IGNORECASE,
)


def strip_reply_prefixes(subject: str) -> str:
    """``Re: AW: Fwd: x`` → ``x``, for the localized prefixes clients add."""
    return _PREFIX.sub("", subject).strip()


def plus_address(base: str, ticket_id: int, token: str) -> str:
    """The reply address of a ticket: ``local+<ticket>-<sig>@domain`` for the helpdesk address ``base``."""
    local, _, domain = base.partition("@")
    return f"{local}+{ticket_id}-{sign(token, ticket_id)}@{domain}"


@functools.lru_cache(maxsize=8)
def _plus_pattern(base: str) -> re.Pattern[str]:
    local, _, domain = base.partition("@")
    return re.compile(rf"^{re.escape(local)}\+(\d{{1,12}})-([0-9a-f]{{16}})@{re.escape(domain)}$")


def plus_references(message: Message, base: str) -> list[Reference]:
    """Tickets named by reply addresses in To, Cc and Delivered-To (our plus-addresses)."""
    pattern = _plus_pattern(base.lower())
    candidates = [a.addr for a in (*message.to, *message.cc)]
    candidates += [v.strip().strip("<>").lower() for v in message.header_all("delivered-to")]
    found: list[Reference] = []
    for addr in candidates:
        match = pattern.match(addr)
        if match:
            ref = Reference(int(match.group(1)), match.group(2))
            if ref not in found:
                found.append(ref)
    return found


_OURS_IN_TEXT = re.compile(r"hd\.\d{1,12}\.[0-9a-f]{16}\.[0-9a-z]+@[A-Za-z0-9.-]+", re.IGNORECASE)
_TEXT_SCAN_LIMIT = 200_000  # characters of a bounce's text searched for our Message-IDs


def reported_references(message: Message, domain: str) -> list[Reference]:
    """Our Message-IDs a bounce report refers to: its embedded mail or headers, its threading
    headers, and — for plain-text bounces that quote the returned headers — its text."""
    candidates = [*message.embedded_ids, *message.in_reply_to, *message.references]
    candidates += _OURS_IN_TEXT.findall(message.text[:_TEXT_SCAN_LIMIT])
    found: list[Reference] = []
    for mid in candidates:
        match = _OURS.match(mid.strip().rstrip(".,;>").lower())
        if match and match.group(3) == domain.lower():
            ref = Reference(int(match.group(1)), match.group(2))
            if ref not in found:
                found.append(ref)
    return found
