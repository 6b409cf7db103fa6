"""One message's path through helpdeskd, in the order of its side effects.

    parse → (already decided?) → gather view → decide → record the decision (claim)
          → file into the ticket → queue the answer → the source may now forget the message

The claim (``index/keys/<key>``) is written before anything else changes, and holds everything needed
to finish the work: a crash at any later point is repaired by filing the same bytes again, which
re-applies the recorded decision. Each step checks whether it already happened, so re-filing never
creates a second ticket, a second history entry, or a second answer.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

from .actions import Decision, FollowUp, Ignore, NewTicket, Refuse
from .decide import View, decide, recipients_of_interest, wanted_ticket_ids
from .errors import TransientError
from .matching import make_message_id, render_tag, tagged_ids
from .message import Inbound, Message
from .outmail import compose
from .parse import parse
from .settings import Config, Mailbox
from .store.holding import Holding
from .store.lock import WRITE, StateLock
from .store.outbox import Outbox
from .store.sentlog import SentLog
from .store.tickets import TicketStore
from .templates import Rendered, Templates, context_for, refusal_context
from .ticket import Requester, Status, Ticket

TEXT_IN_HISTORY = 100_000  # characters of body text kept in events.jsonl (the raw mail is always whole)


@dataclass
class Services:
    """The adapters one filing needs; the daemon and the commands build one and pass it in."""

    config: Config
    store: TicketStore
    outbox: Outbox
    quarantine: Holding
    refused: Holding
    templates: Templates
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    sent: SentLog | None = None  # automatic messages queued recently (rate limits); made from state_dir

    def __post_init__(self) -> None:
        if self.sent is None:
            self.sent = SentLog(self.config.helpdesk.state_dir)

    @classmethod
    def open(cls, config: Config, templates: Templates) -> "Services":
        state = config.helpdesk.state_dir
        return cls(config, TicketStore(state), Outbox(state), Holding(state, "quarantine"),
                   Holding(state, "refused"), templates)

    def write_lock(self, wait_seconds: float = 30.0) -> StateLock:
        """The store's write lock, taken around each change (see :mod:`helpdeskd.store.lock`)."""
        return StateLock(self.config.helpdesk.state_dir, WRITE).acquire(wait_seconds)

    def now(self) -> str:
        return self.clock().isoformat(timespec="seconds")


@dataclass(frozen=True)
class Outcome:
    action: str  # new | followup | reopened | duplicate | ignored | refused | quarantined
    ticket: int | None
    message_id: str
    reply: str | None = None
    detail: str = ""


