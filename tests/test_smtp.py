"""The outbox sender against a real aiosmtpd server on loopback: TLS, login, retries, dead letters, restarts."""

from __future__ import annotations

import os
import time

import pytest

from helpdeskd import ctl
from helpdeskd.cycle import file_safely
from helpdeskd.message import Inbound
from helpdeskd.parse import parse
from helpdeskd.sender import Sender

from conftest import mail
from smtp_peer import Handler, authenticator, free_port, make_pki, smtp_settings, start


@pytest.fixture
def svc(tmp_path):
    """One mail queued per message filed: staff notices are off, so each test counts only its own mail."""
    from conftest import make_config
    from helpdeskd.cycle import Services
    from helpdeskd.templates import load_templates

    config = make_config(tmp_path, notify_staff=False)
    return Services.open(config, load_templates(config))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def peer():
    """A plaintext peer (the sender is told plaintext to 127.0.0.1 is allowed)."""
    handler = Handler()
    controller = start(handler)
    yield handler, controller.port
    controller.stop()


class Clock:
    """Real time plus an offset the test moves forward: retries fall due without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def queue(svc, n: int = 1, **kwargs) -> None:
    for i in range(n):
        raw = mail(message_id=f"<m{i}@cliente.es>", body=f"Hola, el problema número {i} sigue. Gracias.",
                   subject=f"Problema {i}", **kwargs)
        assert file_safely(Inbound("test", str(i), raw), svc).reply == "ack_new"


def test_starttls_delivery_moves_to_cur(svc, pki):
    handler = Handler()
    controller = start(handler, tls_context=pki.server_context(), require_starttls=True)
    try:
        queue(svc)
        [entry] = list(svc.outbox.entries())
        smtp = smtp_settings(controller.port, security="starttls", allow_plaintext=False, ca_file=pki.ca)
        result = Sender(svc.outbox, smtp).run_once()
    finally:
        controller.stop()
    assert (result.sent, result.deferred, result.failed) == (1, 0, 0)
    [got] = handler.received
    assert got.mail_from in ("", "<>") and got.rcpt_tos == ["ana@cliente.es"]  # null sender: RFC 3834
    assert got.data.rstrip(b"\r\n") == entry.data.rstrip(b"\r\n")
    assert svc.outbox.depth() == {"new": 0, "cur": 1, "failed": 0}


def test_implicit_tls_delivery(svc, pki):
    handler = Handler()
    controller = start(handler, ssl_context=pki.server_context())
    try:
        queue(svc)
        smtp = smtp_settings(controller.port, security="tls", allow_plaintext=False, ca_file=pki.ca)
        assert Sender(svc.outbox, smtp).run_once().sent == 1
    finally:
        controller.stop()
    assert len(handler.received) == 1 and "Hemos recibido" in parse(handler.received[0].data).subject


def test_unverified_certificate_is_refused_and_the_mail_kept(svc, pki, tmp_path):
    other = make_pki(tmp_path / "other-ca")  # the server's certificate is not signed by this CA
    handler = Handler()
    controller = start(handler, tls_context=pki.server_context())
    try:
        queue(svc)
        smtp = smtp_settings(controller.port, security="starttls", allow_plaintext=False, ca_file=other.ca)
        result = Sender(svc.outbox, smtp).run_once()
    finally:
        controller.stop()
    assert (result.sent, result.deferred) == (0, 1) and handler.received == []
    assert "CERTIFICATE_VERIFY_FAILED" in result.errors[0]
    assert svc.outbox.depth()["new"] == 1


def test_starttls_required_but_not_offered(svc, peer):
    handler, port = peer
    queue(svc)
    result = Sender(svc.outbox, smtp_settings(port, security="starttls", allow_plaintext=False)).run_once()
    assert result.deferred == 1 and "does not offer STARTTLS" in result.errors[0] and handler.received == []


@pytest.mark.parametrize("source", ["file", "env", "credential"])
def test_login_with_each_password_source(svc, pki, tmp_path, monkeypatch, source):
    handler = Handler()
    controller = start(handler, tls_context=pki.server_context(), require_starttls=True,
                       authenticator=authenticator(b"helpdesk", b"s3cret pw"), auth_required=True,
                       auth_require_tls=True)
    secret = tmp_path / "secret"
    secret.write_text("s3cret pw\n")
    where = {"file": {"password_file": secret}, "env": {"password_env": "HD_SMTP_PW"},
             "credential": {"password_credential": "secret"}}[source]
    monkeypatch.setenv("HD_SMTP_PW", "s3cret pw")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    try:
        queue(svc)
        smtp = smtp_settings(controller.port, security="starttls", allow_plaintext=False, ca_file=pki.ca,
                             user="helpdesk", **where)
        assert Sender(svc.outbox, smtp).run_once().sent == 1
    finally:
        controller.stop()
    assert len(handler.received) == 1


def test_wrong_password_defers_with_the_reason(svc, pki, monkeypatch):
    handler = Handler()
    controller = start(handler, tls_context=pki.server_context(), require_starttls=True,
                       authenticator=authenticator(b"helpdesk", b"right"), auth_required=True)
    monkeypatch.setenv("HD_SMTP_PW", "wrong")
    try:
        queue(svc, 2)
        smtp = smtp_settings(controller.port, security="starttls", allow_plaintext=False, ca_file=pki.ca,
                             user="helpdesk", password_env="HD_SMTP_PW")
        result = Sender(svc.outbox, smtp).run_once()
    finally:
        controller.stop()
    assert result.deferred == 2 and "login as helpdesk refused" in result.errors[0]
    assert handler.received == [] and svc.outbox.depth()["new"] == 2


def test_missing_password_source_keeps_mail_queued(svc, peer, monkeypatch):
    handler, port = peer
    monkeypatch.delenv("HD_NOPE", raising=False)
    queue(svc)
    result = Sender(svc.outbox, smtp_settings(port, user="x", password_env="HD_NOPE")).run_once()
    assert result.deferred == 1 and "HD_NOPE is not set" in result.errors[0] and handler.received == []


def test_server_down_then_up_delivers_exactly_once(svc):
    port = free_port()
    clock = Clock()
    sender = Sender(svc.outbox, smtp_settings(port), clock=clock)
    queue(svc, 2)
    first = sender.run_once()
    assert (first.sent, first.deferred) == (0, 2) and "Connection refused" in first.errors[0]
    assert sender.run_once().deferred == 0  # not due yet: nothing tried, nothing lost
    handler = Handler()
    controller = start(handler, port=port)
    try:
        clock.offset += 61
        assert sender.run_once().sent == 2
        clock.offset += 10_000
        assert sender.run_once().sent == 0
    finally:
        controller.stop()
    assert len(handler.received) == 2 and svc.outbox.depth() == {"new": 0, "cur": 2, "failed": 0}


def test_4xx_then_250_with_growing_delays_recorded_durably(svc, peer):
    handler, port = peer
    handler.script = ["451 4.3.0 try later", "452 4.3.1 still busy", "250 OK"]
    clock = Clock()
    queue(svc)
    [entry] = list(svc.outbox.entries())
    assert Sender(svc.outbox, smtp_settings(port), clock=clock).run_once().deferred == 1
    state = svc.outbox.retry_state(entry.id)
    assert state["attempts"] == 1 and "451" in state["last_error"]
    assert state["next"] == pytest.approx(clock() + 60, abs=5)
    clock.offset += 61
    # a new Sender is a restart: the schedule comes from disk
    assert Sender(svc.outbox, smtp_settings(port), clock=clock).run_once().deferred == 1
    second = svc.outbox.retry_state(entry.id)
    assert second["attempts"] == 2 and second["next"] - state["next"] >= 119  # the delay doubled
    clock.offset += 121
    assert Sender(svc.outbox, smtp_settings(port), clock=clock).run_once().sent == 1
    assert handler.attempts == 3 and len(handler.received) == 1
    assert not (svc.outbox.root / "new" / f"{entry.id}.retry").exists()


def test_5xx_goes_to_failed_with_the_reason_and_can_be_retried(tmp_path, capsys):
    from conftest import write_config
    from helpdeskd.cycle import Services
    from helpdeskd.runtime import load

    path = write_config(tmp_path, notify_staff=False)
    runtime = load(path)
    svc = Services.open(runtime.config, runtime.templates)
    handler = Handler(script=["550 5.1.1 mailbox unavailable"])
    controller = start(handler)
    try:
        queue(svc)
        [entry] = list(svc.outbox.entries())
        result = Sender(svc.outbox, smtp_settings(controller.port)).run_once()
        assert result.failed == 1 and svc.outbox.state_of(entry.id) == "failed"
        assert ctl.main(["-c", str(path), "outbox", "--state", "failed"]) == 0
        assert "550 5.1.1 mailbox unavailable" in capsys.readouterr().out
        assert ctl.main(["-c", str(path), "outbox", "retry", entry.id]) == 0
        assert svc.outbox.state_of(entry.id) == "new"
        assert Sender(svc.outbox, smtp_settings(controller.port)).run_once().sent == 1
    finally:
        controller.stop()
    assert len(handler.received) == 1 and svc.outbox.state_of(entry.id) == "cur"
    assert ctl.main(["-c", str(path), "outbox", "retry", entry.id]) == 1  # only failed mail is requeued


def test_outbox_listing_shows_the_next_attempt(tmp_path, capsys):
    from conftest import write_config
    from helpdeskd.cycle import Services
    from helpdeskd.runtime import load

    path = write_config(tmp_path)
    runtime = load(path)
    svc = Services.open(runtime.config, runtime.templates)
    queue(svc)
    Sender(svc.outbox, smtp_settings(free_port())).run_once()
    assert ctl.main(["-c", str(path), "outbox"]) == 0
    out = capsys.readouterr().out
    assert "attempt 1 failed" in out and "Connection refused" in out and "next attempt 20" in out


def test_one_failing_message_does_not_hold_up_the_others(svc, peer):
    handler, port = peer
    handler.refuse_rcpt = {"slow@cliente.es": "451 4.7.1 greylisted"}
    queue(svc, 1, sender="Slow <slow@cliente.es>")
    file_safely(Inbound("t", "x", mail(message_id="<a@b.es>", sender="Ana <ana@cliente.es>")), svc)
    file_safely(Inbound("t", "y", mail(message_id="<c@d.es>", sender="Luis <luis@cliente.es>")), svc)
    result = Sender(svc.outbox, smtp_settings(port)).run_once()
    assert (result.sent, result.deferred) == (2, 1)
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["ana@cliente.es", "luis@cliente.es"]


def test_restart_with_a_non_empty_queue_sends_each_once(svc, peer):
    handler, port = peer
    queue(svc, 3)
    calls = iter([False, True])  # "crash" (stop) after the first message
    first = Sender(svc.outbox, smtp_settings(port)).run_once(lambda: next(calls, True))
    assert first.sent == 1 and svc.outbox.depth()["new"] == 2
    assert Sender(svc.outbox, smtp_settings(port)).run_once().sent == 2
    assert len(handler.received) == 3 and len({parse(r.data).message_id for r in handler.received}) == 3


def test_too_old_mail_goes_to_failed_not_away(svc, peer):
    handler, port = peer
    queue(svc)
    [entry] = list(svc.outbox.entries())
    old = time.time() - 6 * 86400
    os.utime(entry.path, (old, old))
    result = Sender(svc.outbox, smtp_settings(port)).run_once()
    assert result.failed == 1 and handler.received == []
    [failed] = list(svc.outbox.entries(("failed",)))
    assert "gave up" in failed.reason


def test_configured_envelope_sender_is_used(svc, peer):
    handler, port = peer
    queue(svc)
    Sender(svc.outbox, smtp_settings(port, envelope_sender="bounces@helpdesk.localhost")).run_once()
    assert handler.received[0].mail_from == "bounces@helpdesk.localhost"


@pytest.mark.parametrize("field", ["subject", "sender"])
def test_header_injection_never_reaches_the_wire(svc, peer, field):
    handler, port = peer
    evil = {"subject": {"subject": "=?utf-8?q?hola=0D=0ABcc:_victim@example.org?="},
            "sender": {"sender": '"=?utf-8?q?Ana=0D=0ABcc:_victim@example.org=0D=0A?=" <ana@cliente.es>'}}[field]
    file_safely(Inbound("t", "1", mail(**evil)), svc)
    assert Sender(svc.outbox, smtp_settings(port)).run_once().sent == 1
    [got] = handler.received
    assert got.rcpt_tos == ["ana@cliente.es"]
    sent = parse(got.data)
    assert sent.header("bcc") is None and b"\r\nBcc:" not in got.data
    assert [name for name, _ in sent.headers].count("to") == 1


def test_nothing_is_sent_before_it_is_on_disk(svc, monkeypatch):
    from helpdeskd import sender as sender_module

    handler, order = Handler(), []
    controller = start(handler)
    real_settle = sender_module.settle

    def broken(folder):
        raise OSError(5, "Input/output error")

    try:
        queue(svc, 2)
        smtp = smtp_settings(controller.port)
        monkeypatch.setattr(sender_module, "settle", broken)
        result = Sender(svc.outbox, smtp).run_once()
        assert result.sent == 0 and "Input/output error" in result.errors[0]
        assert svc.outbox.depth()["new"] == 2 and handler.received == []  # kept, not sent
        monkeypatch.setattr(sender_module, "settle",
                            lambda folder: (order.append(("settle", folder, len(handler.received))), real_settle(folder)))
        assert Sender(svc.outbox, smtp).run_once().sent == 2
        assert order == [("settle", svc.config.helpdesk.state_dir, 0)]  # once per pass, before the first send
    finally:
        controller.stop()


def test_an_address_smtplib_cannot_write_is_a_permanent_failure_of_that_message():
    """Without SMTPUTF8 at the server, a non-ASCII address cannot be sent (with it, see below)."""
    from helpdeskd.errors import PermanentError
    from helpdeskd.smtp import SmtpSession

    handler = Handler()
    controller = start(handler, enable_SMTPUTF8=False)
    try:
        session = SmtpSession(smtp_settings(controller.port), None)
        with pytest.raises(PermanentError, match="cannot be sent as is"):
            session.send("", ["josé@cliente.example"], b"Subject: x\r\n\r\nhola\r\n")
        session.send("", ["ana@cliente.example"], b"Subject: y\r\n\r\nhola\r\n")  # the session still works
        session.close()
    finally:
        controller.stop()
    assert [m.rcpt_tos for m in handler.received] == [["ana@cliente.example"]]


@pytest.mark.parametrize("eight_bit", [True, False], ids=["8BITMIME", "without 8BITMIME"])
def test_accented_mail_goes_as_it_is_where_8bitmime_is_offered_and_quoted_where_not(svc, eight_bit):
    handler = Handler()
    controller = start(handler, decode_data=not eight_bit)  # (aiosmtpd offers 8BITMIME unless it decodes)
    try:
        queue(svc)  # a Spanish acknowledgment
        [entry] = svc.outbox.entries()
        assert b"\r\nContent-Transfer-Encoding: 8bit\r\n" in entry.data and not entry.data.isascii()
        assert Sender(svc.outbox, smtp_settings(controller.port)).run_once().sent == 1
    finally:
        controller.stop()
    [got] = handler.received
    assert got.data.isascii() is not eight_bit and ("BODY=8BITMIME" in got.mail_options) is eight_bit
    if eight_bit:  # asked for 8-bit mail only
        [ascii_mail] = send_raw(["ana@cliente.es"], b"Subject: x\r\n\r\nhola\r\n")
        assert "BODY=8BITMIME" not in ascii_mail.mail_options
    assert (b"Content-Transfer-Encoding: quoted-printable" in got.data) is not eight_bit
    sent, queued = parse(got.data), parse(entry.data)
    assert sent.text == queued.text and "el número 1" in sent.text and sent.subject == queued.subject


def test_a_non_ascii_address_goes_with_smtputf8_where_the_server_offers_it():
    [got] = send_raw(["josé@cliente.example"], b"Subject: x\r\n\r\nhola\r\n")  # (aiosmtpd offers SMTPUTF8)
    assert got.rcpt_tos == ["josé@cliente.example"] and "SMTPUTF8" in got.mail_options


def send_raw(recipients: list[str], data: bytes) -> list:
    """Send ``data`` in one SMTP session to a fresh aiosmtpd peer; what it received."""
    from helpdeskd.smtp import SmtpSession

    handler = Handler()
    controller = start(handler)
    try:
        session = SmtpSession(smtp_settings(controller.port), None)
        session.send("", recipients, data)
        session.close()
    finally:
        controller.stop()
    return handler.received
