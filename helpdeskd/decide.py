"""What helpdeskd does with one message: a pure function from (message, view, config) to a Decision.

No I/O, no clock, no logging here. The cycle (:mod:`helpdeskd.cycle`) gathers the ``View`` — the
tickets the message points at — applies the Decision, and records it.

Reply security (who may add to a ticket) lives in :func:`match_ticket`: a reply joins a ticket only
when it quotes one of our signed Message-IDs for it, or comes from the ticket's requester. Subject
tags and foreign threading headers are hints that still need the requester's address.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .actions import Decision, FollowUp, Ignore, NewTicket, Refuse
from .lang import choose_language
from .loops import no_autoreply_reason
from .matching import is_our_message_id, our_references, tagged_ids, verify
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


def wanted_ticket_ids(message: Message, config: Config) -> list[int]:
    """The ticket numbers the message points at (our Message-IDs, then subject tags): load these."""
    domain = config.helpdesk.message_id_domain
    ids = [ref.ticket_id for ref in our_references(message, domain)]
    ids += tagged_ids(message.subject, config.helpdesk.subject_tag)
    return list(dict.fromkeys(ids))


def decide(message: Message, view: View, config: Config) -> Decision:
    hd = config.helpdesk
    lang = choose_language(message, LANGUAGES, hd.default_language, hd.detect_language)
    if is_our_message_id(message.message_id, hd.message_id_domain):
        return Decision(Ignore("our own mail came back"), language=lang)
    if view.duplicate_of is not None:
        return Decision(Ignore(f"duplicate of a message already on ticket #{view.duplicate_of}"), language=lang)
    quiet = no_autoreply_reason(message, hd.address, hd.message_id_domain)
    if not hd.enabled:
        return _answer(Refuse("the helpdesk is disabled", "disabled"), "refused", lang, quiet)
    ticket = match_ticket(message, view, config)
    if ticket is not None:
        return _follow_up(ticket, lang, quiet, config)
    if not hd.allow_customer_tickets:
        return _answer(Refuse("customers may not open tickets by mail", "customers_not_allowed"), "refused", lang, quiet)
    return _answer(_new_ticket(message, view, config, lang), "ack_new", lang, quiet)


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


def _follow_up(ticket: Ticket, lang: str, quiet: str | None, config: Config) -> Decision:
    if ticket.status == Status.CLOSED:
        return _answer(FollowUp(ticket.id, reopen=True), "reopened", lang, quiet)
    template = "ack_followup" if config.helpdesk.acknowledge_followups else None
    return _answer(FollowUp(ticket.id), template, lang, quiet)


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
