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
from dataclasses import dataclass

from .actions import (Change, ConfirmIdentity, Decision, FollowUp, Hold, Ignore, NewTicket, Refuse, Send, StatusReport,
                      reply_template)
from .commands import read_commands
from .decide import View, decide, recipients_of_interest, strip_imitations, wanted_ticket_ids
from .errors import TransientError
from .identity import code_candidates, code_key
from .mailjob import Occasion
from .mailout import queue_refusal, queue_sends, recent_autoreplies
from .message import Inbound, Message
from .parse import message_key, parse
from .quotes import new_text
from .services import Services, event_once
from .settings import Mailbox
from .statusops import apply_status, status_claim
from .ticket import Requester, Status, Ticket
from .ticketops import apply_changes

TEXT_IN_HISTORY = 100_000  # characters of body text kept in events.jsonl (the raw mail is always whole)

__all__ = ["Outcome", "Services", "file_message", "file_safely", "gather_view", "quarantine"]


@dataclass(frozen=True)
class Outcome:
    action: str  # new | followup | reopened | staff_answer | note | rejected | duplicate | ignored | refused | quarantined
    #              | held | status (the list of tickets sent) | confirm (a confirmation code sent)
    ticket: int | None
    message_id: str
    reply: str | None = None
    detail: str = ""


