"""Never loop: what gets no automatic answer, bounces of our own mail, rate limits, and two helpdesks
wired to each other through real SMTP servers, proving a bounded number of messages whatever the peer does."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from helpdeskd.cycle import Services, file_safely
from helpdeskd.message import Inbound
from helpdeskd.parse import parse
from helpdeskd.sender import Sender
from helpdeskd.settings import AutoReply
from helpdeskd.templates import load_templates

from conftest import mail, make_config
from smtp_peer import Handler, smtp_settings, start

NO_ANSWER = [
    ("Auto-Submitted auto-replied", "Auto-Submitted: auto-replied"),
    ("Auto-Submitted auto-generated", "Auto-Submitted: auto-generated"),
    ("Auto-Submitted with a comment", "Auto-Submitted: auto-notified; owner-email=x@y.example"),
    ("Precedence bulk", "Precedence: bulk"),
    ("Precedence junk", "Precedence: junk"),
    ("Precedence list", "Precedence: list"),
    ("List-Id", "List-Id: <users.lists.example>"),
    ("List-Unsubscribe", "List-Unsubscribe: <mailto:leave@lists.example>"),
    ("X-Auto-Response-Suppress", "X-Auto-Response-Suppress: OOF, AutoReply"),
    ("empty Return-Path", "Return-Path: <>"),
    ("read receipt", "Content-Type: multipart/report; report-type=disposition-notification; boundary=x"),
    ("our loop header", "X-Helpdeskd-Loop: support@helpdesk.localhost"),
]
ROBOTS = ["MAILER-DAEMON@mx.example", "postmaster@mx.example", "users-request@lists.example",
          "owner-users@lists.example", "no-reply@shop.example"]


def inbound(raw: bytes, n: str = "1") -> Inbound:
    return Inbound("test", n, raw)


def answers(svc) -> list:
    """Automatic answers queued to senders (staff notices are another kind of mail)."""
    return [e for e in svc.outbox.entries() if e.envelope["kind"] == "auto-reply"]


def notes(svc, ticket_id: int) -> list[str]:
    return [e["text"] for e in svc.store.events(ticket_id) if e["type"] == "note"]


@pytest.mark.parametrize("header", [h for _, h in NO_ANSWER], ids=[n for n, _ in NO_ANSWER])
def test_marked_mail_is_filed_without_an_answer(svc, header):
    outcome = file_safely(inbound(mail(extra=header)), svc)
    assert outcome.action == "new" and outcome.reply is None
    assert answers(svc) == []
    assert notes(svc, outcome.ticket)[0].startswith("no automatic answer")


@pytest.mark.parametrize("sender", ROBOTS)
def test_robot_senders_get_no_answer(svc, sender):
    outcome = file_safely(inbound(mail(sender=sender)), svc)
    assert outcome.reply is None and answers(svc) == []


def test_auto_submitted_no_is_answered(svc):
    assert file_safely(inbound(mail(extra="Auto-Submitted: no")), svc).reply == "ack_new"


def our_ack(svc) -> tuple[int, str]:
    """File a customer mail; return its ticket and the Message-ID of the acknowledgment we queued."""
    outcome = file_safely(inbound(mail(), "customer"), svc)
    [entry] = answers(svc)
    return outcome.ticket, entry.envelope["message_id"]


def dsn(kind: str, message_id: str) -> bytes:
    """A bounce of ``message_id``: an RFC 3464 report with the returned headers or message, or plain text."""
    head = ("From: Mail Delivery System <MAILER-DAEMON@mx.cliente.es>\r\nTo: support@helpdesk.localhost\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce-%s@mx.cliente.es>\r\n"
            "Return-Path: <>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n" % kind)
    returned = (f"From: Soporte <support@helpdesk.localhost>\r\nTo: ana@cliente.es\r\nMessage-ID: <{message_id}>\r\n"
                "Subject: [Soporte #1] Hemos recibido su solicitud\r\n")
    if kind == "plain, from an unqualified MAILER-DAEMON":  # older MTAs: no domain in From
        head, kind = head.replace("<MAILER-DAEMON@mx.cliente.es>", "<MAILER-DAEMON>"), "plain"
    if kind == "plain":
        return (head + "Content-Type: text/plain\r\n\r\nThis is the mail system. Your message could not be "
                "delivered.\r\n\r\n--- returned headers ---\r\n" + returned).encode()
    part = ("Content-Type: text/rfc822-headers\r\n\r\n" + returned if kind == "headers"
            else "Content-Type: message/rfc822\r\n\r\n" + returned + "\r\nHola\r\n")
    return (head + 'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nDelivery to ana@cliente.es failed: 550 no such user.\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.cliente.es\r\n\r\n"
            "Final-Recipient: rfc822; ana@cliente.es\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"--b\r\n{part}--b--\r\n").encode()


@pytest.mark.parametrize("kind", ["headers", "message", "plain", "plain, from an unqualified MAILER-DAEMON"])
def test_bounce_of_our_ack_is_noted_on_its_ticket(svc, kind):
    ticket_id, mid = our_ack(svc)
    svc.store.save(svc.store.get(ticket_id).with_changes(status="closed"))
    outcome = file_safely(inbound(dsn(kind, mid), "bounce"), svc)
    assert (outcome.action, outcome.ticket, outcome.reply) == ("followup", ticket_id, None)
    assert svc.store.last_id() == 1 and len(answers(svc)) == 1  # no new ticket, no answer
    assert svc.store.get(ticket_id).status == "closed"  # a bounce never reopens
    assert any("delivery report about our mail" in n for n in notes(svc, ticket_id))


def test_bounce_with_a_forged_signature_does_not_join(svc):
    ticket_id, mid = our_ack(svc)
    forged = mid.replace(mid.split(".")[2], "0" * 16)
    outcome = file_safely(inbound(dsn("headers", forged), "bounce"), svc)
    assert outcome.ticket != ticket_id and outcome.reply is None


def test_out_of_office_reply_joins_without_answer_or_reopening(svc):
    ticket_id, mid = our_ack(svc)
    svc.store.save(svc.store.get(ticket_id).with_changes(status="closed"))
    ooo = mail(subject="Fuera de la oficina", message_id="<ooo@cliente.es>",
               extra=f"In-Reply-To: <{mid}>\nAuto-Submitted: auto-replied")
    outcome = file_safely(inbound(ooo, "ooo"), svc)
    assert (outcome.ticket, outcome.reply) == (ticket_id, None) and svc.store.get(ticket_id).status == "closed"


class FrozenClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def limited_svc(tmp_path, **limits) -> Services:
    config = make_config(tmp_path)
    config = replace(config, autoreply=replace(AutoReply(), **limits))
    svc = Services.open(config, load_templates(config))
    svc.clock = FrozenClock()
    return svc


def test_per_recipient_rate_limit_suppresses_and_notes(tmp_path):
    svc = limited_svc(tmp_path, per_recipient=3)
    outcomes = [file_safely(inbound(mail(message_id=f"<n{i}@cliente.es>", subject=f"Pregunta {i}"), str(i)), svc)
                for i in range(6)]
    assert [o.reply for o in outcomes] == ["ack_new"] * 3 + [None] * 3
    assert len(answers(svc)) == 3
    assert notes(svc, outcomes[-1].ticket)[0].startswith("no automatic answer: rate limit: 3 automatic")
    other = file_safely(inbound(mail(message_id="<o@x.es>", sender="luis@cliente.es"), "o"), svc)
    assert other.reply == "ack_new"  # the limit is per recipient
    svc.clock.now += timedelta(hours=1, seconds=1)
    assert file_safely(inbound(mail(message_id="<later@cliente.es>"), "l"), svc).reply == "ack_new"


def test_refiling_does_not_count_twice(tmp_path):
    svc = limited_svc(tmp_path, per_recipient=2)
    raw = mail()
    for _ in range(3):
        file_safely(inbound(raw), svc)
    assert file_safely(inbound(mail(message_id="<n2@cliente.es>", subject="Otra"), "2"), svc).reply == "ack_new"


def test_global_circuit_breaker(tmp_path):
    svc = limited_svc(tmp_path, global_max=4)
    replies = [file_safely(inbound(mail(message_id=f"<g{i}@x.es>", sender=f"c{i}@cliente.es"), str(i)), svc).reply
               for i in range(7)]
    assert replies == ["ack_new"] * 4 + [None] * 3
    assert "circuit breaker open" in notes(svc, 7)[0]


def test_refusals_are_rate_limited_too(tmp_path):
    config = make_config(tmp_path, enabled=False)
    config = replace(config, autoreply=AutoReply(per_recipient=2))
    svc = Services.open(config, load_templates(config))
    for i in range(5):
        file_safely(inbound(mail(message_id=f"<r{i}@cliente.es>"), str(i)), svc)
    assert len(answers(svc)) == 2


# -- two helpdesks on real SMTP ------------------------------------------------------------------------

def helpdesk(tmp_path, name: str, address: str) -> Services:
    # Staff notices go to our own staff, not to the peer: off here, so every message on the wire is an answer.
    config = make_config(tmp_path / name, address=address, name=name, message_id_domain=address.split("@")[1],
                         notify_staff=False)
    config = replace(config, autoreply=AutoReply(per_recipient=5))
    svc = Services.open(config, load_templates(config))
    svc.clock = FrozenClock()  # no time passes: the rate limits alone must bound the exchange
    return svc


def pump(pairs, rounds: int = 50) -> int:
    """Run every sender until no outbox has anything left; returns the number of passes that sent mail."""
    busy = 0
    for _ in range(rounds):
        sent = sum(sender.run_once().sent for sender in pairs)
        if not sent:
            return busy
        busy += 1
    raise AssertionError("the exchange did not stop")


def test_two_helpdesks_answering_each_other_stop_at_once(tmp_path):
    a = helpdesk(tmp_path, "a", "support@a.example")
    b = helpdesk(tmp_path, "b", "support@b.example")
    into_a = Handler(on_message=lambda m: file_safely(Inbound("smtp", "x", m.data), a))
    into_b = Handler(on_message=lambda m: file_safely(Inbound("smtp", "x", m.data), b))
    server_a, server_b = start(into_a), start(into_b)
    try:
        # a forged mail to A "from" B's address starts the exchange
        file_safely(Inbound("t", "1", mail(sender="support@b.example", message_id="<spoof@x.example>")), a)
        pump([Sender(a.outbox, smtp_settings(server_b.port)), Sender(b.outbox, smtp_settings(server_a.port))])
    finally:
        server_a.stop()
        server_b.stop()
    assert len(into_b.received) == 1 and len(into_a.received) == 0  # B files A's ack and does not answer


def test_a_peer_that_answers_everything_gets_a_bounded_number_of_messages(tmp_path):
    """The worst peer: strips every auto-reply header, invents a fresh Message-ID, keeps our subject tag,
    and answers each of our messages at once. Our rate limit alone must end the exchange."""
    a = helpdesk(tmp_path, "a", "support@a.example")
    counter = iter(range(10_000))

    def naive_peer(message) -> None:
        n = next(counter)
        ours = parse(message.data)
        reply = mail(subject=f"Re: {ours.subject}", sender="robot@peer.example", message_id=f"<p{n}@peer.example>",
                     body="Thank you for your message, we will get back to you shortly.")
        file_safely(Inbound("smtp", str(n), reply), a)

    peer = Handler(on_message=naive_peer)
    server = start(peer)
    try:
        file_safely(Inbound("t", "1", mail(sender="robot@peer.example", message_id="<start@peer.example>")), a)
        pump([Sender(a.outbox, smtp_settings(server.port))])
    finally:
        server.stop()
    assert len(peer.received) == 5  # = autoreply.per_recipient, however long the peer keeps going
    assert a.store.last_id() == 1 and a.store.get(1).mail_count == 6
    assert "rate limit" in notes(a, 1)[-1]


def test_decide_reads_rate_limits_from_the_view_only(config):
    """decide stays pure: the counts come in the View, the suppression comes out as a note."""
    from helpdeskd.decide import View, decide

    msg = parse(mail())
    assert decide(msg, View(sent_to={"ana@cliente.es": 4}), config).reply == "ack_new"
    limited = decide(msg, View(sent_to={"ana@cliente.es": 5}), config)
    assert limited.reply is None and "rate limit" in limited.notes[0]
    assert "circuit breaker" in decide(msg, View(sent_in_all=300), config).notes[0]


def test_parse_lists_message_ids_of_embedded_mail():
    raw = dsn("headers", "hd.1.0123456789abcdef.x@helpdesk.localhost")
    assert parse(raw).embedded_ids == ("hd.1.0123456789abcdef.x@helpdesk.localhost",)
    assert parse(dsn("message", "a@b.example")).embedded_ids == ("a@b.example",)


def test_our_own_mail_coming_back_is_recorded_on_its_ticket_not_answered(svc):
    ticket_id, _ = our_ack(svc)
    [ack] = answers(svc)
    outcome = file_safely(inbound(ack.data, "loop"), svc)  # e.g. an alias that forwards back to us
    assert outcome.ticket == ticket_id and outcome.reply is None
    assert svc.store.last_id() == 1 and len(answers(svc)) == 1
    assert "our own mail came back" in notes(svc, ticket_id)[-1]
    again = file_safely(inbound(ack.data.replace(b"MIME-Version", b"X-Relay: 2\r\nMIME-Version", 1), "loop2"), svc)
    assert again.action == "ignored", again
    assert svc.store.get(ticket_id).mail_count == 2


@pytest.mark.parametrize("sender", ["ana@café.example", "josé@cliente.es", '"a b"@cliente.es', "root",
                                    "@relay.example", "<@relay.example>", "ana@"])
def test_an_address_we_cannot_write_to_is_filed_without_an_answer(svc, sender):
    outcome = file_safely(inbound(mail(sender=sender)), svc)
    assert outcome.action == "new" and outcome.reply is None and list(svc.quarantine.items()) == []
    assert answers(svc) == [] and "no usable From address" in notes(svc, outcome.ticket)[0]
    notices = [e for e in svc.outbox.entries() if e.envelope["kind"] == "notification"]
    assert notices == []  # quiet mail notifies nobody; staff see it in the ticket list


@pytest.mark.parametrize("separator", list('\r\n<>,; "()[]\\'))
def test_an_address_holding_a_separator_is_never_written_to(separator):
    from helpdeskd.loops import can_write_to

    assert can_write_to("ana.lopez+soporte@cliente.example")
    assert not can_write_to(f"ana{separator}lopez@cliente.example")
    assert not can_write_to(f"ana@cliente{separator}example")

