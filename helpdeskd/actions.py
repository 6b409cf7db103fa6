"""What :func:`helpdeskd.decide.decide` returns: plain values the cycle applies to the store and outbox."""

from __future__ import annotations

from dataclasses import dataclass

from .ticket import Requester


@dataclass(frozen=True)
class NewTicket:
    subject: str
    requester: Requester
    queue: str
    priority: str
    category: str


@dataclass(frozen=True)
class FollowUp:
    """Add the message to an existing ticket; ``reopen`` when the ticket was closed."""

    ticket_id: int
    reopen: bool = False


@dataclass(frozen=True)
class Ignore:
    """Nothing to file: a duplicate we already have."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """Not accepted as a ticket (helpdesk disabled, customers may not submit); the raw mail is kept.

    ``code`` is stable (``disabled``, ``customers_not_allowed``) so templates can explain it per language.
    """

    reason: str
    code: str = ""


Action = NewTicket | FollowUp | Ignore | Refuse


@dataclass(frozen=True)
class Decision:
    """One message's fate: an action, the template to answer with (or None), and why not when None."""

    action: Action
    reply: str | None = None
    language: str = "en"
    notes: tuple[str, ...] = ()
