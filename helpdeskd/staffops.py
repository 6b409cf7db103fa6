"""What staff do from the command line (``helpdeskctl reply|note|close|reopen|assign|set``).

The same effects as the equivalent mail from staff: the change is validated by the same rules
(:func:`helpdeskd.decide.staff_change`), recorded once in the history, and mail to the customer goes
through the outbox. Callers hold the store's write lock and a group commit around :func:`act`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .actions import PARTICIPANTS, Change, Send
from .commands import Command
from .decide import staff_change
from .errors import PermanentError
from .mailjob import Occasion
from .mailout import queue_sends
from .scopes import ADMIN, Scope, visible
from .services import Services, event_once
from .ticket import Status, Ticket
from .ticketops import apply_changes


@dataclass(frozen=True)
class Act:
    """One command-line action: changes (as commands), an answer to relay, an internal note."""

    commands: tuple[Command, ...] = ()
    answer: str = ""  # text relayed to the requester and collaborators
    note: str = ""  # internal text, never sent to customers
    notify: bool = True  # tell the customer when the ticket is closed


def act(svc: Services, ticket_id: int, action: Act, by: str, by_name: str = "",
        scope: Scope = ADMIN) -> tuple[Ticket, int]:
    """Apply ``action`` to the ticket; returns it (saved) and how many mails were queued.

    Raises PermanentError for an unknown ticket, a ticket outside ``scope`` (worded the same, so a
    scope cannot even learn that the ticket exists) or an invalid command: then nothing changes.
    """
    ticket = svc.store.get(ticket_id)
    if ticket is None or not visible(scope, ticket, svc.config.access):
        raise PermanentError(f"no ticket #{ticket_id}")
    changes = _validated(action.commands, svc)
    if action.answer and ticket.status in (Status.NEW, Status.REOPENED) and not any(c.field == "status" for c in changes):
        changes.append(Change("status", "open"))  # answered
    key = f"ctl-{uuid.uuid4().hex}"
    _record_text(svc, ticket, key, action, by, by_name)
    ticket = apply_changes(ticket, changes, by or "helpdeskctl", key, svc).with_changes(updated=svc.now())
    svc.store.save(ticket)
    sends = [Send("staff_answer", PARTICIPANTS, "relay")] if action.answer else []
    if action.notify and Change("status", "closed") in changes:
        sends.append(Send("closed", PARTICIPANTS, "notification"))
    message = {"from": by, "from_name": by_name, "subject": ticket.subject, "text": action.answer, "role": "staff"}
    occasion = Occasion(key=key, sender=by, sender_name=by_name, language=svc.config.helpdesk.default_language,
                        message=message)
    return ticket, len(queue_sends(svc, ticket, sends, occasion))


def _validated(commands: tuple[Command, ...], svc: Services) -> list[Change]:
    changes, errors = [], []
    for cmd in commands:
        change = staff_change(cmd, svc.config)
        if isinstance(change, str):
            errors.append(change)
        elif change is not None:
            changes.append(change)
    if errors:
        raise PermanentError("; ".join(errors))
    return changes


def _record_text(svc: Services, ticket: Ticket, key: str, action: Act, by: str, by_name: str) -> None:
    for text, internal in ((action.answer, False), (action.note, True)):
        if text:
            event_once(svc, ticket.id, {"type": "message", "ref": f"{key}:{'note' if internal else 'answer'}",
                                        "direction": "out" if not internal else "internal", "role": "staff",
                                        "internal": internal, "from": by or "helpdeskctl", "from_name": by_name,
                                        "subject": ticket.subject, "text": text,
                                        "via": "helpdeskctl"})
