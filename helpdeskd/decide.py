"""What helpdeskd does with one message: a pure function from (message, view, config) to a Decision.

No I/O, no clock, no logging here. The cycle (:mod:`helpdeskd.cycle`) gathers the ``View`` — the
tickets the message points at — applies the Decision, and records it.

Reply security (who may add to a ticket) lives in :func:`match_ticket`: a reply joins a ticket only
when it quotes one of our signed Message-IDs for it, or comes from the ticket's requester. Subject
tags and foreign threading headers are hints that still need the requester's address.

Loop safety: whether to answer at all is RFC 3834 (:mod:`helpdeskd.loops`) and then the rate limits,
whose counts the cycle gathers into the View (``sent_to``, ``sent_in_all``) so this stays pure and the
suppression is part of the recorded decision (a note on the ticket), made once per message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .actions import Decision, FollowUp, Ignore, NewTicket, Refuse
from .lang import choose_language
from .loops import is_delivery_report, no_autoreply_reason, rate_limit_reason
from .matching import is_our_message_id, our_references, reported_references, tagged_ids, verify
from .message import Message
from .settings import LANGUAGES, Config, Mailbox
from .ticket import Requester, Status, Ticket


@dataclass(frozen=True)
class View:
    """What the store knows that matters to this message, gathered before deciding."""

    tickets: Mapping[int, Ticket] = field(default_factory=dict)  # every ticket the message refers to
    thread_hints: tuple[int, ...] = ()  # tickets holding a foreign Message-ID this mail replies to
    duplicate_of: int | None = None  # ticket already holding this message's own Message-ID
    mailbox: Mailbox | None = None  # the intake it came through (per-mailbox defaults)
    sent_to: Mapping[str, int] = field(default_factory=dict)  # automatic messages per address, in its window
    sent_in_all: int = 0  # automatic messages to anyone within the global window


def wanted_ticket_ids(message: Message, config: Config) -> list[int]:
    """The ticket numbers the message points at (our Message-IDs, then subject tags): load these."""
    domain = config.helpdesk.message_id_domain
    ids = [ref.ticket_id for ref in our_references(message, domain)]
    ids += tagged_ids(message.subject, config.helpdesk.subject_tag)
    if is_delivery_report(message):
        ids += [ref.ticket_id for ref in reported_references(message, domain)]
    return list(dict.fromkeys(ids))


def recipients_of_interest(message: Message, tickets: Mapping[int, Ticket]) -> list[str]:
    """Addresses an answer to this message could go to: its sender, the requesters of its tickets."""
    addrs = [message.sender.addr] if message.sender else []
    return list(dict.fromkeys([*addrs, *(t.requester.addr for t in tickets.values())]))


def decide(message: Message, view: View, config: Config) -> Decision:
    hd = config.helpdesk
    lang = choose_language(message, LANGUAGES, hd.default_language, hd.detect_language)
    if is_our_message_id(message.message_id, hd.message_id_domain):
        return Decision(Ignore("our own mail came back"), language=lang)
    if view.duplicate_of is not None:
        return Decision(Ignore(f"duplicate of a message already on ticket #{view.duplicate_of}"), language=lang)
    quiet = no_autoreply_reason(message, hd.address, hd.message_id_domain)
    bounced = _bounced_ticket(message, view, config)
    if bounced is not None:
        note = f"delivery report about our mail on this ticket; no automatic answer: {quiet or 'report'}"
        return Decision(FollowUp(bounced.id), None, lang, (note,))
    sender = message.sender.addr if message.sender else ""
    if not hd.enabled:
        refusal = Refuse("the helpdesk is disabled", "disabled")
        return _answer(refusal, "refused", lang, quiet or _limited(sender, view, config))
    ticket = match_ticket(message, view, config)
    if ticket is not None:
        return _follow_up(ticket, lang, quiet, _limited(ticket.requester.addr, view, config), config)
    if not hd.allow_customer_tickets:
        refusal = Refuse("customers may not open tickets by mail", "customers_not_allowed")
        return _answer(refusal, "refused", lang, quiet or _limited(sender, view, config))
    new = _new_ticket(message, view, config, lang)
    return _answer(new, "ack_new", lang, quiet or _limited(new.requester.addr, view, config))


def _bounced_ticket(message: Message, view: View, config: Config) -> Ticket | None:
    """The ticket whose mail (one of our signed Message-IDs) this delivery report is about, if any."""
    if not is_delivery_report(message):
        return None
    for ref in reported_references(message, config.helpdesk.message_id_domain):
        ticket = view.tickets.get(ref.ticket_id)
        if ticket is not None and verify(ticket.token, ticket.id, ref.signature or ""):
            return ticket
    return None


def _limited(recipient: str, view: View, config: Config) -> str | None:
    """Rate-limit reason for one more automatic message to ``recipient`` (see View.sent_to)."""
    return rate_limit_reason(view.sent_to.get(recipient, 0), view.sent_in_all, config.autoreply)


def match_ticket(message: Message, view: View, config: Config) -> Ticket | None:
    """The existing ticket this message may join, or None (then it starts a new ticket)."""
    sender = message.sender.addr if message.sender else ""
    for ref in our_references(message, config.helpdesk.message_id_domain):
        ticket = view.tickets.get(ref.ticket_id)
        if ticket is not None and ref.signature and verify(ticket.token, ticket.id, ref.signature):
            return ticket
    hinted = [*tagged_ids(message.subject, config.helpdesk.subject_tag), *view.thread_hints]
    for ticket_id in hinted:
        ticket = view.tickets.get(ticket_id)
        if ticket is not None and sender and ticket.requester.addr == sender:
            return ticket
    return None


def _follow_up(ticket: Ticket, lang: str, quiet: str | None, limited: str | None, config: Config) -> Decision:
    """Join the ticket. Automatic mail (an out-of-office answering our acknowledgment) never reopens it."""
    if ticket.status == Status.CLOSED:
        return _answer(FollowUp(ticket.id, reopen=quiet is None), "reopened", lang, quiet or limited)
    template = "ack_followup" if config.helpdesk.acknowledge_followups else None
    return _answer(FollowUp(ticket.id), template, lang, quiet or limited)


def _new_ticket(message: Message, view: View, config: Config, lang: str) -> NewTicket:
    hd, box = config.helpdesk, view.mailbox
    sender = message.sender
    requester = Requester(
        addr=sender.addr if sender else (message.return_path or ""),
        name=sender.name if sender else "",
        language=lang,
    )
    return NewTicket(
        subject=message.subject.strip(),
        requester=requester,
        queue=(box and box.queue) or hd.default_queue,
        priority=(box and box.priority) or hd.default_priority,
        category=(box and box.category) or hd.default_category,
    )


def _answer(action, template: str | None, lang: str, quiet: str | None) -> Decision:
    """Attach the answer ``template`` unless loop rules forbid answering; then say why not."""
    if template is None:
        return Decision(action, None, lang)
    if quiet:
        return Decision(action, None, lang, (f"no automatic answer: {quiet}",))
    return Decision(action, template, lang)
