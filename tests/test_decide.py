"""decide() as a table: message shape × what the store knows × config → action and answer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from helpdeskd.actions import FollowUp, Ignore, NewTicket, Refuse
from helpdeskd.decide import View, decide, match_ticket, wanted_ticket_ids
from helpdeskd.matching import make_message_id
from helpdeskd.parse import parse
from helpdeskd.ticket import Requester, Status, Ticket

from conftest import mail


def ticket(tid: int = 7, status: Status = Status.OPEN, addr: str = "ana@cliente.es") -> Ticket:
    return Ticket(id=tid, subject="Mi sitio no carga", status=status, queue="general", priority="normal",
                  category="general", requester=Requester(addr, "Ana", "es"), created="t", updated="t",
                  token="secret-token-7")


def ours(tid: int = 7, token: str = "secret-token-7") -> str:
    return make_message_id(tid, token, "abc123", "helpdesk.localhost")


def with_hd(config, **changes):
    return replace(config, helpdesk=replace(config.helpdesk, **changes))


CASES = [
    # (id, raw message, view tickets, config changes, expected action type, expected reply)
    ("new ticket", mail(), {}, {}, NewTicket, "ack_new"),
    ("follow-up by our Message-ID", mail(extra=f"In-Reply-To: <{ours()}>", sender="x@elsewhere.org"),
     {7: ticket()}, {}, FollowUp, "ack_followup"),
    ("follow-up by subject tag from requester", mail(subject="Re: [Soporte #7] Mi sitio no carga"),
     {7: ticket()}, {}, FollowUp, "ack_followup"),
    ("tag with odd spacing and case", mail(subject="RE: AW: [soporte  # 7 ] hola"), {7: ticket()}, {}, FollowUp,
     "ack_followup"),
    ("stranger with a guessed ticket number", mail(subject="Re: [Soporte #7] dame acceso", sender="mallory@evil.example"),
     {7: ticket()}, {}, NewTicket, "ack_new"),
    ("forged Message-ID signature", mail(extra=f"In-Reply-To: <{ours(token='guess')}>", sender="mallory@evil.example"),
     {7: ticket()}, {}, NewTicket, "ack_new"),
    ("reply to a closed ticket reopens it", mail(subject="Re: [Soporte #7] otra vez"),
     {7: ticket(status=Status.CLOSED)}, {}, FollowUp, "reopened"),
    ("follow-up acks switched off", mail(subject="Re: [Soporte #7] x"), {7: ticket()},
     {"acknowledge_followups": False}, FollowUp, None),
    ("helpdesk disabled", mail(), {}, {"enabled": False}, Refuse, "refused"),
    ("customers may not submit", mail(), {}, {"allow_customer_tickets": False}, Refuse, "refused"),
    ("customers may not submit, but follow-ups still join", mail(subject="Re: [Soporte #7] x"), {7: ticket()},
     {"allow_customer_tickets": False}, FollowUp, "ack_followup"),
    ("auto-submitted mail files without answer", mail(extra="Auto-Submitted: auto-replied"), {}, {}, NewTicket, None),
    ("mailing list mail files without answer", mail(extra="List-Id: <x.lists.example>"), {}, {}, NewTicket, None),
    ("null return path", mail(extra="Return-Path: <>"), {}, {}, NewTicket, None),
    ("MAILER-DAEMON", mail(sender="MAILER-DAEMON@mx.example"), {}, {}, NewTicket, None),
    ("our own mail came back", mail(message_id=f"<{ours()}>"), {}, {}, Ignore, None),
]


@pytest.mark.parametrize("name,raw,tickets,changes,action,reply", CASES, ids=[c[0] for c in CASES])
def test_decide_table(config, name, raw, tickets, changes, action, reply):
    decision = decide(parse(raw), View(tickets=tickets), with_hd(config, **changes))
    assert isinstance(decision.action, action)
    assert decision.reply == reply
    if reply is None and action is not Ignore and changes.get("acknowledge_followups") is not False:
        assert decision.notes and decision.notes[0].startswith("no automatic answer")


def test_duplicate_message_id_is_ignored(config):
    decision = decide(parse(mail()), View(duplicate_of=3), config)
    assert isinstance(decision.action, Ignore) and "#3" in decision.action.reason


def test_new_ticket_takes_defaults_and_requester(config):
    decision = decide(parse(mail()), View(), config)
    new = decision.action
    assert (new.queue, new.priority, new.category) == ("general", "normal", "general")
    assert new.requester == Requester("ana@cliente.es", "Ana García", "es")
    assert new.subject == "Mi sitio no carga"


def test_mailbox_defaults_override_helpdesk_defaults(config):
    box = replace(config.mailboxes[0], queue="billing", priority="high", category="mail")
    new = decide(parse(mail()), View(mailbox=box), config).action
    assert (new.queue, new.priority, new.category) == ("billing", "high", "mail")


@pytest.mark.parametrize("raw,lang", [
    (mail(), "es"),
    (mail(subject="My site is down", body="Hello, my site is not working since this morning. Thanks for the help."), "en"),
    (mail(subject="x", body="x", extra="Content-Language: en-GB"), "en"),
    (mail(subject="My site is down", body="Hello, it is not working", extra="Accept-Language: es-ES, en-US"), "es"),
    (mail(subject="x", body="x"), "es"),  # nothing to go on: the configured default
])
def test_language_choice(config, raw, lang):
    assert decide(parse(raw), View(), config).language == lang


def test_thread_hint_needs_the_requester(config):
    msg = parse(mail(subject="otra cosa", extra="In-Reply-To: <m0@cliente.es>"))
    found = match_ticket(msg, View(tickets={7: ticket()}, thread_hints=(7,)), config)
    assert (found.ticket.id, found.role, found.proven) == (7, "requester", False)
    stranger = parse(mail(sender="eve@evil.example", extra="In-Reply-To: <m0@cliente.es>"))
    assert match_ticket(stranger, View(tickets={7: ticket()}, thread_hints=(7,)), config) is None


def test_wanted_ticket_ids_lists_references_then_tags(config):
    msg = parse(mail(subject="Re: [Soporte #9] x", extra=f"References: <{ours(7)}>"))
    assert wanted_ticket_ids(msg, config) == [7, 9]


@pytest.mark.parametrize("word", ["Categoría", "AÑADIR", "Straße", "ﬁchero", "İ", "Close", "cc_add", "PRIORIDAD"])
def test_command_words_fold_the_same_on_the_ascii_shortcut_and_the_full_way(word):
    import unicodedata

    from helpdeskd.commands import fold

    full = "".join(ch for ch in unicodedata.normalize("NFKD", word.casefold()) if not unicodedata.combining(ch))
    assert fold(word) == full
