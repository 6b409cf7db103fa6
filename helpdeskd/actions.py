"""What :func:`helpdeskd.decide.decide` returns: plain values the cycle applies to the store and outbox."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .ticket import Requester

# Who a Send goes to. Each is resolved by the cycle to addresses, and each address gets its own mail.
SENDER, REQUESTER, PARTICIPANTS, STAFF, ESCALATION = "sender", "requester", "participants", "staff", "escalation"


@dataclass(frozen=True)
class Send:
    """One templated mail to an audience. ``kind``: auto-reply (answers the sender; RFC 3834 applies),
    notification (to our staff, ``Auto-Submitted: auto-generated``), relay (a staff answer: a human's mail)."""

    template: str
    to: str
    kind: str = "auto-reply"


@dataclass(frozen=True)
class Change:
    """One validated change to a ticket: field is status | priority | queue | category | assignee |
    cc_add | cc_remove | escalated."""

    field: str
    value: str


@dataclass(frozen=True)
class NewTicket:
    subject: str
    requester: Requester
    queue: str
    priority: str
    category: str
    collaborators: tuple[str, ...] = ()
    linked: tuple[int, ...] = ()  # the closed ticket this message answered, when it started a new one
    role: str = ""  # the submitter's role and what they belong to, fixed at filing time (scopes.Origin)
    domain: str = ""
    reseller: str = ""


@dataclass(frozen=True)
class FollowUp:
    """Add the message to an existing ticket.

    ``role`` is how the sender proved they belong (requester, collaborator, staff). ``internal``
    messages (staff notes, rejected commands, auto-replies from staff) are never relayed.
    """

    ticket_id: int
    role: str = "requester"
    reopen: bool = False
    changes: tuple[Change, ...] = ()
    relay: bool = False
    internal: bool = False
    errors: tuple[str, ...] = ()  # command problems: nothing was changed, the sender is told


@dataclass(frozen=True)
class Ignore:
    """Nothing to file: a duplicate we already have, or our own mail come back."""

    reason: str


@dataclass(frozen=True)
class Refuse:
    """Not accepted as a ticket (helpdesk disabled, customers may not submit); the raw mail is kept.

    ``code`` is stable (``disabled``, ``customers_not_allowed``) so templates can explain it per language.
    """

    reason: str
    code: str = ""


@dataclass(frozen=True)
class Hold:
    """Kept in ``held/`` for an admin to release (``helpdeskctl held release``); nobody is answered."""

    reason: str
    code: str = ""


@dataclass(frozen=True)
class StatusReport:
    """"My tickets": send ``addr`` the tickets ``scope`` may see (``proven_by`` says how we know it is them).

    ``code`` is the one-time confirmation code that proved it (used up when applied), or "".
    """

    addr: str
    scope: str  # str(scopes.Scope)
    proven_by: str  # "dmarc", "dkim", "spf" (trusted Authentication-Results) or "code"
    code: str = ""


@dataclass(frozen=True)
class ConfirmIdentity:
    """A status request from an unproven sender: mail a one-time code to the From address (the real
    owner of the address receives it, whoever wrote). ``reason_code``: "" | "expired" | "used"."""

    addr: str
    reason_code: str = ""


Action = NewTicket | FollowUp | Ignore | Refuse | Hold | StatusReport | ConfirmIdentity


@dataclass(frozen=True)
class Decision:
    """One message's fate: an action, the mail it causes, the sender's language, and notes for the
    history (why no answer was sent, ...)."""

    action: Action
    sends: tuple[Send, ...] = ()
    language: str = "en"
    notes: tuple[str, ...] = ()

    @property
    def reply(self) -> str | None:
        """The template answering the sender, if any (the acknowledgment)."""
        return reply_template(self.sends)


def reply_template(sends: Iterable[Send]) -> str | None:
    """Among ``sends``, the template answering the sender, if any."""
    return next((s.template for s in sends if s.to == SENDER), None)