def file_safely(inbound: Inbound, svc: Services, mailbox: Mailbox | None = None) -> Outcome:
    """File one message; anything that goes wrong except a transient failure lands it in quarantine.

    This is the one catch-all of the pipeline. A TransientError (disk full, lock busy) propagates:
    the source then keeps the message and offers it again later.
    """
    try:
        return file_message(inbound, svc, mailbox)
    except TransientError:
        raise
    except OSError as exc:
        raise TransientError(f"storage failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the per-message boundary: never lose the mail, keep going
        return quarantine(inbound, svc, f"{type(exc).__name__}: {exc}")


def quarantine(inbound: Inbound, svc: Services, reason: str) -> Outcome:
    item_id = hashlib.sha256(inbound.raw).hexdigest()[:32]
    try:
        if not svc.quarantine.has(item_id):
            svc.quarantine.put(item_id, inbound.raw, reason, f"{inbound.source}:{inbound.upstream_id}")
    except OSError as exc:
        raise TransientError(f"could not quarantine message: {exc}") from exc
    return Outcome("quarantined", None, "", detail=f"{reason} (quarantine id {item_id})")


def file_message(inbound: Inbound, svc: Services, mailbox: Mailbox | None = None) -> Outcome:
    """Parse, decide (once) and apply. Idempotent for the same bytes."""
    message = parse(inbound.raw, svc.config.limits)
    claim = svc.store.read_claim(message.key)
    if claim is not None:
        return _apply(message, inbound, claim, svc, again=True)
    decision = decide(message, gather_view(message, svc, mailbox), svc.config)
    if isinstance(decision.action, Ignore):
        return Outcome("ignored", None, message.message_id, detail=decision.action.reason)
    claim = _claim(message, decision, svc)
    svc.store.write_claim(message.key, claim)
    return _apply(message, inbound, claim, svc, again=False)


def gather_view(message: Message, svc: Services, mailbox: Mailbox | None) -> View:
    """Load the tickets the message refers to, and what the Message-ID index knows about it."""
    store = svc.store
    hints = [t for t in (store.find_by_message_id(m) for m in (*message.in_reply_to, *message.references)) if t]
    wanted = dict.fromkeys([*wanted_ticket_ids(message, svc.config), *hints])
    tickets = {tid: t for tid in wanted if (t := store.get(tid)) is not None}
    duplicate_of = store.find_by_message_id(message.message_id)
    sent_to, sent_in_all = _recent_autoreplies(recipients_of_interest(message, tickets), svc)
    return View(tickets, tuple(dict.fromkeys(hints)), duplicate_of, mailbox, sent_to, sent_in_all)


def _recent_autoreplies(addrs: list[str], svc: Services) -> tuple[dict[str, int], int]:
    """Counts for the rate limits: per address within its window, and in all within the global one."""
    now, limits = svc.clock().timestamp(), svc.config.autoreply
    per = {a: svc.sent.count(a, now - limits.per_recipient_window_seconds) for a in addrs if a}
    return per, svc.sent.count_all(now - limits.global_window_seconds)


def _note_sent(svc: Services, addr: str, out_id: str) -> None:
    """Count one automatic message for the rate limits, before it is queued (a crash then over-counts
    by one, never under-counts; re-filing does not count it twice)."""
    limits = svc.config.autoreply
    horizon = max(limits.per_recipient_window_seconds, limits.global_window_seconds)
    svc.sent.record(addr, out_id, svc.clock().timestamp(), horizon)


def _claim(message: Message, decision: Decision, svc: Services) -> dict:
    """The durable record of a decision; everything :func:`_apply` needs to finish it after a crash."""
    action = decision.action
    claim = {"reply": decision.reply, "lang": decision.language, "notes": list(decision.notes)}
    if isinstance(action, NewTicket):
        claim.update(action="new", ticket=svc.store.allocate_id(), new=asdict(action), token=secrets.token_hex(16))
    elif isinstance(action, FollowUp):
        claim.update(action="followup", ticket=action.ticket_id, reopen=action.reopen)
    elif isinstance(action, Refuse):
        claim.update(action="refused", ticket=None, reason=action.reason, code=action.code)
    return claim


def _apply(message: Message, inbound: Inbound, claim: dict, svc: Services, *, again: bool) -> Outcome:
    kind = claim["action"]
    if kind == "refused":
        return _refuse(message, inbound, claim, svc, again)
    ticket = _create(claim, svc, inbound.source) if kind == "new" else svc.store.get(claim["ticket"])
    if ticket is None:
        raise LookupError(f"ticket #{claim['ticket']} recorded for this message no longer exists")
    ticket, added = _add_mail(ticket, message, inbound.raw, claim, svc)
    for note in claim["notes"]:
        _event_once(svc, ticket.id, {"type": "note", "ref": message.key, "text": note, "by": "helpdeskd"})
    reply = _reply(ticket, message, claim, svc)
    action = "reopened" if claim.get("reopen") else ("new" if kind == "new" else "followup")
    if again and not added and not reply:
        action = "duplicate"
    return Outcome(action, ticket.id, message.message_id, claim["reply"], "; ".join(claim["notes"]))


def _create(claim: dict, svc: Services, source: str) -> Ticket:
    existing = svc.store.get(claim["ticket"])
    if existing is not None:
        return existing
    new, now = claim["new"], svc.now()
    ticket = Ticket(
        id=claim["ticket"], subject=new["subject"], status=Status.NEW, queue=new["queue"],
        priority=new["priority"], category=new["category"], requester=Requester(**new["requester"]),
        created=now, updated=now, token=claim["token"], source=source,
    )
    svc.store.save(ticket)
    _event_once(svc, ticket.id, {"type": "created", "ref": "created", "queue": ticket.queue,
                                 "priority": ticket.priority, "category": ticket.category})
    return ticket


def _add_mail(ticket: Ticket, message: Message, raw: bytes, claim: dict, svc: Services) -> tuple[Ticket, bool]:
    """Store the raw mail, its history entry, and the ticket's new state; skip what is already there."""
    if ticket.has_key(message.key):
        return ticket, False
    name = svc.store.store_mail(ticket, message.key, raw)
    _event_once(svc, ticket.id, _message_event(message, name))
    status = ticket.status
    if claim.get("reopen") and status == Status.CLOSED:
        status = Status.REOPENED
        _event_once(svc, ticket.id, {"type": "status", "ref": f"reopen:{message.key}", "from": "closed",
                                     "to": "reopened", "by": message.sender.addr if message.sender else ""})
    ids = ticket.message_ids + ((message.message_id,) if message.message_id else ())
    ticket = ticket.with_changes(
        status=status, updated=svc.now(), message_ids=ids, message_keys=ticket.message_keys + (message.key,),
        mail_count=ticket.mail_count + 1,
    )
    svc.store.save(ticket)
    svc.store.index_message_id(message.message_id, ticket.id)
    return ticket, True


def _message_event(message: Message, file_name: str) -> dict:
    sender = message.sender
    return {
        "type": "message", "ref": message.key, "file": file_name, "direction": "in",
        "from": sender.addr if sender else "", "from_name": sender.name if sender else "",
        "message_id": message.message_id, "subject": message.subject,
        "text": message.text[:TEXT_IN_HISTORY], "html_only": message.html,
        "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                         "storage_name": a.storage_name} for a in message.attachments],
        "defects": list(message.defects),
    }


def _event_once(svc: Services, ticket_id: int, event: dict) -> None:
    if not svc.store.has_event(ticket_id, event["type"], event["ref"]):
        svc.store.append_event(ticket_id, event)


def _reply(ticket: Ticket, message: Message, claim: dict, svc: Services) -> bool:
    """Queue the decided answer once. Returns True when it was queued now."""
    template = claim["reply"]
    if not template or ticket.requester.addr == "":
        return False
    out_id = hashlib.sha256(f"{message.key}:{template}".encode()).hexdigest()[:24]
    if svc.outbox.state_of(out_id) is not None:
        return False
    lang = claim["lang"]
    rendered = svc.templates.render(template, lang, ticket.queue, context_for(ticket, svc.config, lang))
    mid = make_message_id(ticket.id, ticket.token, out_id, svc.config.helpdesk.message_id_domain)
    rendered = _with_tag(rendered, svc.config, ticket.id)
    data = _compose(rendered, ticket.requester.name, ticket.requester.addr, mid, message, svc)
    envelope = {"from": "", "to": [ticket.requester.addr], "ticket": ticket.id, "template": template,
                "kind": "auto-reply", "message_id": mid}
    _note_sent(svc, ticket.requester.addr, out_id)
    queued = svc.outbox.enqueue(out_id, envelope, data)
    _event_once(svc, ticket.id, {"type": "reply_queued", "ref": out_id, "template": template,
                                 "to": ticket.requester.addr, "message_id": mid, "language": lang})
    return queued


def _refuse(message: Message, inbound: Inbound, claim: dict, svc: Services, again: bool) -> Outcome:
    kept = svc.refused.has(message.key)
    if not kept:
        svc.refused.put(message.key, inbound.raw, claim["reason"], f"{inbound.source}:{inbound.upstream_id}")
    queued = False
    sender = message.sender
    if claim["reply"] and sender is not None:
        out_id = hashlib.sha256(f"{message.key}:{claim['reply']}".encode()).hexdigest()[:24]
        if svc.outbox.state_of(out_id) is None:
            lang = claim["lang"]
            context = refusal_context(svc.config, lang, message.subject, claim["reason"], claim.get("code", ""))
            rendered = svc.templates.render(claim["reply"], lang, None, context)
            mid = make_message_id(0, "refused", out_id, svc.config.helpdesk.message_id_domain)
            data = _compose(rendered, sender.name, sender.addr, mid, message, svc)
            envelope = {"from": "", "to": [sender.addr], "ticket": None, "template": claim["reply"],
                        "kind": "auto-reply", "message_id": mid}
            _note_sent(svc, sender.addr, out_id)
            queued = svc.outbox.enqueue(out_id, envelope, data)
    action = "duplicate" if again and kept and not queued else "refused"
    return Outcome(action, None, message.message_id, claim["reply"], claim["reason"])


def _with_tag(rendered: Rendered, config: Config, ticket_id: int) -> Rendered:
    """Make sure the subject carries our tag, whatever the template says: replies must find their ticket."""
    if ticket_id in tagged_ids(rendered.subject, config.helpdesk.subject_tag):
        return rendered
    return replace(rendered, subject=f"{render_tag(config.helpdesk.subject_tag, ticket_id)} {rendered.subject}")


def _compose(rendered: Rendered, to_name: str, to_addr: str, mid: str, message: Message, svc: Services) -> bytes:
    hd = svc.config.helpdesk
    refs = (*message.references, message.message_id) if message.message_id else message.references
    return compose(
        rendered, from_name=hd.name, from_addr=hd.address, to_name=to_name, to_addr=to_addr,
        message_id=mid, in_reply_to=message.message_id, references=tuple(refs), date=svc.clock(),
    )
