"""Turning a decision's Sends into queued mail: one message per recipient, each queued exactly once.

Used by the cycle (mail that came in) and by ``helpdeskctl`` (answers typed at the command line).
Outbox ids derive from the occasion's key, the template and the recipient, so doing the same work
twice — after a crash — queues nothing twice, and each queued mail is recorded once in the history.

Each mail is a :class:`~helpdeskd.mailjob.MailJob` (plain values, see :mod:`helpdeskd.mailjob`):
composed, then queued and recorded by :func:`finish_job`, one after the other — unless the caller
collects the jobs (:func:`collecting`) to have them composed, and perhaps put in the outbox,
elsewhere (the POP3 gateway's helper process), and finishes them later, before its batch counts as
filed. A collected job is counted for the rate limits when it is collected: a crash before it is
finished, or a mail that turns out unwritable, over-counts by one, never under-counts.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .actions import PARTICIPANTS, REQUESTER, SENDER, STAFF, Send
from .mailjob import MailJob, Occasion, Queued, Recipient, Unsendable, compose_job, envelope
from .matching import make_message_id
from .outmail import compose
from .services import Services, event_once
from .templates import refusal_context
from .ticket import Ticket

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


_collector = threading.local()


@contextmanager
def collecting(jobs: list[MailJob], earlier: frozenset[str] = frozenset()) -> Iterator[None]:
    """Within the block (this thread), mail to queue is appended to ``jobs`` instead of being
    composed and queued; the caller passes each job's :func:`compose_job` result to :func:`finish_job`.
    ``earlier``: outbox ids of jobs collected before and not finished yet (the batch before's): asked
    for again, by another copy of the same message, they are not collected twice."""
    outer = getattr(_collector, "jobs", None), getattr(_collector, "seen", set())
    _collector.jobs, _collector.seen = jobs, {*earlier, *(job.out_id for job in jobs)}  # (a set: looked up per mail)
    try:
        yield
    finally:
        _collector.jobs, _collector.seen = outer


def queue_sends(svc: Services, ticket: Ticket, sends: list[Send], occasion: Occasion, *,
                fresh: bool = False) -> list[Send]:
    """Queue every Send for ``ticket``; returns the Send of each mail queued now (none on a repeat)
    or, while :func:`collecting`, to be queued. ``fresh``: the occasion's decision was recorded just
    now, for the first time (see :func:`_queue_one`)."""
    return [send for send in sends for person in recipients(send, ticket, occasion, svc)
            if _queue_one(svc, ticket, send, person, occasion, fresh)]


def _queue_one(svc: Services, ticket: Ticket, send: Send, person: Recipient, occasion: Occasion,
               fresh: bool = False) -> int:
    out_id = hashlib.sha256(f"{occasion.key}:{send.template}:{person.addr}".encode()).hexdigest()[:24]
    mid = make_message_id(ticket.id, ticket.token, out_id, svc.config.helpdesk.message_id_domain)
    job = MailJob(out_id, mid, ticket, send, person, occasion, svc.clock())
    collected = getattr(_collector, "jobs", None)
    # A fresh decision comes before any mail for its occasion, so the outbox has none to find — but
    # a power failure may keep queued mail and lose the decision. A collected job is looked up again
    # (in every state) right before it is written, so the lookup here is only needed when it decides
    # something: for a job written now, and for an occasion filed before.
    state = None if fresh and collected is not None else svc.outbox.state_of(out_id)
    if state is not None:
        _cover(svc, out_id, state)
        _record_queued(svc, job)
        return 0
    if collected is not None:
        if out_id in _collector.seen:
            return 0  # asked for already (another copy of the same message): queued once
        before_enqueue(svc, person.addr, out_id, send.kind, hold=True)  # (see the caller's SentLog.flush)
        collected.append(job)
        _collector.seen.add(out_id)
        return 1
    return finish_job(svc, job, compose_job(svc.config, svc.templates, job))


def finish_job(svc: Services, job: MailJob, result: bytes | Queued | Unsendable, *, counted: bool = False) -> int:
    """Queue a composed mail (unless ``result`` says it is queued already) and record it in the
    ticket's history, or note there why it could not be written; 1 if queued now. ``counted``: the
    job was counted for the rate limits when it was collected."""
    ticket, send, person = job.ticket, job.send, job.person
    if isinstance(result, Unsendable):
        event_once(svc, ticket.id, {"type": "note", "ref": f"unsendable:{job.out_id}", "by": "helpdeskd",
                                    "text": f"{send.template} not sent to {person.addr}: {result.reason}"})
        return 0
    if isinstance(result, Queued):  # written by another process (the helper)
        queued = result.created
    elif counted:  # collected a while ago: meanwhile it may have been queued (and even sent) elsewhere
        queued = svc.outbox.enqueue(job.out_id, envelope(svc.config, job), result)
    else:  # state_of was checked just now, under the write lock
        before_enqueue(svc, person.addr, job.out_id, send.kind)
        queued = svc.outbox.put_new(job.out_id, envelope(svc.config, job), result)
    if isinstance(result, Queued) or not queued:  # not written by this process just now
        _cover(svc, job.out_id, "new" if queued else svc.outbox.state_of(job.out_id))
    _record_queued(svc, job)
    return int(queued)


def _cover(svc: Services, out_id: str, state: str | None) -> None:
    """Mail this process did not just write — the helper's, or found queued when filing again after
    a crash, perhaps written by a helper whose batch never completed: if it waits in ``outbox/new``
    (its ``state``, as just looked up), the current group commit must cover it, or its batch could be
    deleted upstream first."""
    if state == "new":
        svc.outbox.sync.written_elsewhere(svc.outbox.name(out_id, "new"))


def _record_queued(svc: Services, job: MailJob) -> None:
    event_once(svc, job.ticket.id, {"type": "reply_queued", "ref": job.out_id, "template": job.send.template,
                                    "to": job.person.addr, "kind": job.send.kind, "message_id": job.message_id,
                                    "language": job.person.language})


def recent_autoreplies(addrs: list[str], svc: Services) -> tuple[dict[str, int], int]:
    """Counts for the rate limits: per address within its window, and in all within the global one."""
    now, limits = svc.clock().timestamp(), svc.config.autoreply
    return svc.sent.counts([a for a in addrs if a], now - limits.per_recipient_window_seconds,
                           now - limits.global_window_seconds)


def before_enqueue(svc: Services, addr: str, out_id: str, kind: str, *, hold: bool = False) -> None:
    """Count an automatic answer for the rate limits, before it is queued (a crash then over-counts
    by one, never under-counts; doing the work again does not count it twice). Staff notices and
    relayed answers go to our own people or are human mail: they are not rate-limited. ``hold``:
    for collected mail, written later by the helper; its caller flushes the log before that
    (``SentLog.flush``), so the count is on disk before the mail is."""
    if kind != "auto-reply":
        return
    limits = svc.config.autoreply
    horizon = max(limits.per_recipient_window_seconds, limits.global_window_seconds)
    svc.sent.record(addr, out_id, svc.clock().timestamp(), horizon, hold=hold)


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
