"""End to end with the real daemon process: mail into the local inbox Maildir → exactly one acknowledgment
received by a real SMTP server (STARTTLS, verified against a throwaway CA), in the sender's language."""

from __future__ import annotations

import signal
import subprocess
import sys

from helpdeskd.parse import parse

from conftest import ROOT, mail, write_config
from smtp_peer import Handler, make_pki, start
from test_cli import drop, helpdeskd, wait_for


def smtp_section(port: int, ca) -> str:
    return (f'\n[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "starttls"\nca_file = "{ca}"\n'
            'timeout = "20s"\nretry_first = "1s"\ninterval = "1s"\n')


def test_daemon_delivers_one_ack_per_message_in_the_senders_language(tmp_path):
    pki = make_pki(tmp_path / "pki")
    handler = Handler()
    server = start(handler, tls_context=pki.server_context(), require_starttls=True)
    path = write_config(tmp_path, lambda t: t + smtp_section(server.port, pki.ca))
    proc = subprocess.Popen([sys.executable, "-m", "helpdeskd.cli", "run", "-c", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        drop(tmp_path / "inbox", "1.eml", mail())
        drop(tmp_path / "inbox", "2.eml", mail(sender="John Smith <john@customer.example>", message_id="<e1@c.example>",
                                               subject="Cannot send mail",
                                               body="Hello, I cannot send mail from my account since yesterday. Thanks."))
        assert wait_for(lambda: len(handler.received) >= 4, timeout=90), proc.stderr
        outbox_new = tmp_path / "state" / "outbox" / "new"
        assert wait_for(lambda: not list(outbox_new.glob("*.msg")), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        server.stop()
    staff = "agente@helpdesk.localhost"  # the general queue's staff in the shipped config
    notices = [parse(r.data) for r in handler.received if r.rcpt_tos == [staff]]
    assert len(notices) == 2 and all(n.header("auto-submitted") == "auto-generated" for n in notices)
    by_rcpt = {r.rcpt_tos[0]: parse(r.data) for r in handler.received if r.rcpt_tos != [staff]}
    assert len(handler.received) == 4 and set(by_rcpt) == {"ana@cliente.es", "john@customer.example"}
    assert by_rcpt["ana@cliente.es"].subject.startswith("[Soporte #")
    assert "Hemos recibido su solicitud" in by_rcpt["ana@cliente.es"].subject
    assert "We have received your request" in by_rcpt["john@customer.example"].text
    assert all(m.header("auto-submitted") == "auto-replied" for m in by_rcpt.values())
    assert len(list((tmp_path / "state" / "outbox" / "cur").glob("*.msg"))) == 4


def test_send_once_and_check_config_with_smtp(tmp_path):
    handler = Handler()
    server = start(handler)
    section = (f'\n[smtp]\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\nallow_plaintext = true\n')
    path = write_config(tmp_path, lambda t: t + section)
    try:
        checked = helpdeskd("check-config", "-c", str(path))
        assert checked.returncode == 0 and b"outgoing mail: SMTP 127.0.0.1" in checked.stdout
        assert helpdeskd("deliver", "-c", str(path), stdin=mail()).returncode == 0
        sent = helpdeskd("send-once", "-c", str(path))
        assert sent.returncode == 0 and b"2 sent" in sent.stdout, sent.stderr  # the ack and the staff notice
        assert helpdeskd("send-once", "-c", str(path)).returncode == 0
    finally:
        server.stop()
    assert len(handler.received) == 2


def test_plaintext_must_be_allowed_explicitly(tmp_path):
    path = write_config(tmp_path, lambda t: t + '\n[smtp]\nhost = "127.0.0.1"\nsecurity = "none"\n')
    result = helpdeskd("check-config", "-c", str(path))
    assert result.returncode == 1 and b"allow_plaintext" in result.stderr


def test_default_config_stays_outbox_only():
    result = helpdeskd("check-config", "-c", str(ROOT / "config" / "helpdeskd.toml"))
    assert result.returncode == 0 and b"outbox only" in result.stdout
