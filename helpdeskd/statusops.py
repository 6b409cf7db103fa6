""""My tickets" by email, applied: the cycle's steps for StatusReport and ConfirmIdentity decisions.

:func:`helpdeskd.identity.status_decision` (pure) decides whether the sender is proven. Here, under
the write lock, the claim fixes what the decision means — which tickets the sender's scope sees, or
which one-time code is issued — and :func:`apply_status` carries it out idempotently: filing the same
bytes again after a crash issues no second code and queues no second mail.

Only tickets that :func:`helpdeskd.scopes.visible` admits for the sender's scope are ever loaded
into the answer; its template gets nothing else about any ticket.
"""

from __future__ import annotations

from .actions import ConfirmIdentity, StatusReport
from .identity import new_code
from .mailjob import Occasion
from .mailout import queue_ticketless
from .message import Message
from .scopes import Scope, visible
from .services import Services
from .templates import confirm_context, status_context
from .ticket import Status, Ticket


def status_claim(action: StatusReport | ConfirmIdentity, svc: Services) -> dict:
    """The durable record of a status decision (see cycle._claim): the ticket ids, or the new code."""
    if isinstance(action, StatusReport):
        tickets = visible_tickets(svc, scope_from_text(action.scope))
        return {"action": "status", "ticket": None, "addr": action.addr, "scope": action.scope,
                "proven_by": action.proven_by, "code": action.code, "total": len(tickets),
                "ids": [t.id for t in tickets[:svc.config.status_requests.max_listed]]}
    expires = svc.clock().timestamp() + svc.config.status_requests.code_ttl_seconds
    return {"action": "confirm", "ticket": None, "addr": action.addr, "reason_code": action.reason_code,
            "code": new_code(), "expires": expires}


def scope_from_text(text: str) -> Scope:
    kind, _, name = text.partition(":")
    return Scope(kind, name)


def visible_tickets(svc: Services, scope: Scope) -> list[Ticket]:
    """Every ticket ``scope`` may see: open ones first, then the most recently updated.

    A full scan of the store: status requests are rare and answered only for proven senders.
    """
    found = [t for t in svc.store.iter_tickets() if visible(scope, t, svc.config.access)]
    found.sort(key=lambda t: (t.updated, t.id), reverse=True)
    found.sort(key=lambda t: t.status == Status.CLOSED)  # stable: keeps the recency order within each
    return found


def apply_status(message: Message, claim: dict, svc: Services) -> tuple[str | None, bool, str]:
    """Carry out a status claim; returns (the answer's template, None when the rate limits took it
    away; whether it was queued now; detail for the log line)."""
    occasion = Occasion(key=message.key, sender=claim["addr"],
                        sender_name=message.sender.name if message.sender else "", language=claim["lang"],
                        in_reply_to=message.message_id, references=message.references)
    if claim["action"] == "confirm":
        return _send_code(message, claim, svc, occasion)
    return _send_list(message, claim, svc, occasion)


def _send_code(message: Message, claim: dict, svc: Services, occasion: Occasion) -> tuple[str | None, bool, str]:
    svc.confirmations.issue(claim["code"], claim["addr"], claim["expires"], svc.clock().timestamp())
    minutes = max(1, round(svc.config.status_requests.code_ttl_seconds / 60))
    context = confirm_context(svc.config, claim["lang"], claim["code"], minutes, claim["reason_code"],
                              message.subject)
    template, queued = _queue(svc, "status_confirm", occasion, context, claim)
    return template, queued, f"confirmation code mailed to {claim['addr']}" + (
        f" ({claim['reason_code']} code)" if claim["reason_code"] else "")


def _send_list(message: Message, claim: dict, svc: Services, occasion: Occasion) -> tuple[str | None, bool, str]:
    if claim["code"]:
        svc.confirmations.use(claim["code"], message.key)
    scope = scope_from_text(claim["scope"])
    # Loaded again and checked again: the list can never show a ticket outside the scope.
    tickets = [t for t in (svc.store.get(i) for i in claim["ids"]) if t and visible(scope, t, svc.config.access)]
    context = status_context(svc.config, claim["lang"], tickets, claim["total"], claim["scope"], claim["proven_by"])
    template, queued = _queue(svc, "status_list", occasion, context, claim)
    return template, queued, f"{claim['total']} ticket(s) for {claim['scope']} (proven by {claim['proven_by']})"


def _queue(svc: Services, template: str, occasion: Occasion, context: dict, claim: dict) -> tuple[str | None, bool]:
    """(template, queued now), or (None, False) when the rate limits took the answer away (the
    decision then kept no Send for it, and a note says why)."""
    if not any(s[0] == template for s in claim.get("sends", ())):
        return None, False
    return template, queue_ticketless(svc, template, occasion, context)
