"""What helpdeskd does with one message: a pure function from (message, view, config) to a Decision.

No I/O, no clock, no logging here. The cycle (:mod:`helpdeskd.cycle`) gathers the ``View`` — the
tickets the message points at — applies the Decision, and records it.

Reply security lives in :func:`match_ticket`: a reply joins a ticket only when it carries a token we
issued for it (our signed Message-ID in In-Reply-To/References, or our signed reply address), or when
its sender is the ticket's requester, a collaborator, or staff of its queue AND it names the ticket
(subject tag, token, or threading headers). Anything else starts a new ticket and learns nothing.

Loop safety: whether to answer at all is RFC 3834 (:mod:`helpdeskd.loops`) and then the rate limits,
whose counts the cycle gathers into the View (``sent_to``, ``sent_in_all``) so this stays pure and a
suppression is part of the recorded decision (a note on the ticket), made once per message.

Who may open a ticket (roles, allowed and denied domains, unknown senders) is
:func:`helpdeskd.scopes.submission_refusal`; a new ticket records its sender's role, domain and
reseller. A status request ("my tickets") is not a submission: :func:`helpdeskd.identity.status_decision`
answers it, with the list only for a proven sender (the codes it quotes are gathered into the View).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .actions import (
    ESCALATION, PARTICIPANTS, SENDER, STAFF, Change, Decision, FollowUp, Hold, Ignore, NewTicket, Refuse, Send,
)
from .commands import CC_VERBS, CUSTOMER_COMMANDS, ME_WORDS, STATUS_WORDS, Command, Commands, fold, read_commands
from .identity import Confirmation, status_decision
from .lang import choose_language
from .loops import LOOP_HEADER, can_write_to, is_delivery_report, no_autoreply_reason, rate_limit_reason
from .matching import (
    Reference, our_references, own_reference, plus_references, reported_references, strip_reply_prefixes, tag_pattern,
    tagged_ids, verify,
)
from .message import Message
from .quotes import new_text
from .scopes import Origin, classify, submission_refusal
from .settings import LANGUAGES, Config, Helpdesk, Mailbox
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
    confirmations: Mapping[str, Confirmation] = field(default_factory=dict)  # codes it quotes, by code_key
    now: float = 0.0  # epoch seconds, for the codes' expiry
    released: bool = False  # an admin released it from held/: the unknown-sender policy is settled


def wanted_ticket_ids(message: Message, config: Config) -> list[int]:
    """The ticket numbers the message points at (tokens first, then subject tags): load these."""
    return ticket_ids_for(message, config.helpdesk)


def ticket_ids_for(message: Message, hd: Helpdesk) -> list[int]:
    """:func:`wanted_ticket_ids` under these ``[helpdesk]`` settings; computed once per message and
    settings (the helper process does it ahead of the filing thread)."""
    domain, address, subject_tag = hd.message_id_domain, hd.address, hd.subject_tag
    key = ("ticket_ids", domain, address, subject_tag)  # everything it reads besides the message
    if key not in message.memo:
        refs = [*our_references(message, domain), *plus_references(message, address)]
        own = own_reference(message.message_id, domain)
        ids = [ref.ticket_id for ref in refs] + tagged_ids(message.subject, subject_tag) + ([own.ticket_id] if own else [])
        if is_delivery_report(message):
            ids += [ref.ticket_id for ref in reported_references(message, domain)]
        message.memo[key] = tuple(dict.fromkeys(ids))
    return list(message.memo[key])


def recipients_of_interest(message: Message) -> list[str]:
    """Addresses an automatic answer to this message could go to: its sender (the rate limits' keys)."""
    return [message.sender.addr] if message.sender else []


def decide(message: Message, view: View, config: Config) -> Decision:
    """The Decision for ``message``; automatic answers beyond the rate limits become notes."""
    return _within_limits(_decide(message, view, config), message, view, config)


INTERNAL_PREFIX = "x-helpdeskd-"  # our headers; the loop header is the one we read back (loops.py)


def strip_imitations(message: Message) -> Message:
    """The message without inbound headers that imitate our internal ones (kept as a defect).

    The cycle applies it to every message before anything else looks at it: nothing trusts such
    headers, and dropping them first keeps it that way as the code grows.
    """
    ours = [name for name, _ in message.headers if name.startswith(INTERNAL_PREFIX) and name != LOOP_HEADER]
    if not ours:
        return message
    kept = tuple((n, v) for n, v in message.headers if n not in ours)
    return replace(message, headers=kept, defects=(*message.defects, f"internal headers removed: {', '.join(ours)}"))


def _decide(message: Message, view: View, config: Config) -> Decision:
    hd = config.helpdesk
    lang = choose_language(message, LANGUAGES, hd.default_language, hd.detect_language)
    if view.duplicate_of is not None:
        return Decision(Ignore(f"duplicate of a message already on ticket #{view.duplicate_of}"), language=lang)
    own = own_reference(message.message_id, hd.message_id_domain)
    if own is not None:
        return _own_mail(own, view, lang)
    quiet = no_autoreply_reason(message, hd.address, hd.message_id_domain)
    bounced = _bounced_ticket(message, view, config)
    if bounced is not None:
        note = f"delivery report about our mail on this ticket; no automatic answer: {quiet or 'report'}"
        return Decision(FollowUp(bounced.id, "report", internal=True), (), lang, (note,))
    if not hd.enabled:
        return _refuse(Refuse("the helpdesk is disabled", "disabled"), lang, quiet)
    match = match_ticket(message, view, config)
    if match is not None:
        return _on_ticket(message, match, lang, quiet, config, view)
    status = status_decision(message, config, view.confirmations, view.now, lang, quiet)
    if status is not None:  # "my tickets": not a submission, so the submission policy does not apply
        return status
    return _submission(message, view, config, lang, quiet)


def _submission(message: Message, view: View, config: Config, lang: str, quiet: str | None,
                linked: tuple[int, ...] = ()) -> Decision:
    """A new ticket, unless the submission policy refuses or holds it (see scopes.submission_refusal)."""
    addr = message.sender.addr if message.sender else ""
    origin = classify(addr, config.access)
    refusal = submission_refusal(origin, addr, config.access, config.helpdesk.allow_customer_tickets,
                                 view.released)
    if refusal is None:
        return _new_ticket(message, view, config, lang, quiet, linked, origin)
    verdict, code, reason = refusal
    if verdict == "hold":
        return Decision(Hold(reason, code), (), lang)
    return _refuse(Refuse(reason, code), lang, quiet)


def _own_mail(own: Reference, view: View, lang: str) -> Decision:
    """Our own mail came back (an alias loop, a misrouted copy): recorded on its ticket as an internal
    message with a note, never answered; ignored when it names no ticket we can verify."""
    ticket = view.tickets.get(own.ticket_id)
    if ticket is None or not verify(ticket.token, ticket.id, own.signature or ""):
        return Decision(Ignore("our own mail came back"), language=lang)
    note = "our own mail came back to the helpdesk; recorded here, not answered"
    return Decision(FollowUp(ticket.id, "loop", internal=True), (), lang, (note,))


def _bounced_ticket(message: Message, view: View, config: Config) -> Ticket | None:
    """The ticket whose mail (one of our signed Message-IDs) this delivery report is about, if any."""
    if not is_delivery_report(message):
        return None
    for ref in reported_references(message, config.helpdesk.message_id_domain):
        ticket = view.tickets.get(ref.ticket_id)
        if ticket is not None and verify(ticket.token, ticket.id, ref.signature or ""):
            return ticket
    return None


def _within_limits(decision: Decision, message: Message, view: View, config: Config) -> Decision:
    """Drop automatic answers to the sender that the rate limits forbid, and say why in a note.

    Only answers to the sender count: staff notices go to our own people, relays are human mail.
    """
    answers = [s for s in decision.sends if s.to == SENDER and s.kind == "auto-reply"]
    sender = message.sender.addr if message.sender else ""
    reason = answers and rate_limit_reason(view.sent_to.get(sender, 0), view.sent_in_all, config.autoreply)
    if not reason:
        return decision
    kept = tuple(s for s in decision.sends if s not in answers)
    return replace(decision, sends=kept, notes=(*decision.notes, f"no automatic answer: {reason}"))


# -- matching ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    """The ticket a message joins, the sender's role there, and whether it carried a token we issued."""

    ticket: Ticket
    role: str  # staff | requester | collaborator | guest (a token holder who is none of those)
    proven: bool  # our signed Message-ID or reply address: required for staff powers and commands


def match_ticket(message: Message, view: View, config: Config) -> Match | None:
    """The ticket this message may join, or None (it then starts a new ticket).

    A token we issued proves the message answers our mail for that ticket. Without one, a subject tag
    or a threading header only lets the ticket's own people add text: a From header is easy to forge.
    """
    hd = config.helpdesk
    sender = message.sender.addr if message.sender else ""
    tokens = [*our_references(message, hd.message_id_domain), *plus_references(message, hd.address)]
    for ref in tokens:
        ticket = view.tickets.get(ref.ticket_id)
        if ticket is not None and ref.signature and verify(ticket.token, ticket.id, ref.signature):
            return Match(ticket, role_of(sender, ticket, config) or "guest", True)
    for ticket_id in [*tagged_ids(message.subject, hd.subject_tag), *view.thread_hints]:
        ticket = view.tickets.get(ticket_id)
        role = role_of(sender, ticket, config) if ticket is not None else ""
        if role:
            return Match(ticket, role, False)
    return None


def role_of(addr: str, ticket: Ticket, config: Config) -> str:
    """staff (of the ticket's queue), requester, collaborator, or "" for anyone else."""
    if not addr:
        return ""
    if addr in config.staff_of(ticket.queue):
        return "staff"
    if addr == ticket.requester.addr:
        return "requester"
    return "collaborator" if addr in ticket.collaborators else ""


# -- new tickets and refusals -----------------------------------------------------------------------
def _new_ticket(message: Message, view: View, config: Config, lang: str, quiet: str | None,
                linked: tuple[int, ...] = (), origin: Origin | None = None) -> Decision:
    hd, box, sender = config.helpdesk, view.mailbox, message.sender
    requester = Requester(sender.addr if sender else (message.return_path or ""), sender.name if sender else "", lang)
    origin = origin or classify(requester.addr, config.access)
    collaborators = _collaborators(message, config) if hd.cc_collaborators else ()
    notes = ()
    if len(collaborators) > hd.max_collaborators:
        notes = (f"only the first {hd.max_collaborators} of the {len(collaborators)} Cc addresses became "
                 "collaborators (max_collaborators)",)
        collaborators = collaborators[:hd.max_collaborators]
    action = NewTicket(
        subject=message.subject.strip(), requester=requester,
        queue=(box and box.queue) or hd.default_queue, priority=(box and box.priority) or hd.default_priority,
        category=(box and box.category) or hd.default_category, collaborators=collaborators, linked=linked,
        role=origin.role, domain=origin.domain, reseller=origin.reseller,
    )
    if quiet:
        return Decision(action, (), lang, (f"no automatic answer: {quiet}", *notes))
    sends = [Send("ack_new", SENDER)]
    if hd.notify_staff:
        sends.append(Send("staff_new", STAFF, "notification"))
    return Decision(action, tuple(sends), lang, notes)


def _collaborators(message: Message, config: Config) -> tuple[str, ...]:
    """Cc addresses of the first message that become collaborators."""
    return _collaborators_from([a.addr for a in message.cc], message.sender.addr if message.sender else "", config)


def _collaborators_from(addrs, sender: str, config: Config) -> tuple[str, ...]:
    """The addresses that are people outside the helpdesk: not us (nor our reply addresses), not staff,
    not the sender, and ones we can write to."""
    ours = config.helpdesk.address.lower()
    return tuple(dict.fromkeys(
        a for a in addrs
        if can_write_to(a) and a not in (ours, sender) and not config.is_staff(a) and not _is_plus_of(a, ours)
    ))


def _is_plus_of(addr: str, base: str) -> bool:
    local, _, domain = base.lower().partition("@")
    return addr.endswith("@" + domain) and addr.startswith(local + "+")


def _refuse(action: Refuse, lang: str, quiet: str | None) -> Decision:
    if quiet:
        return Decision(action, (), lang, (f"no automatic answer: {quiet}",))
    return Decision(action, (Send("refused", SENDER),), lang)


# -- messages on an existing ticket -----------------------------------------------------------------
def own_subject(subject: str, tag_format: str) -> str:
    """The subject without reply/forward prefixes and our tag: what the sender typed this time."""
    return strip_reply_prefixes(tag_pattern(tag_format).sub(" ", strip_reply_prefixes(subject)))


NEEDS_TOKEN = "commands are only taken from a reply to one of the helpdesk's messages (it carries the ticket's token)"
NOT_RELAYED = ("not relayed: this staff mail carries no reply token; answer from the helpdesk's notification "
               "so the customer can trust it")


def _on_ticket(message: Message, match: Match, lang: str, quiet: str | None, config: Config,
               view: View) -> Decision:
    ticket, role = match.ticket, match.role
    if role == "requester" and ticket.requester.language in LANGUAGES:  # a short "#close" says no language:
        hd = config.helpdesk  # answer in the one the ticket was opened in, not the helpdesk's default
        lang = choose_language(message, LANGUAGES, ticket.requester.language, hd.detect_language)
    if quiet:  # an auto-reply or a bounce: record it, change and answer nothing
        note = (f"no automatic answer: {quiet}",)
        return Decision(FollowUp(ticket.id, role, internal=role == "staff"), (), lang, note)
    if role == "staff" and not match.proven:  # a forged staff From must not speak to the customer
        action = FollowUp(ticket.id, role, internal=True, errors=(NOT_RELAYED,))
        return Decision(action, (Send("command_error", SENDER),), lang)
    commands = read_commands(own_subject(message.subject, config.helpdesk.subject_tag), message.text)
    if role == "staff":
        return _staff(ticket, commands, lang, config)
    return _customer(message, match, commands, lang, config, view)


def _customer(message: Message, match: Match, commands: Commands, lang: str, config: Config,
              view: View) -> Decision:
    hd, ticket, role = config.helpdesk, match.ticket, match.role
    changes, errors, sends = _customer_commands(commands, match, config)
    if errors:
        return Decision(FollowUp(ticket.id, role, errors=errors), (Send("command_error", SENDER),), lang)
    closing = any(c.field == "status" for c in changes)
    reopen = False
    if ticket.status == Status.CLOSED and not closing:
        if hd.closed_reply == "new":
            return _submission(message, view, config, lang, None, linked=(ticket.id,))  # the same rules as new mail
        if hd.closed_reply == "refuse":
            return Decision(FollowUp(ticket.id, role), (Send("closed_reply", SENDER),), lang)
        reopen = True
        sends.insert(0, Send("reopened", SENDER))
    if not any(s.to == SENDER for s in sends) and hd.acknowledge_followups:
        sends.append(Send("ack_followup", SENDER))
    if hd.notify_staff and not (closing and ticket.status == Status.CLOSED):  # closed again: nothing new
        sends.append(Send("staff_followup", STAFF, "notification"))
    return Decision(FollowUp(ticket.id, role, reopen, tuple(changes)), tuple(sends), lang)


def _customer_commands(commands: Commands, match: Match,
                       config: Config) -> tuple[list[Change], tuple[str, ...], list[Send]]:
    """Customers may close (requester), escalate (requester, collaborator) and manage Cc (requester),
    and only in a reply that carries our token.

    Unknown ``#words`` from customers are just text; a known command they may not use is an error.
    """
    changes: list[Change] = []
    errors: list[str] = []
    sends: list[Send] = []
    for cmd in commands.commands:
        allowed = ("requester", "collaborator") if cmd.name == "escalate" else ("requester",)
        if cmd.name not in CUSTOMER_COMMANDS:  # the requester included
            errors.append(f"{cmd.source}: only the helpdesk staff may do this")
        elif match.role not in allowed:
            who = "the ticket's requester or a collaborator" if cmd.name == "escalate" else "the ticket's requester"
            errors.append(f"{cmd.source}: only {who} (or the helpdesk staff) may do this")
        elif not match.proven:
            errors.append(f"{cmd.source}: {NEEDS_TOKEN}")
        elif cmd.name == "close":
            changes.append(Change("status", "closed"))
            sends.append(Send("closed", SENDER))
        elif cmd.name == "escalate":
            reason = cmd.value or new_text(commands.rest)[:2000] or "(no reason given)"
            changes.append(Change("escalated", reason))
            sends += [Send("escalated", SENDER), Send("staff_escalation", ESCALATION, "notification")]
        else:
            _cc(cmd, changes, errors, config, match.ticket.collaborators)
    return changes, tuple(errors), sends


def _cc(cmd: Command, changes: list[Change], errors: list[str], config: Config, current: tuple[str, ...]) -> None:
    verb, _, addr = cmd.value.partition(" ")
    addr = addr.strip().strip("<>").lower()
    action = CC_VERBS.get(fold(verb))
    most = config.helpdesk.max_collaborators
    if action is None or not can_write_to(addr):
        errors.append(f"{cmd.source}: write #cc add ADDRESS or #cc remove ADDRESS")
    elif action == "add" and not _collaborators_from((addr,), "", config):
        errors.append(f"{cmd.source}: {addr} is the helpdesk or its staff, not a collaborator")
    elif action == "add" and addr not in (after := _after_cc(current, changes)) and len(after) >= most:
        errors.append(f"{cmd.source}: a ticket may have at most {most} collaborators")
    else:
        changes.append(Change(f"cc_{action}", addr))


def _after_cc(current: tuple[str, ...], changes: list[Change]) -> set[str]:
    """The collaborators once the ``#cc`` changes asked so far in the same message are made."""
    after = set(current)
    for change in changes:
        if change.field == "cc_add":
            after.add(change.value)
        elif change.field == "cc_remove":
            after.discard(change.value)
    return after


def _staff(ticket: Ticket, commands: Commands, lang: str, config: Config) -> Decision:
    changes: list[Change] = []
    errors = [f"{line}: unknown command" for line in commands.unknown]
    for cmd in commands.commands:
        change = staff_change(cmd, config)
        if isinstance(change, str):
            errors.append(change)
        elif change is not None:
            changes.append(change)
    if errors:
        action = FollowUp(ticket.id, "staff", internal=True, errors=tuple(errors))
        return Decision(action, (Send("command_error", SENDER),), lang)
    internal = commands.named("note") is not None
    relay = not internal and bool(new_text(commands.rest))
    if relay and ticket.status in (Status.NEW, Status.REOPENED) and not any(c.field == "status" for c in changes):
        changes.append(Change("status", "open"))  # answered
    sends = [Send("staff_answer", PARTICIPANTS, "relay")] if relay else []
    if ticket.status != Status.CLOSED and any(c == Change("status", "closed") for c in changes):
        sends.append(Send("closed", PARTICIPANTS, "notification"))  # (not again to a closed ticket's)
    action = FollowUp(ticket.id, "staff", changes=tuple(changes), relay=relay, internal=not relay)
    return Decision(action, tuple(sends), lang)


def staff_change(cmd: Command, config: Config) -> Change | str | None:
    """A staff command turned into a validated change, an error text, or None (a note: nothing to
    change). Shared by mail commands and ``helpdeskctl``."""
    value = fold(cmd.value.strip())
    if cmd.name == "note":
        return None
    if cmd.name in ("close", "reopen"):
        return Change("status", "closed" if cmd.name == "close" else "reopened")
    if cmd.name == "status":
        status = STATUS_WORDS.get(value)
        return Change("status", status) if status else f"{cmd.source}: unknown status (new, open, closed, reopened)"
    if cmd.name in ("priority", "queue", "category"):
        return _labelled(cmd, value, config)
    if cmd.name == "assign":
        return _assignee(cmd, value, config)
    if cmd.name == "escalate":
        return Change("escalated", cmd.value or "(escalated by staff)")
    return f"{cmd.source}: not a staff command here"


def _labelled(cmd: Command, value: str, config: Config) -> Change | str:
    entries = {"priority": config.priorities, "queue": config.queues, "category": config.categories}[cmd.name]
    for entry in entries:
        if value == fold(entry.key) or value in (fold(text) for _, text in entry.name.texts):
            return Change(cmd.name, entry.key)
    known = ", ".join(e.key for e in entries)
    return f"{cmd.source}: unknown {cmd.name} (known: {known})"


def _assignee(cmd: Command, value: str, config: Config) -> Change | str:
    if value in ME_WORDS or not value:
        return Change("assignee", "")  # resolved to the sender by the cycle, which knows who wrote
    addr = value.strip("<>")
    if config.is_staff(addr):
        return Change("assignee", addr)
    return f"{cmd.source}: {addr} is not on the staff of any queue"
