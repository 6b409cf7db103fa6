"""Changing a ticket: status, priority, queue, category, assignee, collaborators, escalation.

One implementation for changes asked by mail (staff and customer commands) and by ``helpdeskctl``.
Each change is recorded in the history once (keyed by what caused it), so repeating the work after
a crash changes nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from .actions import Change
from .services import Services, event_once
from .ticket import Status, Ticket

FIELDS = ("status", "priority", "queue", "category", "assignee", "cc_add", "cc_remove", "escalated")


def apply_changes(ticket: Ticket, changes: Iterable[Change], by: str, ref: str, svc: Services) -> Ticket:
    """The ticket with ``changes`` applied and recorded (not saved: the caller saves once)."""
    for change in changes:
        before, ticket = _value(ticket, change.field), _changed(ticket, change, by)
        after = _value(ticket, change.field)
        if before != after:
            event_once(svc, ticket.id, {"type": "change", "ref": f"{ref}:{change.field}:{change.value}",
                                        "field": change.field, "from": before, "to": after, "by": by})
    return ticket


def _changed(ticket: Ticket, change: Change, by: str) -> Ticket:
    field, value = change.field, change.value
    if field == "status":
        return ticket.with_changes(status=Status(value))
    if field == "assignee":
        return ticket.with_changes(assignee=value or by)
    if field == "cc_add":
        return ticket.with_changes(collaborators=tuple(dict.fromkeys((*ticket.collaborators, value))))
    if field == "cc_remove":
        return ticket.with_changes(collaborators=tuple(a for a in ticket.collaborators if a != value))
    if field in ("priority", "queue", "category", "escalated"):
        return ticket.with_changes(**{field: value})
    raise ValueError(f"unknown ticket field {field!r}")


def _value(ticket: Ticket, field: str) -> str:
    if field in ("cc_add", "cc_remove"):
        return ", ".join(ticket.collaborators)
    return str(getattr(ticket, field))
