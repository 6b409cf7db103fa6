"""Turning a decision's Sends into queued mail: one message per recipient, each queued exactly once.

Used by the cycle (mail that came in) and by ``helpdeskctl`` (answers typed at the command line).
Outbox ids derive from the occasion's key, the template and the recipient, so doing the same work
twice — after a crash — queues nothing twice, and each queued mail is recorded once in the history.

Each mail is a :class:`MailJob` (plain values): :func:`compose_job` renders and composes it without
touching the store, :func:`finish_job` queues the result and records it. Both run one after the
other, unless the caller collects the jobs (:func:`collecting`) to have them composed — and, with
:func:`write_job`, put in the outbox — elsewhere (the POP3 gateway's helper process), and finishes
them later, before its batch counts as filed. A collected job is counted for the rate limits when
it is collected, so a crash before it is finished over-counts, never under-counts.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

from .actions import PARTICIPANTS, REQUESTER, SENDER, STAFF, Send
from .matching import make_message_id, plus_address, render_tag, tagged_ids
from .outmail import Rendered, compose
from .services import Services, event_once
from .settings import Config
from .store.outbox import Outbox
from .templates import Templates, context_for, refusal_context
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


def recipients(send: Send, ticket: Ticket, occasion: Occasion, svc: Services) -> list[Recipient]:
    """The addresses a Send goes to, each with the language to write in; never the sender themself
    (except for answers to the sender), never duplicated."""
    config, requester = svc.config, ticket.requester
    default = config.helpdesk.default_language
    if send.to == SENDER:
        return [Recipient(occasion.sender, occasion.sender_name, occasion.language)] if occasion.sender else []
    if send.to == REQUESTER:
        people = [Recipient(requester.addr, requester.name, requester.language)]
    elif send.to == PARTICIPANTS:
        people = [Recipient(a, requester.name if a == requester.addr else "", requester.language)
                  for a in ticket.participants()]
    else:
        queue = config.queue(ticket.queue)
        addrs = (queue.staff if send.to == STAFF else queue.escalation) if queue else ()
        people = [Recipient(a, "", default) for a in addrs]
    unique: dict[str, Recipient] = {}
    for person in people:
        if person.addr and person.addr != occasion.sender:
            unique.setdefault(person.addr, person)
    return list(unique.values())


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


_collector = threading.local()


@contextmanager
def collecting(jobs: list[MailJob]) -> Iterator[None]:
    """Within the block (this thread), mail to queue is appended to ``jobs`` instead of being
    composed and queued; the caller passes each job's :func:`compose_job` result to :func:`finish_job`."""
    outer = getattr(_collector, "jobs", None)
    _collector.jobs = jobs
    try:
        yield
    finally:
        _collector.jobs = outer


def queue_sends(svc: Services, ticket: Ticket, sends: list[Send], occasion: Occasion) -> int:
    """Queue every Send for ``ticket``; returns how many mails were queued now (0 on a repeat)
    or, while :func:`collecting`, will be."""
    queued = 0
    for send in sends:
        for person in recipients(send, ticket, occasion, svc):
            queued += _queue_one(svc, ticket, send, person, occasion)
    return queued


def _queue_one(svc: Services, ticket: Ticket, send: Send, person: Recipient, occasion: Occasion) -> int:
    out_id = hashlib.sha256(f"{occasion.key}:{send.template}:{person.addr}".encode()).hexdigest()[:24]
    mid = make_message_id(ticket.id, ticket.token, out_id, svc.config.helpdesk.message_id_domain)
    job = MailJob(out_id, mid, ticket, send, person, occasion, svc.clock())
    if svc.outbox.state_of(out_id) is not None:
        _record_queued(svc, job)
        return 0
    collected = getattr(_collector, "jobs", None)
    if collected is not None:
        before_enqueue(svc, person.addr, out_id, send.kind)
        collected.append(job)
        return 1
    return finish_job(svc, job, compose_job(svc.config, svc.templates, job))


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
    """:func:`compose_job`, then into ``outbox/new`` (the caller has checked it is not queued yet)."""
    result = compose_job(config, templates, job)
    if isinstance(result, Unsendable):
        return result
    return Queued(outbox.put_new(job.out_id, _envelope(config, job), result))


