"""Ticket values. The store persists them; the core reads and produces them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum


class Status(StrEnum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"
    REOPENED = "reopened"


@dataclass(frozen=True)
class Requester:
    addr: str
    name: str = ""
    language: str = "en"


@dataclass(frozen=True)
class Ticket:
    """Current metadata of one ticket (``ticket.toml``). History lives in its events."""

    id: int
    subject: str
    status: Status
    queue: str
    priority: str
    category: str
    requester: Requester
    created: str  # ISO 8601, UTC
    updated: str
    token: str  # secret: proves a reply belongs to this ticket
    source: str = ""
    message_ids: tuple[str, ...] = ()  # Message-IDs seen, inbound and ours
    message_keys: tuple[str, ...] = ()  # idempotency keys of the messages filed here
    mail_count: int = 0  # raw messages stored (NNNN-<key>.eml in the ticket folder)
    collaborators: tuple[str, ...] = ()  # addresses that receive staff answers besides the requester
    assignee: str = ""  # staff address, "" when unassigned
    escalated: str = ""  # the business-impact reason given when escalation was asked for
    linked: tuple[int, ...] = ()  # related tickets (a reply to a closed ticket that started a new one)
    # Who filed it, fixed at filing time (scopes.py): admin | reseller | owner | user | unknown,
    # and the domain / reseller it belongs to. "" on tickets filed before roles existed.
    origin_role: str = ""
    origin_domain: str = ""
    origin_reseller: str = ""
    extra: dict = field(default_factory=dict, compare=False)  # keys later versions add; kept on rewrite

    def with_changes(self, **changes) -> "Ticket":
        """``dataclasses.replace(self, **changes)`` at a sixth of the cost (a message's filing makes
        one or more): the fields copied as they are, those named replaced (no other checks to skip)."""
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"Ticket has no field {sorted(unknown)[0]!r}")
        changed = object.__new__(Ticket)
        changed.__dict__.update(self.__dict__, **changes)  # (frozen: attributes refused, not the dict)
        return changed

    def has_key(self, key: str) -> bool:
        return key in self.message_keys

    def participants(self) -> tuple[str, ...]:
        """Who hears staff answers: the requester, then the collaborators."""
        return tuple(dict.fromkeys(a for a in (self.requester.addr, *self.collaborators) if a))


_FIELDS = frozenset(f.name for f in fields(Ticket))
