"""One outgoing mail as plain values, and how it is rendered and composed: no store, no Services.

A :class:`MailJob` holds everything a mail needs (the ticket as it was, the Send, the recipient, the
occasion, its ids and date). :func:`compose_job` turns it into bytes; :func:`write_job` also puts
them in the outbox. :mod:`helpdeskd.mailout` makes the jobs and records them; the POP3 gateway's
helper process (:mod:`helpdeskd.helper`) runs these functions beside the filing thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from .actions import SENDER, Send
from .matching import plus_address, render_tag, tagged_ids
from .outmail import Rendered, compose
from .settings import Config
from .store.outbox import Outbox
from .templates import Templates, context_for
from .ticket import Ticket

AUTO_SUBMITTED = {"auto-reply": "auto-replied", "notification": "auto-generated", "relay": "no"}


@dataclass(frozen=True)
class Occasion:
    """Why mail goes out, and what its templates may show about it."""

    key: str  # idempotency base: the inbound message key, or an operation id
    sender: str = ""  # who caused it ("" for the helpdesk itself)
    sender_name: str = ""
    language: str = "en"  # the sender's language
    message: dict = field(default_factory=dict)  # template variable: from, from_name, subject, text, role
    in_reply_to: str = ""  # the inbound Message-ID answered (auto-replies thread under it)
    references: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)  # more template variables: reason, errors


@dataclass(frozen=True)
class Recipient:
    addr: str
    name: str
    language: str


@dataclass(frozen=True)
class MailJob:
    """One mail to queue, with everything its rendering and composition need."""

    out_id: str  # outbox id: derived from the occasion, the template and the recipient
    message_id: str
    ticket: Ticket  # as it was when the mail was asked for
    send: Send
    person: Recipient
    occasion: Occasion
    date: datetime


@dataclass(frozen=True)
class Unsendable:
    """A mail that cannot be written (an address or header value no message may carry)."""

    reason: str


@dataclass(frozen=True)
class Queued:
    """A mail :func:`write_job` put in the outbox (``created`` False: it was there already)."""

    created: bool


def compose_job(config: Config, templates: Templates, job: MailJob) -> bytes | Unsendable:
    """The mail's bytes, or why it cannot be written. Touches no store; a broken template raises
    ConfigError (as rendering does everywhere)."""
    ticket, person = job.ticket, job.person
    context = context_for(ticket, config, person.language, message=job.occasion.message, **job.occasion.extra)
    rendered = _with_tag(templates.render(job.send.template, person.language, ticket.queue, context),
                         config.helpdesk.subject_tag, ticket.id)
    try:
        return _compose(config, rendered, job)
    except (ValueError, UnicodeError) as exc:  # one unwritable address must not stop the others
        return Unsendable(str(exc))


def write_job(config: Config, templates: Templates, outbox: Outbox, job: MailJob) -> Queued | Unsendable:
    """:func:`compose_job`, then into ``outbox/new`` — unless it is queued already (in any state):
    then it is not composed again (a template that fails now, or an address no longer writable,
    must not count against mail that is out)."""
    if outbox.state_of(job.out_id) is not None:
        return Queued(False)
    result = compose_job(config, templates, job)
    if isinstance(result, Unsendable):
        return result
    return Queued(outbox.put_new(job.out_id, envelope(config, job), result))  # (an exclusive create)


def envelope(config: Config, job: MailJob) -> dict:
    send = job.send
    return {"from": config.helpdesk.address if send.kind == "relay" else "", "to": [job.person.addr],
            "ticket": job.ticket.id, "template": send.template, "kind": send.kind, "message_id": job.message_id}


def _compose(config: Config, rendered: Rendered, job: MailJob) -> bytes:
    hd, ticket, send, occasion = config.helpdesk, job.ticket, job.send, job.occasion
    if send.to == SENDER:  # an answer to the mail that came in: thread under it
        in_reply_to, refs = occasion.in_reply_to, (*occasion.references, occasion.in_reply_to)
    else:  # people who never saw the incoming mail: thread under the ticket's first message
        first = ticket.message_ids[:1]
        in_reply_to, refs = (first[0] if first else ""), first
    who = occasion.sender_name or occasion.sender
    from_name = f"{who} ({hd.name})" if send.kind == "relay" and who else hd.name
    return compose(
        rendered, from_name=from_name, from_addr=hd.address, to_name=job.person.name, to_addr=job.person.addr,
        message_id=job.message_id, in_reply_to=in_reply_to, references=tuple(r for r in refs if r),
        auto_submitted=AUTO_SUBMITTED[send.kind], date=job.date,
        reply_to=plus_address(hd.address, ticket.id, ticket.token) if hd.plus_addressing else "",
    )


def _with_tag(rendered: Rendered, tag_format: str, ticket_id: int) -> Rendered:
    """Make sure the subject carries our tag, whatever the template says: replies must find their ticket."""
    if ticket_id in tagged_ids(rendered.subject, tag_format):
        return rendered
    return replace(rendered, subject=f"{render_tag(tag_format, ticket_id)} {rendered.subject}")