def file_safely(inbound: Inbound, svc: Services, mailbox: Mailbox | None = None, *,
                released: bool = False, parsed: Message | None = None) -> Outcome:
    """File one message; anything that goes wrong except a transient failure lands it in quarantine.

    This is the one catch-all of the pipeline. A TransientError (disk full, lock busy) propagates:
    the source then keeps the message and offers it again later.
    """
    try:
        return file_message(inbound, svc, mailbox, released=released, parsed=parsed)
    except TransientError:
        raise
    except OSError as exc:
        raise TransientError(f"storage failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the per-message boundary: never lose the mail, keep going
        return quarantine(inbound, svc, f"{type(exc).__name__}: {exc}")


def quarantine(inbound: Inbound, svc: Services, reason: str) -> Outcome:
    item_id = hashlib.sha256(inbound.raw).hexdigest()[:32]
    try:
        svc.quarantine.put(item_id, inbound.raw, reason, f"{inbound.source}:{inbound.upstream_id}")
    except OSError as exc:
        raise TransientError(f"could not quarantine message: {exc}") from exc
    return Outcome("quarantined", None, "", detail=f"{reason} (quarantine id {item_id})")


def file_message(inbound: Inbound, svc: Services, mailbox: Mailbox | None = None, *,
                 released: bool = False, parsed: Message | None = None) -> Outcome:
    """Parse, decide (once) and apply. Idempotent for the same bytes.

    ``released``: an admin let this message out of ``held/``; its "held" decision is replaced by a
    new one that skips the unknown-sender policy (any other recorded decision still stands).
    ``parsed``: what ``strip_imitations(parse(inbound.raw))`` gives, computed ahead by the caller
    (the helper process, see :mod:`helpdeskd.helper`).
    """
    message = parsed or strip_imitations(parse(inbound.raw, svc.config.limits))
    with svc.store.unit():
        return _decide_and_apply(message, inbound, svc, mailbox, released)


def _decide_and_apply(message: Message, inbound: Inbound, svc: Services, mailbox: Mailbox | None,
                      released: bool) -> Outcome:
    claim = svc.store.read_claim(message.key)
    if claim is not None and not (released and claim["action"] == "held"):
        return _apply(message, inbound, claim, svc, again=True)
    view = gather_view(message, svc, mailbox, released)
    decision = decide(message, view, svc.config)
    if isinstance(decision.action, Ignore):
        return Outcome("ignored", None, message.message_id, detail=decision.action.reason)
    claim = _claim(message, decision, svc)
    svc.store.write_claim(message.key, claim)
    if claim.get("ticket"):  # known now: another copy of this Message-ID is a duplicate from here on
        svc.store.index_message_id(message.message_id, claim["ticket"], claim_key=message.key)
    return _apply(message, inbound, claim, svc, again=False, known=view.tickets.get(claim.get("ticket")))


def gather_view(message: Message, svc: Services, mailbox: Mailbox | None, released: bool = False) -> View:
    """Load the tickets the message refers to, what the Message-ID index knows about it, and the
    confirmation codes it quotes ("my tickets" by email)."""
    store = svc.store
    hints = [t for t in (store.find_by_message_id(m) for m in (*message.in_reply_to, *message.references)) if t]
    wanted = dict.fromkeys([*wanted_ticket_ids(message, svc.config), *hints])
    tickets = {tid: t for tid in wanted if (t := store.get(tid)) is not None}
    duplicate_of = _filed_copy(message, store.find_by_message_id(message.message_id), svc)
    sent_to, sent_in_all = recent_autoreplies(recipients_of_interest(message), svc)
    return View(tickets, tuple(dict.fromkeys(hints)), duplicate_of, mailbox, sent_to, sent_in_all,
                confirmations=_quoted_codes(message, svc), now=svc.clock().timestamp(), released=released)


def _filed_copy(message: Message, ticket_id: int | None, svc: Services) -> int | None:
    """The ticket already holding *this* message: same Message-ID, sender and text (another relay's
    copy). A different message that reuses the Message-ID (scripts with a fixed one, or someone quoting
    a known id) is not a duplicate: it is decided on its own and never joins that ticket by its id."""
    if ticket_id is None:
        return None
    sender = message.sender.addr if message.sender else ""
    seen = False
    for event in svc.store.events(ticket_id):
        if event.get("type") == "message" and event.get("message_id") == message.message_id:
            seen = True
            if event.get("from") == sender and event.get("text") == message.text[:TEXT_IN_HISTORY]:
                return ticket_id
    # Indexed but not on the ticket yet: its first copy was claimed and is still being filed (a crash
    # interrupted it; the source offers it again). This copy is a duplicate of that one.
    return None if seen else ticket_id


def _quoted_codes(message: Message, svc: Services) -> dict:
    """The stored confirmation codes among the code-shaped words of the message, by code_key."""
    keys = (code_key(code) for code in code_candidates(message))
    return {key: found for key in keys if (found := svc.confirmations.get(key)) is not None}


def _claim(message: Message, decision: Decision, svc: Services) -> dict:
    """The durable record of a decision; everything :func:`_apply` needs to finish it after a crash."""
    action = decision.action
    claim = {"lang": decision.language, "notes": list(decision.notes),
             "sends": [[s.template, s.to, s.kind] for s in decision.sends]}
    if isinstance(action, NewTicket):
        claim.update(action="new", ticket=svc.store.allocate_id(), new=_plain(action), token=secrets.token_hex(16))
    elif isinstance(action, FollowUp):
        claim.update(action="followup", ticket=action.ticket_id, role=action.role, reopen=action.reopen,
                     changes=[[c.field, c.value] for c in action.changes], relay=action.relay,
                     internal=action.internal, errors=list(action.errors))
    elif isinstance(action, Refuse):
        claim.update(action="refused", ticket=None, reason=action.reason, code=action.code)
    elif isinstance(action, Hold):
        claim.update(action="held", ticket=None, reason=action.reason, code=action.code)
    elif isinstance(action, (StatusReport, ConfirmIdentity)):
        claim.update(status_claim(action, svc))
    return claim


def _plain(action: NewTicket) -> dict:
    """``dataclasses.asdict(action)`` for its flat shape (only ``requester`` nests), at a 25th of the cost."""
    return {**vars(action), "requester": dict(vars(action.requester))}


def _apply(message: Message, inbound: Inbound, claim: dict, svc: Services, *, again: bool,
           known: Ticket | None = None) -> Outcome:
    """Carry out a recorded decision. ``known``: the ticket as the view just read it (under the same
    lock, so still current), to save reading it again."""
    sends = [Send(*s) for s in claim.get("sends", ())]
    if claim["action"] == "refused":
        return _refuse(message, inbound, claim, sends, svc, again)
    if claim["action"] == "held":
        return _hold(message, inbound, claim, svc, again)
    if claim["action"] in ("status", "confirm"):
        reply, queued, detail = apply_status(message, claim, svc)
        action = "duplicate" if again and not queued else claim["action"]
        return Outcome(action, None, message.message_id, None if action == "duplicate" else reply,
                       "; ".join([detail, *claim["notes"]]))
    if claim["action"] == "new":
        ticket = _create(claim, svc, inbound.source, fresh=not again)
    else:
        ticket = known or svc.store.get(claim["ticket"])
    if ticket is None:
        raise LookupError(f"ticket #{claim['ticket']} recorded for this message no longer exists")
    words = own_words(message, claim)
    ticket, added, restored = _file(ticket, message, inbound.raw, claim, words, svc)
    for number, note in enumerate(claim["notes"]):  # (the first one's ref as older versions wrote it)
        ref = f"{message.key}:{number}" if number else message.key
        event_once(svc, ticket.id, {"type": "note", "ref": ref, "text": note, "by": "helpdeskd"})
    queued = queue_sends(svc, ticket, sends, _occasion(message, claim, words, ticket.escalated), fresh=not again)
    action = _outcome_name(claim)
    if again and not added and not queued:
        action = "duplicate"
    reply = None if action == "duplicate" else reply_template(queued)  # the sender's answer, if queued now
    detail = "; ".join([*claim["notes"], *claim.get("errors", ()), *restored])
    return Outcome(action, ticket.id, message.message_id, reply, detail)


def _outcome_name(claim: dict) -> str:
    if claim["action"] == "new":
        return "new"
    if claim.get("errors"):
        return "rejected"
    if claim.get("role") == "staff":
        return "staff_answer" if claim.get("relay") else "note"
    return "reopened" if claim.get("reopen") else "followup"


def _create(claim: dict, svc: Services, source: str, fresh: bool) -> Ticket:
    """The ticket a "new" claim made; ``fresh``: the claim was made just now, under the same lock,
    for an id whose folder did not exist (else the ticket may be there already: a re-run)."""
    existing = None if fresh else svc.store.get(claim["ticket"])
    if existing is not None:
        return existing
    new, now = claim["new"], svc.now()
    ticket = Ticket(
        id=claim["ticket"], subject=new["subject"], status=Status.NEW, queue=new["queue"],
        priority=new["priority"], category=new["category"], requester=Requester(**new["requester"]),
        created=now, updated=now, token=claim["token"], source=source,
        collaborators=tuple(new.get("collaborators", ())), linked=tuple(new.get("linked", ())),
        origin_role=new.get("role", ""), origin_domain=new.get("domain", ""), origin_reseller=new.get("reseller", ""),
    )
    # Saved by _file together with its first message: one metadata write instead of two.
    event_once(svc, ticket.id, _created_event(ticket))
    return ticket


def _created_event(ticket: Ticket) -> dict:
    return {"type": "created", "ref": "created", "queue": ticket.queue, "priority": ticket.priority,
            "category": ticket.category, "linked": list(ticket.linked), "collaborators": list(ticket.collaborators)}


def _file(ticket: Ticket, message: Message, raw: bytes, claim: dict, words: str,
          svc: Services) -> tuple[Ticket, bool, list[str]]:
    """Store the raw mail, its history entry, the changes it brings, and the ticket's new state once.
    Returns the ticket, whether the message was added now, and what of it was restored (see
    :func:`_restore`)."""
    if ticket.has_key(message.key):
        restored = _restore(ticket, message, raw, claim, words, svc)
        svc.store.index_message_id(message.message_id, ticket.id, message.key)  # a crash may have come first
        return ticket, False, restored
    name = svc.store.store_mail(ticket, message.key, raw)
    event_once(svc, ticket.id, _message_event(message, name, claim, words))
    by = message.sender.addr if message.sender else ""
    changes = [Change(f, v) for f, v in claim.get("changes", ())]
    if claim.get("reopen") and ticket.status == Status.CLOSED:
        changes.insert(0, Change("status", "reopened"))
    ticket = apply_changes(ticket, changes, by, message.key, svc)
    ids = ticket.message_ids + ((message.message_id,) if message.message_id else ())
    ticket = ticket.with_changes(
        updated=svc.now(), message_ids=ids, message_keys=ticket.message_keys + (message.key,),
        mail_count=ticket.mail_count + 1,
    )
    svc.store.save(ticket)
    svc.store.index_message_id(message.message_id, ticket.id, message.key)
    return ticket, True, []


def _restore(ticket: Ticket, message: Message, raw: bytes, claim: dict, words: str, svc: Services) -> list[str]:
    """The metadata lists the message as filed. Without a journal, a power failure before the group
    commit may have kept it and lost (or cut short) what was written just before it — the raw mail,
    the history — since nothing within a commit is ordered: put back what is missing, each once.
    (Not on the hot path: only a message filed before comes here.) The ticket's "created" entry (with
    its first message, whatever the claim — fsck may have rebuilt it) and the message's own are
    written again; the changes it made stand in the metadata, without their history lines. Returns
    what was put back, for the log."""
    history = svc.store.events(ticket.id)
    recorded = next((e for e in history if e.get("type") == "message" and e.get("ref") == message.key), None)
    # the name it had: as recorded, or by its place among the ticket's messages (numbered as filed)
    number = ticket.message_keys.index(message.key) + 1
    name = str(recorded.get("file", "")) if recorded else f"{number:04d}-{message.key}.eml"
    restored = []
    existing = svc.store.find_mail(ticket.id, message.key)
    if existing is None:
        name = svc.store.store_mail(ticket, message.key, raw, name=name)
        restored.append(f"raw mail {name} restored")
    else:
        name, stored = existing, svc.store.read_mail(ticket.id, existing)
        if stored is None or message_key(message.message_id, stored) != message.key:  # the key digests
            svc.store.replace_mail(ticket.id, name, raw)  # the bytes (up to line ends): these were cut short
            restored.append(f"raw mail {name} restored (it was cut short)")
    if ticket.message_keys[0] == message.key and not any(e.get("type") == "created" for e in history):
        event_once(svc, ticket.id, _created_event(ticket))
        restored.append("history entry 'created' restored")
    if recorded is None:
        event_once(svc, ticket.id, _message_event(message, name, claim, words))
        restored.append("history entry of the message restored")
    return restored


def own_words(message: Message, claim: dict) -> str:
    """What the sender wrote this time: the whole first message; in replies, without the command
    lines, the quoted history and the signature (the raw mail keeps everything)."""
    if claim["action"] == "new":
        return message.text
    return new_text(read_commands(message.subject, message.text).rest)


def _message_event(message: Message, file_name: str, claim: dict, words: str) -> dict:
    """The history entry of a message; ``new_text`` (the sender's new words) only where it is not the
    whole ``text`` (a ticket's first message is, and its text is then kept once)."""
    sender = message.sender
    text, new_text = message.text[:TEXT_IN_HISTORY], words[:TEXT_IN_HISTORY]
    event = {
        "type": "message", "ref": message.key, "file": file_name, "direction": "in",
        "from": sender.addr if sender else "", "from_name": sender.name if sender else "",
        "role": claim.get("role", "requester"), "internal": bool(claim.get("internal")),
        "message_id": message.message_id, "subject": message.subject, "text": text,
        "html_only": message.html, "errors": list(claim.get("errors", ())),
        "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                         "storage_name": a.storage_name} for a in message.attachments],
        "defects": list(message.defects),
    }
    if new_text != text:
        event["new_text"] = new_text
    return event


def _occasion(message: Message, claim: dict, words: str, escalated: str = "") -> Occasion:
    sender = message.sender
    addr, name = (sender.addr, sender.name) if sender else ("", "")
    changes = dict(claim.get("changes", ()))
    return Occasion(
        key=message.key, sender=addr, sender_name=name, language=claim["lang"],
        message={"from": addr, "from_name": name, "subject": message.subject, "text": words,
                 "role": claim.get("role", "requester")},
        in_reply_to=message.message_id, references=message.references,
        extra={"errors": list(claim.get("errors", ())), "reason": changes.get("escalated", escalated)},
    )


def _refuse(message: Message, inbound: Inbound, claim: dict, sends: list[Send], svc: Services,
            again: bool) -> Outcome:
    kept = not svc.refused.put(message.key, inbound.raw, claim["reason"], f"{inbound.source}:{inbound.upstream_id}")
    queued = False
    reply = reply_template(sends)
    if reply:
        occasion = _occasion(message, claim, "")
        queued = queue_refusal(svc, reply, occasion, message.subject, claim["reason"], claim.get("code", ""))
    action = "duplicate" if again and kept and not queued else "refused"
    return Outcome(action, None, message.message_id, None if action == "duplicate" else reply, claim["reason"])


def _hold(message: Message, inbound: Inbound, claim: dict, svc: Services, again: bool) -> Outcome:
    """Keep the message in held/ for an admin (``helpdeskctl held``); nobody is answered."""
    kept = not svc.held.put(message.key, inbound.raw, claim["reason"], f"{inbound.source}:{inbound.upstream_id}")
    action = "duplicate" if again and kept else "held"
    return Outcome(action, None, message.message_id, None, claim["reason"])