def finish_job(svc: Services, job: MailJob, result: bytes | Queued | Unsendable, *, counted: bool = False) -> int:
    """Queue a composed mail (unless ``result`` says it is queued already) and record it in the
    ticket's history, or note there why it could not be written; 1 if queued now. ``counted``: the
    job was counted for the rate limits when it was collected."""
    ticket, send, person = job.ticket, job.send, job.person
    if isinstance(result, Unsendable):
        event_once(svc, ticket.id, {"type": "note", "ref": f"unsendable:{job.out_id}", "by": "helpdeskd",
                                    "text": f"{send.template} not sent to {person.addr}: {result.reason}"})
        return 0
    if isinstance(result, Queued):
        queued = result.created
    else:
        if not counted:
            before_enqueue(svc, person.addr, job.out_id, send.kind)
        queued = svc.outbox.put_new(job.out_id, _envelope(svc.config, job), result)
    _record_queued(svc, job)
    return int(queued)


def _envelope(config: Config, job: MailJob) -> dict:
    send = job.send
    return {"from": config.helpdesk.address if send.kind == "relay" else "", "to": [job.person.addr],
            "ticket": job.ticket.id, "template": send.template, "kind": send.kind, "message_id": job.message_id}


def _record_queued(svc: Services, job: MailJob) -> None:
    event_once(svc, job.ticket.id, {"type": "reply_queued", "ref": job.out_id, "template": job.send.template,
                                    "to": job.person.addr, "kind": job.send.kind, "message_id": job.message_id,
                                    "language": job.person.language})


def recent_autoreplies(addrs: list[str], svc: Services) -> tuple[dict[str, int], int]:
    """Counts for the rate limits: per address within its window, and in all within the global one."""
    now, limits = svc.clock().timestamp(), svc.config.autoreply
    per = {a: svc.sent.count(a, now - limits.per_recipient_window_seconds) for a in addrs if a}
    return per, svc.sent.count_all(now - limits.global_window_seconds)


def before_enqueue(svc: Services, addr: str, out_id: str, kind: str) -> None:
    """Count an automatic answer for the rate limits, before it is queued (a crash then over-counts
    by one, never under-counts; doing the work again does not count it twice). Staff notices and
    relayed answers go to our own people or are human mail: they are not rate-limited."""
    if kind != "auto-reply":
        return
    limits = svc.config.autoreply
    horizon = max(limits.per_recipient_window_seconds, limits.global_window_seconds)
    svc.sent.record(addr, out_id, svc.clock().timestamp(), horizon)


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


def queue_refusal(svc: Services, template: str, occasion: Occasion, subject: str, reason: str, code: str) -> bool:
    """The answer to mail that did not become a ticket (no ticket to record it on). True if queued now."""
    lang = occasion.language
    return queue_ticketless(svc, template, occasion, refusal_context(svc.config, lang, subject, reason, code))


def queue_ticketless(svc: Services, template: str, occasion: Occasion, context: dict) -> bool:
    """An automatic answer to the sender that belongs to no ticket (a refusal, "my tickets", a
    confirmation code), rendered with ``context``; queued once per occasion. True if queued now."""
    out_id = hashlib.sha256(f"{occasion.key}:{template}".encode()).hexdigest()[:24]
    if not occasion.sender or svc.outbox.state_of(out_id) is not None:
        return False
    hd = svc.config.helpdesk
    rendered = svc.templates.render(template, occasion.language, None, context)
    mid = make_message_id(0, "refused", out_id, hd.message_id_domain)
    data = compose(
        rendered, from_name=hd.name, from_addr=hd.address, to_name=occasion.sender_name, to_addr=occasion.sender,
        message_id=mid, in_reply_to=occasion.in_reply_to,
        references=tuple(r for r in (*occasion.references, occasion.in_reply_to) if r), date=svc.clock(),
    )
    envelope = {"from": "", "to": [occasion.sender], "ticket": None, "template": template, "kind": "auto-reply",
                "message_id": mid}
    before_enqueue(svc, occasion.sender, out_id, "auto-reply")
    return svc.outbox.put_new(out_id, envelope, data)
