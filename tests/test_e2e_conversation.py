"""A whole conversation through real servers: Dovecot holds the helpdesk's mailbox (POP3), aiosmtpd plays
the Internet's mail servers, and the real daemon process sits between them.

The customer writes, receives the acknowledgment, replies to it the way a mail client does (from the
headers of the acknowledgment received), the queue's staff is notified and answers, the customer receives
the answer, and closes the ticket by mail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import tomli_w

from helpdeskd.parse import parse

from conftest import ROOT, default_config_data, mail
from smtp_peer import Handler, start

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting Dovecot needs root (CI runs as root)")

HELPDESK = "support@helpdesk.localhost"
STAFF = "agente@helpdesk.localhost"  # the general queue's staff in the shipped config
CUSTOMER = "ana@cliente.es"


class World:
    """The mail servers around the helpdesk: mail to the helpdesk lands in its Dovecot mailbox, mail to
    anyone else lands in that person's inbox here."""

    def __init__(self, dovecot) -> None:
        self.dovecot = dovecot
        self.user = f"u{uuid.uuid4().hex[:10]}"
        self.maildir = dovecot.add_user(self.user)
        self.handler = Handler(on_message=self._route)
        self.server = start(self.handler)

    def _route(self, received) -> None:
        if HELPDESK in received.rcpt_tos:
            self.dovecot.deliver(self.maildir, received.data)

    def send_to_helpdesk(self, raw: bytes) -> None:
        self.dovecot.deliver(self.maildir, raw)

    def inbox(self, addr: str, template_subject: str = "") -> list:
        return [parse(r.data) for r in self.handler.received
                if addr in r.rcpt_tos and template_subject in parse(r.data).subject]

    def wait_for_mail(self, addr: str, subject_part: str, count: int = 1, seconds: float = 120):
        deadline = time.monotonic() + seconds
        while len(found := self.inbox(addr, subject_part)) < count:
            assert time.monotonic() < deadline, f"no mail to {addr} with {subject_part!r} (got {self.subjects()})"
            time.sleep(0.1)
        return found[count - 1]

    def subjects(self) -> list[tuple[list[str], str]]:
        return [(r.rcpt_tos, parse(r.data).subject) for r in self.handler.received]


def config_file(tmp_path, world: World, password_file) -> str:
    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(tmp_path / "state"), "templates_dir": str(ROOT / "templates")})
    data["mailboxes"] = [{"name": "support", "protocol": "pop3", "host": "127.0.0.1", "port": world.dovecot.pop3_port,
                          "user": world.user, "password_file": str(password_file), "allow_plaintext": True,
                          "interval": 0.2, "connect_timeout": 10, "read_timeout": 10}]
    data["smtp"] = {"host": "127.0.0.1", "port": world.server.port, "security": "none", "allow_plaintext": True,
                    "interval": 0.3, "retry_first": "1s"}
    path = tmp_path / "helpdeskd.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return str(path)


def reply(to_this, sender: str, body: str, subject: str | None = None) -> bytes:
    """What a mail client sends when its user answers ``to_this`` (a parsed message they received)."""
    refs = " ".join(f"<{r}>" for r in (*to_this.references, to_this.message_id))
    return mail(subject=subject or f"Re: {to_this.subject}", sender=sender, body=body,
                message_id=f"<{uuid.uuid4().hex}@mua.example>",
                extra=f"In-Reply-To: <{to_this.message_id}>\nReferences: {refs}")


def test_customer_staff_conversation_end_to_end(dovecot, tmp_path):
    world = World(dovecot)
    password = tmp_path / "pop3.password"
    password.write_text("secret\n")
    path = config_file(tmp_path, world, password)
    daemon = subprocess.Popen([sys.executable, "-m", "helpdeskd.cli", "run", "-c", path], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        world.send_to_helpdesk(mail(subject="No puedo enviar correo", sender=f"Ana García <{CUSTOMER}>",
                                    body="Hola, desde ayer no puedo enviar correo. Gracias.",
                                    message_id="<primero@cliente.es>"))
        ack = world.wait_for_mail(CUSTOMER, "Hemos recibido su solicitud")
        assert ack.subject.startswith("[Soporte #1]") and ack.in_reply_to == ("primero@cliente.es",)
        world.wait_for_mail(STAFF, "Nuevo ticket")

        world.send_to_helpdesk(reply(ack, f"Ana García <{CUSTOMER}>", "El error dice: relay denied.\n\n"
                                     "El lun, Soporte escribió:\n> Hemos recibido su solicitud"))
        notice = world.wait_for_mail(STAFF, "Respuesta de")
        assert "relay denied" in notice.text and "Hemos recibido su solicitud" not in notice.text

        world.send_to_helpdesk(reply(notice, f"María <{STAFF}>", "Hola Ana, ya hemos corregido el relay. ¿Puede "
                                     "probar de nuevo?\n\nEl lun, Soporte escribió:\n> " +
                                     "\n> ".join(notice.text.splitlines())))
        answer = world.wait_for_mail(CUSTOMER, "[Soporte #1] No puedo enviar correo")
        assert answer.text.startswith("Hola Ana, ya hemos corregido el relay.")
        assert "relay denied" not in answer.text and "Responda a este mensaje para contestar" not in answer.text
        assert answer.sender.addr == HELPDESK and answer.sender.name == "María (Soporte)"

        world.send_to_helpdesk(reply(answer, f"Ana García <{CUSTOMER}>", "#cerrar\nFunciona, gracias."))
        world.wait_for_mail(CUSTOMER, "Ticket cerrado")
    finally:
        daemon.send_signal(signal.SIGTERM)
        stopped = daemon.wait(timeout=60)
        world.server.stop()
    assert stopped == 0
    shown = subprocess.run([sys.executable, "-m", "helpdeskd.ctl", "-c", path, "show", "1", "--json"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    ticket = json.loads(shown.stdout)
    assert ticket["ticket"]["status"] == "closed" and ticket["ticket"]["mail_count"] == 4
    roles = [e["role"] for e in ticket["events"] if e["type"] == "message"]
    assert roles == ["requester", "requester", "staff", "requester"]
    assert world.dovecot.count(world.maildir) == 0  # every message was filed and deleted upstream
    acks = [m for m in world.inbox(CUSTOMER) if "Hemos recibido su solicitud" in m.subject]
    assert len(acks) == 1  # exactly one acknowledgment for the new ticket
